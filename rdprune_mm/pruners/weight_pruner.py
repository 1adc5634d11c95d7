"""RD weight pruning: curves, the shared allocator, masks, verification."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import MMLogger
from torch import nn

from ..allocator import Allocation, InfeasibleBudgetError, allocate
from ..curves import CurveCache, empirical_curves, taylor_curves
from ..errors import PruningInputError
from ..fileio import fingerprint
from ..flops import UseCounter, flops_cost_table, layer_flops
from ..head_outputs import HeadOutputs
from ..masks import (apply_masks, magnitude_order, mask_from_order,
                     pruned_counts, sparsity_grid)
from ..registry import DISTORTIONS, PRUNERS
from ..sketch import GradientSketch
from ..targets import PruningTarget, find_targets

CURVES_VERSION = 1
BUDGET_UNITS = ('params', 'flops')
CURVE_ESTIMATORS = ('empirical', 'taylor')
RANKINGS = ('magnitude', 'taylor')


@dataclass
class LayerAllocation:
    """What the allocator chose for one layer."""

    name: str
    kind: str
    level: int
    sparsity: float
    params_before: int
    params_after: int
    predicted_distortion: float
    flops_before: float = 0.0
    flops_after: float = 0.0


class KeptShares:
    """Shares kept and the additivity ratio of a result that has
    ``params_before/after``, ``flops_before/after``, ``budget_by`` and
    predicted and measured distortions."""

    @property
    def params_kept(self) -> float:
        """Share of the targets' weights that is kept."""
        return self.params_after / self.params_before

    @property
    def flops_kept(self) -> float:
        """Share of the targets' FLOPs that is kept (1 if they have
        none)."""
        if self.flops_before == 0:
            return 1.0
        return self.flops_after / self.flops_before

    @property
    def achieved_budget(self) -> float:
        """Share kept in the budget's unit (``budget_by``)."""
        return self.flops_kept if self.budget_by == 'flops' else \
            self.params_kept

    @property
    def additivity_ratio(self) -> float:
        """Measured joint distortion over the predicted sum (NaN when
        nothing was predicted, as for the magnitude baselines)."""
        if math.isnan(self.predicted_distortion):
            return math.nan
        if self.predicted_distortion == 0:
            return 1.0 if self.measured_distortion == 0 else math.inf
        return self.measured_distortion / self.predicted_distortion


@dataclass
class PruningResult(KeptShares):
    """The outcome of :meth:`RDWeightPruner.prune`."""

    budget: float
    layers: List[LayerAllocation]
    masks: Dict[str, torch.Tensor] = field(repr=False)
    predicted_distortion: float
    measured_distortion: float
    unpruned_distortion: float
    curves: Dict[str, np.ndarray] = field(repr=False)
    sparsities: np.ndarray = field(repr=False)
    budget_by: str = 'params'

    @property
    def params_before(self) -> int:
        return sum(layer.params_before for layer in self.layers)

    @property
    def params_after(self) -> int:
        return sum(layer.params_after for layer in self.layers)

    @property
    def flops_before(self) -> float:
        return math.fsum(layer.flops_before for layer in self.layers)

    @property
    def flops_after(self) -> float:
        return math.fsum(layer.flops_after for layer in self.layers)

@dataclass
class Calibration:
    """The unpruned model's outputs on the calibration frames.

    Attributes:
        head: Runs a batch up to the detection head.
        reference: Head outputs of every batch.
        uses: Per target name, uses per weight (see :mod:`rdprune_mm.flops`).
        measure: Runs the calibration set on the model as it is and returns
            the distortion against ``reference``.
        unpruned_distortion: ``measure()`` of the unpruned model.
    """

    head: HeadOutputs
    reference: List[Dict[str, torch.Tensor]] = field(repr=False)
    uses: Dict[str, torch.Tensor] = field(repr=False)
    measure: Callable[[], float] = field(repr=False)
    unpruned_distortion: float


