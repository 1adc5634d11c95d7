"""The baselines RD pruning is compared with, as a pruner of their own.

Uniform, global magnitude, LAMP and ERK differ from RD only in how many
weights each layer keeps (:mod:`rdprune_mm.baselines`); masks, budgets in
parameters or FLOPs, the measured distortion, the report, the hook and
fine-tuning are the same. Select one in a config with::

    pruner = dict(type='MagnitudeWeightPruner', allocation='lamp',
                  budget=0.25, budget_by='flops')
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..baselines import BASELINE_METHODS, baseline_masks
from ..errors import PruningInputError
from ..masks import apply_masks
from ..registry import DISTORTIONS, PRUNERS
from ..targets import PruningTarget, find_targets
from .weight_pruner import (BUDGET_UNITS, PruningResult, calibrate,
                            layer_allocations, log_result)


@PRUNERS.register_module()
class MagnitudeWeightPruner:
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

    def __init__(self,
                 allocation: str = 'lamp',
                 budget: float = 0.5,
                 budget_by: str = 'params',
                 targets: Optional[dict] = None,
                 distortion: Optional[dict] = None,
                 min_keep: float = 0.0,
                 head_modules: Optional[Sequence[str]] = None,
                 **rd_settings) -> None:
        unknown = sorted(set(rd_settings) - set(self.RD_SETTINGS))
        if unknown:
            raise PruningInputError(
                f'MagnitudeWeightPruner got unknown settings {unknown}; '
                'remove them from the pruner config')
        if allocation not in BASELINE_METHODS:
            raise PruningInputError(
                f'allocation {allocation!r} is not one of {BASELINE_METHODS};'
                ' fix pruner.allocation')
        if not 0 < budget <= 1:
            raise PruningInputError(
                f'budget {budget} is outside (0, 1]: it is the share to '
                'keep, e.g. pruner.budget=0.25 keeps a quarter')
        if budget_by not in BUDGET_UNITS:
            raise PruningInputError(
                f'budget_by {budget_by!r} is not one of {BUDGET_UNITS}; fix '
                'pruner.budget_by')
        self.allocation = allocation
        self.budget = budget
        self.budget_by = budget_by
        self.targets_cfg = dict(targets or {})
        self.distortion = DISTORTIONS.build(
            dict(distortion or dict(type='NormalizedMSE')))
        self.min_keep = min_keep
        self.head_modules = head_modules

    def find_targets(self, model: nn.Module) -> List[PruningTarget]:
        return find_targets(model, self.targets_cfg.get('include'),
                            self.targets_cfg.get('exclude'))

    @torch.no_grad()
    def prune(self,
              model: nn.Module,
              batches: Sequence[dict],
              cache_dir: Optional[str] = None,
              keep_within: Optional[Dict[str, torch.Tensor]] = None
              ) -> PruningResult:
        """Allocate by the baseline rule and apply the masks in place.

        Args:
            model: The detector, in eval mode, on its device.
            batches: Preprocessed calibration batches (for FLOPs and the
                measured distortion).
            cache_dir: Unused; there are no curves.
            keep_within: Masks of an earlier round; weights pruned there
                stay pruned.

        Returns:
            PruningResult: With ``predicted_distortion`` NaN, no curves and
            level -1 (no grid) for every layer.
        """
        targets = self.find_targets(model)
        calibration = calibrate(model, batches, targets, self.head_modules,
                                self.distortion)
        uses = calibration.uses
        costs = None if self.budget_by == 'params' else [
            uses[t.name] for t in targets
        ]
        earlier = keep_within or {}
        masks = baseline_masks(
            self.allocation, [t.weight for t in targets],
            self.budget,
            costs=costs,
            min_keep=self.min_keep,
            keep_within=[earlier.get(t.name) for t in targets])
        masks = {t.name: mask for t, mask in zip(targets, masks)}
        apply_masks({t.name: t.module for t in targets}, masks)
        layers = layer_allocations(targets, masks, uses, [-1] * len(targets),
                                   [math.nan] * len(targets))
        result = PruningResult(
            budget=self.budget,
            layers=layers,
            masks=masks,
            predicted_distortion=math.nan,
            measured_distortion=calibration.measure(),
            unpruned_distortion=calibration.unpruned_distortion,
            curves={},
            sparsities=np.zeros(0),
            budget_by=self.budget_by)
        log_result(result)
        return result
