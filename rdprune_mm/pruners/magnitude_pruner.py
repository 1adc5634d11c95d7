"""The baselines RD pruning is compared with, as a pruner of their own.

Uniform, global magnitude, LAMP and ERK differ from RD only in how many
weights each layer keeps (:mod:`rdprune_mm.baselines`): their allocate stage
is the baseline rule instead of curves and the DP. Masks, budgets in
parameters or FLOPs, the measured distortion, the report, the hook and
fine-tuning are the same. Select one in a config with::

    pruner = dict(type='MagnitudeWeightPruner', allocation='lamp',
                  budget=0.25, budget_by='flops')
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..baselines import BASELINE_METHODS, baseline_masks
from ..masks import apply_masks
from ..pipeline import (PruningPipeline, PruningState, check_choice,
                        check_ignored_settings)
from ..registry import PRUNERS
from ..results import PruningResult
from .weight_pruner import BUDGET_UNITS, layer_allocations


@PRUNERS.register_module()
class MagnitudeWeightPruner(PruningPipeline):
    """Unstructured magnitude pruning with a baseline layer allocation.

    Args:
        allocation: ``'uniform'``, ``'global'``, ``'lamp'`` or ``'erk'``.
        budget: Share of the targets' weights (``budget_by='params'``) or
            FLOPs (``budget_by='flops'``) to keep, in (0, 1].
        budget_by: ``'params'`` or ``'flops'`` (measured on the calibration
            frames, as :class:`RDWeightPruner` does).
        targets: ``dict(include=[regex...], exclude=[regex...])`` over
            module names.
        distortion: Config of the measure reported in the result.
        min_keep: Smallest share of every layer's weights to keep.
        head_modules: Modules whose outputs define the distortion (None:
            the detector's detection head).
        **rd_settings: Settings of :class:`RDWeightPruner` that have no
            meaning here (``num_levels``, ``curves``, ``ranking``,
            ``sketch``, ``resolution``); accepted and ignored so that a
            config can switch ``pruner.type`` alone.
    """

    RD_SETTINGS = ('num_levels', 'curves', 'ranking', 'sketch', 'resolution')
    unit_noun = 'layers'

    def __init__(self,
                 allocation: str = 'lamp',
                 budget: float = 0.5,
                 budget_by: str = 'params',
                 targets: Optional[dict] = None,
                 distortion: Optional[dict] = None,
                 min_keep: float = 0.0,
                 head_modules: Optional[Sequence[str]] = None,
                 compensate: Optional[dict] = None,
                 **rd_settings) -> None:
        check_ignored_settings(rd_settings, self.RD_SETTINGS, 'MagnitudeWeightPruner')
        self.allocation = check_choice(allocation, BASELINE_METHODS,
                                       'pruner.allocation')
        super().__init__(budget, distortion, min_keep, head_modules,
                         targets, compensate)
        self.budget_by = check_choice(budget_by, BUDGET_UNITS,
                                      'pruner.budget_by')

    def setup(self, model: nn.Module, batches: Sequence[dict],
              state: PruningState, cache_dir: Optional[str]) -> None:
        """No units or curves: the baseline rule allocates weights."""

    def curves(self, model: nn.Module, batches: Sequence[dict],
               state: PruningState) -> Dict[str, np.ndarray]:
        return {}

    def allocate(self, state: PruningState, curves: Dict[str, np.ndarray]
                 ) -> Dict[str, torch.Tensor]:
        uses = state.calibration.uses
        masks = baseline_masks(
            self.allocation, [t.weight for t in state.targets],
            self.budget,
            costs=None if self.budget_by == 'params' else [
                uses[t.name] for t in state.targets
            ],
            min_keep=self.min_keep,
            keep_within=[state.earlier.get(t.name) for t in state.targets])
        return {t.name: mask for t, mask in zip(state.targets, masks)}

    def apply(self, model: nn.Module, state: PruningState,
              masks: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        apply_masks({t.name: t.module for t in state.targets}, masks)
        return masks

    def result(self, state: PruningState, curves: Dict[str, np.ndarray],
               allocation, masks: Dict[str, torch.Tensor],
               measured: float) -> PruningResult:
        """With ``predicted_distortion`` NaN, no curves and level -1 (no
        grid) for every layer."""
        targets = state.targets
        return PruningResult(
            budget=self.budget,
            layers=layer_allocations(targets, masks, state.calibration.uses,
                                     [-1] * len(targets),
                                     [math.nan] * len(targets)),
            masks=masks,
            predicted_distortion=math.nan,
            measured_distortion=measured,
            unpruned_distortion=state.calibration.unpruned_distortion,
            curves={},
            sparsities=np.zeros(0),
            budget_by=self.budget_by)