@torch.no_grad()
def calibrate(model: nn.Module, batches: Sequence[dict],
              targets: Sequence[PruningTarget],
              head_modules: Optional[Sequence[str]],
              distortion: Callable) -> Calibration:
    """Run the calibration frames once through the unpruned model."""
    if not batches:
        raise PruningInputError(
            'the calibration set is empty; give at least one frame')
    head = HeadOutputs(model, head_modules)
    with UseCounter(targets) as counter:
        reference = [head(batch) for batch in batches]

    def measure() -> float:
        return distortion(reference, [head(batch) for batch in batches])

    unpruned = measure()
    if unpruned != 0:
        MMLogger.get_current_instance().warning(
            f'the unpruned model reproduces its own outputs only to a '
            f'distortion of {unpruned:.3g}: its forward pass is not '
            'deterministic, and curves below that level are noise')
    return Calibration(head, reference, counter.uses(len(batches)), measure,
                       unpruned)


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


def log_result(result: PruningResult) -> None:
    """One log line: what was kept, asked and how far the outputs moved."""
    MMLogger.get_current_instance().info(
        f'kept {result.params_after:,} of {result.params_before:,} '
        f'weights ({result.params_kept:.4f}) and '
        f'{result.flops_after:,.0f} of {result.flops_before:,.0f} FLOPs '
        f'({result.flops_kept:.4f}); asked {result.budget} of the '
        f'{result.budget_by}; '
        f'distortion predicted {result.predicted_distortion:.4g}, '
        f'measured {result.measured_distortion:.4g} '
        f'(ratio {result.additivity_ratio:.3f})')


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
class RDWeightPruner:
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
        ranking: Order in which a layer's weights are pruned:
            ``'magnitude'`` (smallest first) or ``'taylor'`` (smallest
            ``w_i^2 * diag(J^T J)_i`` first, from the gradient sketch).
        sketch: ``dict(num_projections=32, seed=0)`` of the gradient sketch
            used by ``curves='taylor'`` and ``ranking='taylor'``.
    """

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
                 sketch: Optional[dict] = None) -> None:
        if not 0 < budget <= 1:
            raise PruningInputError(
                f'budget {budget} is outside (0, 1]: it is the share of '
                'weights to keep, e.g. pruner.budget=0.25 keeps a quarter')
        if not 0 <= min_keep <= 1:
            raise PruningInputError(
                f'min_keep {min_keep} is outside [0, 1]; fix pruner.min_keep')
        if budget_by not in BUDGET_UNITS:
            raise PruningInputError(
                f'budget_by {budget_by!r} is not one of {BUDGET_UNITS}; fix '
                'pruner.budget_by')
        if curves not in CURVE_ESTIMATORS:
            raise PruningInputError(
                f'curves {curves!r} is not one of {CURVE_ESTIMATORS}; fix '
                'pruner.curves')
        if ranking not in RANKINGS:
            raise PruningInputError(
                f'ranking {ranking!r} is not one of {RANKINGS}; fix '
                'pruner.ranking')
        sketch = {**dict(num_projections=32, seed=0), **(sketch or {})}
        if set(sketch) != {'num_projections', 'seed'} or int(
                sketch['num_projections']) < 1:
            raise PruningInputError(
                f'pruner.sketch={sketch} must be dict(num_projections=<at '
                'least 1>, seed=<int>)')
        if num_levels < 2:
            raise PruningInputError(
                f'num_levels {num_levels} < 2; set pruner.num_levels >= 2')
        self.budget = budget
        self.sparsities = sparsity_grid(num_levels)
        self.targets_cfg = dict(targets or {})
        self.distortion_cfg = dict(distortion or dict(type='NormalizedMSE'))
        self.distortion = DISTORTIONS.build(self.distortion_cfg)
        self.min_keep = min_keep
        self.head_modules = head_modules
        self.resolution = resolution
        self.budget_by = budget_by
        self.curves = curves
        self.ranking = ranking
        self.sketch_cfg = sketch

    @property
    def uses_sketch(self) -> bool:
        return self.curves == 'taylor' or self.ranking == 'taylor'

    def find_targets(self, model: nn.Module) -> List[PruningTarget]:
        return find_targets(model, self.targets_cfg.get('include'),
                            self.targets_cfg.get('exclude'))

    def _curve_key(self, model: nn.Module, targets: List[PruningTarget],
                   reference: List[Dict[str, torch.Tensor]]) -> str:
        reference_tensors = ((f'{i}.{name}', tensor)
                             for i, outputs in enumerate(reference)
                             for name, tensor in sorted(outputs.items()))
        settings = dict(
            version=CURVES_VERSION,
            levels=self.sparsities.tolist(),
            distortion=self.distortion_cfg,
            ranking=self.ranking,
            targets=[t.name for t in targets])
        if self.curves != 'empirical':
            settings['curves'] = self.curves
        if self.uses_sketch:
            settings['sketch'] = self.sketch_cfg
        model_tensors = model.state_dict().items()
        return fingerprint(
            (*model_tensors, *reference_tensors), extra=settings)

    def _measure_sketch(self, targets: List[PruningTarget],
                        batches: Sequence[dict], head: HeadOutputs,
                        reference: List[Dict[str, torch.Tensor]]
                        ) -> GradientSketch:
        logger = MMLogger.get_current_instance()
        logger.info(
            f'gradient sketch: {self.sketch_cfg["num_projections"]} backward '
            f'passes x {len(batches)} calibration frame(s)')
        return GradientSketch.measure(
            targets,
            batches,
            head,
            self.distortion.quadratic_weights(reference),
            self.distortion.sample_reduction,
            num_projections=int(self.sketch_cfg['num_projections']),
            seed=int(self.sketch_cfg['seed']))

    def _orders(self, targets: List[PruningTarget],
                sketch: Optional[GradientSketch]) -> List[torch.Tensor]:
        """Flat weight indices of every target, the first to prune first."""
        if self.ranking == 'magnitude':
            return [magnitude_order(t.weight) for t in targets]
        return [
            torch.argsort(
                sketch.diagonal_scores(t.name, t.weight).flatten(),
                stable=True) for t in targets
        ]

    def _allocate(self, distortions: List[np.ndarray],
                  costs: List[np.ndarray], total: float) -> Allocation:
        try:
            return allocate(
                distortions,
                costs,
                self.budget * total,
                min_keep=self.min_keep,
                resolution=self.resolution)
        except InfeasibleBudgetError as error:
            raise PruningInputError(
                f'budget {self.budget} is below {error.min_budget / total:.4f}'
                f' (share of {self.budget_by}), the least that '
                f'pruner.min_keep={self.min_keep} allows; '
                'raise pruner.budget or lower pruner.min_keep') from None

    @staticmethod
    def _param_costs(targets: List[PruningTarget], counts: List[np.ndarray],
                     earlier: Dict[str, torch.Tensor]) -> List[np.ndarray]:
        """Weights kept at every level, at most those ``earlier`` kept."""
        costs = [t.num_params - c for t, c in zip(targets, counts)]
        for i, target in enumerate(targets):
            if target.name in earlier:
                kept_before = int(earlier[target.name].sum())
                costs[i] = np.minimum(costs[i], kept_before)
        return costs

    @torch.no_grad()
    def rate_distortion(self,
                        model: nn.Module,
                        batches: Sequence[dict],
                        cache_dir: Optional[str] = None) -> RateDistortion:
        """Every target's curve, read from the cache or estimated.

        Args:
            model: The detector, in eval mode, on its device.
            batches: Preprocessed calibration batches.
            cache_dir: Folder of the curve cache (None: no cache).

        Returns:
            RateDistortion: Curves, pruning orders and what was measured on
            the way. The model's weights are as they were.
        """
        logger = MMLogger.get_current_instance()
        targets = self.find_targets(model)
        calibration = calibrate(model, batches, targets, self.head_modules,
                                self.distortion)
        head, reference = calibration.head, calibration.reference
        measure = calibration.measure
        unpruned = calibration.unpruned_distortion
        logger.info(f'{len(targets)} prunable layers, '
                    f'{len(batches)} calibration frame(s), heads '
                    f'{head.head_names}, {self.curves} curves, '
                    f'{self.ranking} ranking')
        start = time.perf_counter()
        cache = CurveCache(cache_dir,
                           self._curve_key(model, targets, reference))
        sketch = None
        if self.ranking == 'taylor' or (self.curves == 'taylor' and any(
                t.name not in cache for t in targets)):
            sketch = self._measure_sketch(targets, batches, head, reference)
        orders = self._orders(targets, sketch)
        if self.curves == 'taylor':
            zero_outputs = [{n: torch.zeros_like(t)
                             for n, t in ref.items()} for ref in reference]
            curves = taylor_curves(targets, self.sparsities, sketch, orders,
                                   cache,
                                   self.distortion(reference, zero_outputs))
        else:
            curves = empirical_curves(targets, self.sparsities, measure,
                                      cache, unpruned, orders)
        return RateDistortion(
            targets=targets,
            curves=curves,
            orders=orders,
            counts=[pruned_counts(t.num_params, self.sparsities)
                    for t in targets],
            uses=calibration.uses,
            measure=measure,
            unpruned_distortion=unpruned,
            seconds=time.perf_counter() - start)

    @torch.no_grad()
    def prune(self,
              model: nn.Module,
              batches: Sequence[dict],
              cache_dir: Optional[str] = None,
              keep_within: Optional[Dict[str, torch.Tensor]] = None
              ) -> PruningResult:
        """Allocate and apply weight masks to ``model`` in place.

        Args:
            model: The detector, in eval mode, on its device.
            batches: Preprocessed calibration batches.
            cache_dir: Folder of the curve cache (None: no cache).
            keep_within: Masks of an earlier round. The new masks only add
                pruning to them: a weight pruned before stays pruned, and a
                layer's cost at each level counts only the weights both
                masks keep.

        Returns:
            PruningResult: The allocation, masks and distortions.
        """
        if not batches:
            raise PruningInputError(
                'the calibration set is empty; give at least one frame')
        earlier = keep_within or {}
        if self.budget_by == 'params':
            targets = self.find_targets(model)
            counts = [pruned_counts(t.num_params, self.sparsities)
                      for t in targets]
            self._allocate([np.zeros(len(c)) for c in counts],
                           self._param_costs(targets, counts, earlier),
                           sum(t.num_params for t in targets))
        rd = self.rate_distortion(model, batches, cache_dir)
        targets, counts, orders, uses = rd.targets, rd.counts, rd.orders, \
            rd.uses
        curves = rd.curves
        if self.budget_by == 'flops':
            costs = [
                flops_cost_table(uses[t.name], t.weight, order, count,
                                 earlier.get(t.name))
                for t, order, count in zip(targets, orders, counts)
            ]
            total = math.fsum(
                layer_flops(uses[t.name], t.weight) for t in targets)
            if total == 0:
                raise PruningInputError(
                    'the targets did no FLOPs on the calibration frames '
                    '(none of them ran); use pruner.budget_by=\'params\'')
        else:
            costs = self._param_costs(targets, counts, earlier)
            total = sum(t.num_params for t in targets)
        allocation = self._allocate([curves[t.name] for t in targets],
                                    costs, total)

        masks = {}
        for target, level, count, order in zip(targets, allocation.levels,
                                               counts, orders):
            mask = mask_from_order(order, target.weight.shape,
                                   int(count[level]))
            if target.name in earlier:
                mask &= earlier[target.name].to(mask.device)
            masks[target.name] = mask
        layers = layer_allocations(
            targets, masks, uses, allocation.levels,
            [float(curves[t.name][level])
             for t, level in zip(targets, allocation.levels)])
        apply_masks({t.name: t.module for t in targets}, masks)
        result = PruningResult(
            budget=self.budget,
            layers=layers,
            masks=masks,
            predicted_distortion=float(allocation.distortion),
            measured_distortion=rd.measure(),
            unpruned_distortion=rd.unpruned_distortion,
            curves=curves,
            sparsities=self.sparsities,
            budget_by=self.budget_by)
        log_result(result)
        return result
