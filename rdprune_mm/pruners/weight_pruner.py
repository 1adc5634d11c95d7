"""RD weight pruning: curves, the shared allocator, masks, verification."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import MMLogger
from torch import nn

from ..allocator import Allocation, InfeasibleBudgetError, allocate
from ..curves import CurveCache, empirical_curves
from ..errors import PruningInputError
from ..fileio import fingerprint
from ..flops import UseCounter, flops_cost_table, layer_flops
from ..head_outputs import HeadOutputs
from ..masks import (apply_masks, magnitude_order, mask_from_order,
                     pruned_counts, sparsity_grid)
from ..registry import DISTORTIONS, PRUNERS
from ..targets import PruningTarget, find_targets

CURVES_VERSION = 1
BUDGET_UNITS = ('params', 'flops')


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


@dataclass
class PruningResult:
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
        """Measured joint distortion over the predicted sum."""
        if self.predicted_distortion == 0:
            return 1.0 if self.measured_distortion == 0 else math.inf
        return self.measured_distortion / self.predicted_distortion


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
    """

    def __init__(self,
                 budget: float = 0.5,
                 num_levels: int = 21,
                 targets: Optional[dict] = None,
                 distortion: Optional[dict] = None,
                 min_keep: float = 0.0,
                 head_modules: Optional[Sequence[str]] = None,
                 resolution: int = 10_000,
                 budget_by: str = 'params') -> None:
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
            ranking='magnitude',
            targets=[t.name for t in targets])
        model_tensors = model.state_dict().items()
        return fingerprint(
            (*model_tensors, *reference_tensors), extra=settings)

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
        logger = MMLogger.get_current_instance()
        if not batches:
            raise PruningInputError(
                'the calibration set is empty; give at least one frame')
        targets = self.find_targets(model)
        counts = [pruned_counts(t.num_params, self.sparsities)
                  for t in targets]
        earlier = keep_within or {}
        costs = self._param_costs(targets, counts, earlier)
        total = sum(t.num_params for t in targets)
        if self.budget_by == 'params':
            self._allocate([np.zeros(len(c)) for c in costs], costs, total)

        head = HeadOutputs(model, self.head_modules)
        with UseCounter(targets) as counter:
            reference = [head(batch) for batch in batches]
        uses = counter.uses(len(batches))
        orders = [magnitude_order(t.weight) for t in targets]
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
            self._allocate([np.zeros(len(c)) for c in costs], costs, total)

        def measure() -> float:
            return self.distortion(reference,
                                   [head(batch) for batch in batches])

        unpruned = measure()
        if unpruned != 0:
            logger.warning(
                f'the unpruned model reproduces its own outputs only to a '
                f'distortion of {unpruned:.3g}: its forward pass is not '
                'deterministic, and curves below that level are noise')
        logger.info(f'{len(targets)} prunable layers, {total:,.0f} '
                    f'{self.budget_by}, '
                    f'{len(batches)} calibration frame(s), heads '
                    f'{head.head_names}')

        cache = CurveCache(cache_dir,
                           self._curve_key(model, targets, reference))
        curves = empirical_curves(targets, self.sparsities, measure, cache,
                                  unpruned)
        allocation = self._allocate([curves[t.name] for t in targets],
                                    costs, total)

        masks, layers = {}, []
        for target, level, count, order in zip(targets, allocation.levels,
                                               counts, orders):
            mask = mask_from_order(order, target.weight.shape,
                                   int(count[level]))
            if target.name in earlier:
                mask &= earlier[target.name].to(mask.device)
            masks[target.name] = mask
            layers.append(
                LayerAllocation(
                    name=target.name,
                    kind=target.kind,
                    level=int(level),
                    sparsity=1 - int(mask.sum()) / target.num_params,
                    params_before=target.num_params,
                    params_after=int(mask.sum()),
                    predicted_distortion=float(curves[target.name][level]),
                    flops_before=layer_flops(uses[target.name],
                                             target.weight),
                    flops_after=layer_flops(uses[target.name], target.weight,
                                            mask)))
        apply_masks({t.name: t.module for t in targets}, masks)
        result = PruningResult(
            budget=self.budget,
            layers=layers,
            masks=masks,
            predicted_distortion=float(allocation.distortion),
            measured_distortion=measure(),
            unpruned_distortion=unpruned,
            curves=curves,
            sparsities=self.sparsities,
            budget_by=self.budget_by)
        logger.info(
            f'kept {result.params_after:,} of {result.params_before:,} '
            f'weights ({result.params_kept:.4f}) and '
            f'{result.flops_after:,.0f} of {result.flops_before:,.0f} FLOPs '
            f'({result.flops_kept:.4f}); asked {self.budget} of the '
            f'{self.budget_by}; '
            f'distortion predicted {result.predicted_distortion:.4g}, '
            f'measured {result.measured_distortion:.4g} '
            f'(ratio {result.additivity_ratio:.3f})')
        return result
