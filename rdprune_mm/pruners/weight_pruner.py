"""RD weight pruning: unstructured masks allocated by the shared DP."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import MMLogger
from torch import nn

from ..curves import taylor_curves
from ..errors import PruningInputError
from ..fileio import fingerprint
from ..flops import flops_cost_table, layer_flops
from ..masks import apply_masks, pruned_counts, sparsity_grid
from ..pipeline import (BudgetSearch, PruningPipeline, PruningState,
                        TableCost, build_importance, calibrate, check_choice,
                        check_num_levels, check_positive_int)
from ..refitted_curves import LevelRefits, RefittedWeightUnit
from ..registry import PRUNERS
from ..results import LayerAllocation, PruningResult
from ..sketch import GradientSketch
from ..targets import PruningTarget
from ..units import WeightUnit

CURVES_VERSION = 1
BUDGET_UNITS = ('params', 'flops')
CURVE_ESTIMATORS = ('empirical', 'taylor')


def weight_costs(targets: Sequence[PruningTarget],
                 units: Sequence[WeightUnit],
                 uses: Dict[str, torch.Tensor], budget_by: str,
                 earlier: Dict[str, torch.Tensor]) -> TableCost:
    """The cost model of unstructured pruning: per layer, the weights (or
    their FLOPs on the calibration frames) kept at every level, counting
    only weights that ``earlier`` masks keep too.

    Raises:
        PruningInputError: If a FLOPs budget meets layers that did no FLOPs.
    """
    if budget_by == 'flops':
        tables = [
            flops_cost_table(uses[t.name], t.weight, u.order, u.counts,
                             earlier.get(t.name))
            for t, u in zip(targets, units)
        ]
        total = math.fsum(layer_flops(uses[t.name], t.weight)
                          for t in targets)
        if total == 0:
            raise PruningInputError(
                'the targets did no FLOPs on the calibration frames '
                '(none of them ran); use pruner.budget_by=\'params\'')
        return TableCost('flops', tables, total)
    tables = []
    for target, unit in zip(targets, units):
        kept = target.num_params - unit.counts
        if target.name in earlier:
            kept = np.minimum(kept, int(earlier[target.name].sum()))
        tables.append(kept)
    return TableCost('params', tables, sum(t.num_params for t in targets))


def layer_allocations(targets: Sequence[PruningTarget],
                      masks: Dict[str, torch.Tensor],
                      uses: Dict[str, torch.Tensor], levels: Sequence[int],
                      predicted: Sequence[float]) -> List[LayerAllocation]:
    """Per-layer records of the masks chosen for ``targets``."""
    layers = []
    for target, level, distortion in zip(targets, levels, predicted):
        mask = masks[target.name]
        kept = int(mask.sum())
        layers.append(
            LayerAllocation(
                name=target.name,
                kind=target.kind,
                level=int(level),
                sparsity=1 - kept / target.num_params,
                params_before=target.num_params,
                params_after=kept,
                predicted_distortion=distortion,
                flops_before=layer_flops(uses[target.name], target.weight),
                flops_after=layer_flops(uses[target.name], target.weight,
                                        mask)))
    return layers


@dataclass
class RateDistortion:
    """The curves of every target and what came with them.

    Attributes:
        targets: The prunable layers.
        curves: Per target name, the distortion at every level.
        orders: Per target, flat weight indices, the first to prune first.
        counts: Per target, the number of weights every level prunes.
        uses: Per target name, uses per weight on the calibration frames
            (see :mod:`rdprune_mm.flops`).
        measure: Runs the calibration set on the model as it is and returns
            the distortion against the unpruned outputs.
        unpruned_distortion: ``measure()`` of the unpruned model.
        seconds: Time spent estimating the curves (cache reads included).
    """

    targets: List[PruningTarget]
    curves: Dict[str, np.ndarray] = field(repr=False)
    orders: List[torch.Tensor] = field(repr=False)
    counts: List[np.ndarray] = field(repr=False)
    uses: Dict[str, torch.Tensor] = field(repr=False)
    measure: Callable[[], float] = field(repr=False)
    unpruned_distortion: float
    seconds: float


@PRUNERS.register_module()
class RDWeightPruner(PruningPipeline):
    """Rate-distortion optimal, layer-adaptive unstructured weight pruning.

    Args:
        budget: Share of the targets' weights (``budget_by='params'``) or
            FLOPs (``budget_by='flops'``) to keep, in (0, 1].
        num_levels: Levels of each layer's curve: pruned shares
            ``0, 1/(n-1), ..., 1``.
        targets: ``dict(include=[regex...], exclude=[regex...])`` over
            module names.
        distortion: Config of a measure in the ``DISTORTIONS`` registry.
        min_keep: Smallest share of every layer's weights to keep.
        head_modules: Modules whose outputs define the distortion (None:
            the detector's detection head).
        resolution: Budget units of the allocator's dynamic program.
        budget_by: ``'params'``: a level costs the weights it keeps;
            ``'flops'``: it costs the FLOPs of the weights it keeps,
            measured on the calibration frames (see :mod:`rdprune_mm.flops`).
            The result reports both units either way.
        curves: ``'empirical'``: one calibration pass per layer and level;
            ``'taylor'``: the Gauss-Newton approximation read off a gradient
            sketch (``sketch.num_projections`` backward passes per
            calibration batch, see :mod:`rdprune_mm.sketch`), saturating at
            the distortion of an all-zero output
            (:func:`rdprune_mm.curves.taylor_curves`).
        ranking: Order in which a layer's weights are pruned: a weight
            importance of the ``IMPORTANCES`` registry by alias or config:
            ``'magnitude'`` (smallest first) or ``'taylor'`` (smallest
            ``w_i^2 * diag(J^T J)_i`` first, from the gradient sketch).
        sketch: ``dict(num_projections=32, seed=0)`` of the gradient sketch
            used by ``curves='taylor'`` and ``ranking='taylor'``.
        compensate: Post-pruning compensation (see
            :class:`~rdprune_mm.pipeline.PruningPipeline`); None: off.
        replay_unchanged: Whether the curves replay the detector parts a
            pass leaves unchanged (:mod:`rdprune_mm.upstream_replay`).
    """

    unit_noun = 'layers'

    def __init__(self,
                 budget: float = 0.5,
                 num_levels: int = 21,
                 targets: Optional[dict] = None,
                 distortion: Optional[dict] = None,
                 min_keep: float = 0.0,
                 head_modules: Optional[Sequence[str]] = None,
                 resolution: int = 10_000,
                 budget_by: str = 'params',
                 curves: str = 'empirical',
                 ranking: str = 'magnitude',
                 sketch: Optional[dict] = None,
                 compensate: Optional[dict] = None,
                 replay_unchanged: bool = True) -> None:
        self.budget_by = check_choice(budget_by, BUDGET_UNITS,
                                      'pruner.budget_by')
        self.curve_estimator = check_choice(curves, CURVE_ESTIMATORS,
                                            'pruner.curves')
        self.importance = build_importance(ranking, 'weights')
        sketch = {**dict(num_projections=32, seed=0), **(sketch or {})}
        if set(sketch) != {'num_projections', 'seed'} or int(
                sketch['num_projections']) < 1:
            raise PruningInputError(
                f'pruner.sketch={sketch} must be dict(num_projections=<at '
                'least 1>, seed=<int>)')
        super().__init__(budget, distortion, min_keep, head_modules, targets,
                         compensate, replay_unchanged)
        if self.compensation.curves and self.curve_estimator != 'empirical':
            raise PruningInputError(
                'pruner.compensate.curves=True measures the curves after the '
                "refit; it needs pruner.curves='empirical'")
        self.sparsities = sparsity_grid(check_num_levels(num_levels))
        self.resolution = check_positive_int(resolution,
                                             'pruner.resolution')
        self.ranking = ranking
        self.sketch_cfg = sketch

    @property
    def uses_sketch(self) -> bool:
        return (self.curve_estimator == 'taylor'
                or self.importance.needs_sketch)

    def budget_search(self) -> BudgetSearch:
        return BudgetSearch(self.budget, resolution=self.resolution,
                            min_keep=self.min_keep,
                            floor=f'pruner.min_keep={self.min_keep}')

    def curve_settings(self, state: PruningState) -> dict:
        settings = dict(
            version=CURVES_VERSION,
            levels=self.sparsities.tolist(),
            distortion=self.distortion_cfg,
            ranking=self.ranking,
            targets=[t.name for t in state.targets])
        if self.curve_estimator != 'empirical':
            settings['curves'] = self.curve_estimator
        if self.uses_sketch:
            # directions drawn per frame (any split across processes)
            settings['sketch'] = dict(self.sketch_cfg, directions='per frame')
        if state.dense is not None:
            settings['refit'] = dict(damp=self.compensation.damp,
                                     grams=fingerprint(
                                         sorted(state.dense.grams.items())))
        return settings

    def _measure_sketch(self, batches: Sequence[dict],
                        state: PruningState) -> GradientSketch:
        MMLogger.get_current_instance().info(
            f'gradient sketch: {self.sketch_cfg["num_projections"]} backward '
            f'passes x {len(batches)} calibration frame(s)')
        reference = state.calibration.reference
        return GradientSketch.measure(
            state.targets,
            batches,
            state.calibration.head,
            self.distortion.quadratic_weights(reference),
            self.distortion.sample_reduction,
            num_projections=int(self.sketch_cfg['num_projections']),
            seed=int(self.sketch_cfg['seed']))

    # ------------------------------------------------------- the stages
    def setup(self, model: nn.Module, batches: Sequence[dict],
              state: PruningState, cache_dir: Optional[str]) -> None:
        MMLogger.get_current_instance().info(
            f'{len(state.targets)} prunable layers, '
            f'{len(batches)} calibration frame(s), heads '
            f'{state.calibration.head.head_names}, {self.curve_estimator} '
            f'curves, {self.ranking} ranking')
        state.cache = self.curve_cache(model, state, cache_dir)
        sketch = None
        if self.importance.needs_sketch or (
                self.curve_estimator == 'taylor' and any(
                    t.name not in state.cache for t in state.targets)):
            sketch = self._measure_sketch(batches, state)
        state.extra['sketch'] = sketch
        refits = None if state.dense is None else LevelRefits(
            state.dense, self.compensation.damp)
        state.units = []
        for target in state.targets:
            order = self.importance.order(target, sketch)
            counts = pruned_counts(target.num_params, self.sparsities)
            if refits is not None and target.name in state.dense.refittable:
                state.units.append(
                    RefittedWeightUnit(target, order, counts, refits))
            else:
                state.units.append(WeightUnit(target, order, counts))
        state.cost = weight_costs(state.targets, state.units,
                                  state.calibration.uses, self.budget_by,
                                  state.earlier)

    def curves(self, model: nn.Module, batches: Sequence[dict],
               state: PruningState) -> Dict[str, np.ndarray]:
        if self.curve_estimator == 'empirical':
            return super().curves(model, batches, state)
        reference = state.calibration.reference
        zero_outputs = [{n: torch.zeros_like(t)
                         for n, t in ref.items()} for ref in reference]
        return taylor_curves(state.targets, self.sparsities,
                             state.extra['sketch'],
                             [u.order for u in state.units], state.cache,
                             self.distortion(reference, zero_outputs))

    def allocate(self, state: PruningState,
                 curves: Dict[str, np.ndarray]) -> Tuple[int, ...]:
        levels, _, _ = self.budget_search().search(
            [curves[t.name] for t in state.targets], state.cost)
        return levels

    def apply(self, model: nn.Module, state: PruningState,
              levels: Tuple[int, ...]) -> Dict[str, torch.Tensor]:
        masks = {}
        for unit, level in zip(state.units, levels):
            mask = unit.keep_mask(int(unit.counts[level]))
            if unit.name in state.earlier:
                mask &= state.earlier[unit.name].to(mask.device)
            masks[unit.name] = mask
        apply_masks({t.name: t.module for t in state.targets}, masks)
        return masks

    def result(self, state: PruningState, curves: Dict[str, np.ndarray],
               levels: Tuple[int, ...], masks: Dict[str, torch.Tensor],
               measured: float) -> PruningResult:
        predicted = [float(curves[t.name][level])
                     for t, level in zip(state.targets, levels)]
        return PruningResult(
            budget=self.budget,
            layers=layer_allocations(state.targets, masks,
                                     state.calibration.uses, levels,
                                     predicted),
            masks=masks,
            predicted_distortion=math.fsum(predicted),
            measured_distortion=measured,
            unpruned_distortion=state.calibration.unpruned_distortion,
            curves=curves,
            sparsities=self.sparsities,
            budget_by=self.budget_by)

    @torch.no_grad()
    def rate_distortion(self,
                        model: nn.Module,
                        batches: Sequence[dict],
                        cache_dir: Optional[str] = None) -> RateDistortion:
        """Every target's curve, read from the cache or estimated: the
        pipeline up to the curves stage.

        Args:
            model: The detector, in eval mode, on its device.
            batches: Preprocessed calibration batches.
            cache_dir: Folder of the curve cache (None: no cache).

        Returns:
            RateDistortion: Curves, pruning orders and what was measured on
            the way. The model's weights are as they were.
        """
        targets = self.find_targets(model)
        state = PruningState(
            targets=targets,
            calibration=calibrate(model, batches, targets, self.head_modules,
                                  self.distortion))
        start = time.perf_counter()
        self.setup(model, batches, state, cache_dir)
        curves = self.curves(model, batches, state)
        return RateDistortion(
            targets=targets,
            curves=curves,
            orders=[u.order for u in state.units],
            counts=[u.counts for u in state.units],
            uses=state.calibration.uses,
            measure=state.calibration.measure,
            unpruned_distortion=state.calibration.unpruned_distortion,
            seconds=time.perf_counter() - start)
