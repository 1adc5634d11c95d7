"""The pruning pipeline that every pruner runs.

::

    calibrate -> reference outputs -> curves (per unit) -> costs ->
    allocate -> apply -> compensate -> verify -> report

:class:`PruningPipeline` runs the stages in this order; a pruner supplies
only what differs: its units and cost model (:meth:`setup`), how levels are
allocated and applied (:meth:`allocate`, :meth:`apply`) and what its result
holds (:meth:`result`). The curves stage measures every unit at every level
(:func:`rdprune_mm.curves.measure_curves`) unless the pruner estimates them
otherwise. Compensation (:mod:`rdprune_mm.compensation`) runs when
``compensate`` asks for it: the unpruned layers are recorded before the
apply stage, and the measured distortion before and after is reported.
On several ranks (:mod:`rdprune_mm.distributed`) every rank runs the stages
on the same frames: the ranks check that they hold the same weights and
curve-cache key, split the curves, and take rank 0's allocation, so that
every rank applies the same masks. A stage that raises on one rank raises
on every rank.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import MMLogger
from torch import nn

from ..compensation import DenseLayers, build_compensation
from ..curves import CurveCache, measure_curves
from ..distributed import (check_same_everywhere, is_distributed,
                           on_rank_zero, run_everywhere)
from ..fileio import fingerprint
from ..registry import DISTORTIONS
from ..targets import PruningTarget, find_targets
from ..units import PruningUnit
from ..upstream_replay import replaying_unchanged_parts
from .budget_search import BudgetSearch
from .calibration import Calibration, calibrate
from .checks import check_budget, check_min_keep, check_targets
from .cost_models import CostModel


@dataclass
class PruningState:
    """What the stages hand on to each other in one run.

    Attributes:
        targets: The weight layers the units prune.
        calibration: The unpruned model's outputs.
        units: The units of the curves.
        cost: The cost model the budget is met in.
        cache: Where the curves are cached.
        earlier: Weight masks of an earlier round (weight pruning).
        dense: The unpruned layers the compensate stage recorded before
            the curves (``pruner.compensate.curves``), else None.
        extra: What one pruner keeps for its own stages.
    """

    targets: List[PruningTarget]
    calibration: Calibration
    units: List[PruningUnit] = field(default_factory=list)
    cost: Optional[CostModel] = None
    cache: Optional[CurveCache] = None
    earlier: Dict[str, torch.Tensor] = field(default_factory=dict)
    dense: Optional[DenseLayers] = None
    extra: Dict[str, Any] = field(default_factory=dict)


class PruningPipeline:
    """The stages every pruner runs; see the module docstring.

    Args:
        budget: Share of the cost to keep, in (0, 1].
        distortion: Config of a measure in the ``DISTORTIONS`` registry.
        min_keep: Smallest share of every unit to keep.
        head_modules: Modules whose outputs define the distortion (None:
            the detector's detection head).
        targets: ``dict(include=[regex...], exclude=[regex...])`` over
            module names.
        compensate: ``dict(reconstruct=bool, batchnorm=bool, damp=float)``
            (:class:`rdprune_mm.compensation.Compensation`); None: off.
        replay_unchanged: Whether the curves replay the outputs of the
            detector parts before the head that a pass leaves unchanged
            (:mod:`rdprune_mm.upstream_replay`) instead of computing them
            again; costs the memory of those outputs on every calibration
            frame.
    """

    #: What a unit is, for the log.
    unit_noun = 'units'
    #: Whether the apply stage zeroes weights (so that the kept ones can
    #: be refitted), as weight pruning does.
    masks_weights = True

    def __init__(self,
                 budget: float = 0.5,
                 distortion: Optional[dict] = None,
                 min_keep: float = 0.0,
                 head_modules: Optional[Sequence[str]] = None,
                 targets: Optional[dict] = None,
                 compensate: Optional[dict] = None,
                 replay_unchanged: bool = True) -> None:
        self.budget = check_budget(budget)
        self.replay_unchanged = bool(replay_unchanged)
        self.min_keep = check_min_keep(min_keep)
        self.distortion_cfg = dict(distortion or dict(type='NormalizedMSE'))
        self.distortion = DISTORTIONS.build(self.distortion_cfg)
        self.head_modules = head_modules
        self.targets_cfg = check_targets(targets)
        self.compensation = build_compensation(
            compensate, allow_reconstruct=self.masks_weights)

    # ---------------------------------------------------- what differs
    def find_targets(self, model: nn.Module) -> List[PruningTarget]:
        """The weight layers this pruner prunes."""
        return find_targets(model, self.targets_cfg.get('include'),
                            self.targets_cfg.get('exclude'))

    def select(self, model: nn.Module) -> Tuple[List[PruningTarget], dict]:
        """The weight layers whose uses the calibration counts, and what
        else the pruner found on the way (``state.extra``)."""
        return self.find_targets(model), {}

    def setup(self, model: nn.Module, batches: Sequence[dict],
              state: PruningState, cache_dir: Optional[str]) -> None:
        """Fill ``state.units``, ``state.cost`` and ``state.cache``."""
        raise NotImplementedError

    def curve_settings(self, state: PruningState) -> dict:
        """What the curves depend on beside the model and the reference
        outputs (the cache key)."""
        raise NotImplementedError

    def allocate(self, state: PruningState,
                 curves: Dict[str, np.ndarray]) -> Any:
        """Choose what every unit keeps."""
        raise NotImplementedError

    def apply(self, model: nn.Module, state: PruningState,
              allocation: Any) -> Any:
        """Prune the model in place; returns the masks."""
        raise NotImplementedError

    def result(self, state: PruningState, curves: Dict[str, np.ndarray],
               allocation: Any, masks: Any, measured: float):
        """The report stage's record of the run."""
        raise NotImplementedError

    def check_keep_within(self, keep_within: Optional[dict]) -> None:
        """Refuse masks of an earlier round where they have no meaning."""

    # ------------------------------------------------------- the stages
    def curve_cache(self, model: nn.Module, state: PruningState,
                    cache_dir: Optional[str]) -> CurveCache:
        """The curve cache of this model, frames and settings."""
        return CurveCache(
            cache_dir,
            state.calibration.fingerprint(model, self.curve_settings(state)),
            length=len(self.sparsities))

    def budget_search(self) -> BudgetSearch:
        """The allocate stage's search under this pruner's budget."""
        return BudgetSearch(self.budget)

    def check_budget(self, state: PruningState) -> None:
        """Refuse a budget that no allocation meets, before any curve."""
        if self.budget < 1 and state.cost is not None:
            self.budget_search().check_reachable(state.cost)

    def curves(self, model: nn.Module, batches: Sequence[dict],
               state: PruningState) -> Dict[str, np.ndarray]:
        """Every unit's distortion at every level, cached."""
        with replaying_unchanged_parts(state.calibration.head,
                                       self.replay_unchanged):
            return measure_curves(state.units,
                                  state.calibration.measure,
                                  state.cache,
                                  state.calibration.unpruned_distortion,
                                  noun=self.unit_noun,
                                  frames=state.calibration.frames)

    def compensate(self, model: nn.Module, batches: Sequence[dict],
                   state: PruningState,
                   dense: Optional[DenseLayers]) -> Optional[dict]:
        """Update what the pruning left, as ``compensate`` asks.

        Returns:
            dict, optional: What was updated and the measured distortion
            before it (``distortion_before``); None when off.
        """
        if not self.compensation.enabled:
            return None
        before = state.calibration.measure()
        report = self.compensation.apply(model, batches, state.targets,
                                         dense)
        report['distortion_before'] = before
        return report

    def verify(self, state: PruningState) -> float:
        """The measured distortion of the pruned model."""
        return state.calibration.measure()

    @torch.no_grad()
    def prune(self,
              model: nn.Module,
              batches: Sequence[dict],
              cache_dir: Optional[str] = None,
              keep_within: Optional[Dict[str, torch.Tensor]] = None,
              compensation_batches: Optional[Sequence[dict]] = None):
        """Run every stage on ``model``, which is pruned in place.

        Args:
            model: The detector, in eval mode, on its device.
            batches: Preprocessed calibration batches.
            cache_dir: Folder of the curve cache (None: no cache).
            keep_within: Masks of an earlier round (weight pruning): a
                weight pruned there stays pruned.
            compensation_batches: The compensate stage's batches
                (``pruner.compensate.num_samples``); None: ``batches``.

        Returns:
            The pruner's result (:mod:`rdprune_mm.results`).
        """
        self.check_keep_within(keep_within)
        start = time.perf_counter()
        frames = batches if compensation_batches is None \
            else compensation_batches

        def prepare() -> PruningState:
            targets, extra = self.select(model)
            state = PruningState(
                targets=targets,
                calibration=calibrate(model, batches, targets,
                                      self.head_modules, self.distortion),
                earlier=dict(keep_within or {}),
                extra=extra)
            if self.compensation.curves:
                state.dense = self.compensation.record(model, frames, targets,
                                                       self.head_modules)
            self.setup(model, batches, state, cache_dir)
            self.check_budget(state)
            return state

        state = run_everywhere(prepare)
        check_same_inputs(model, state)
        curves = self.curves(model, batches, state)
        # computed once, on rank 0: every rank applies the same levels
        allocation = on_rank_zero(lambda: self.allocate(state, curves))

        def finish():
            dense = state.dense if state.dense is not None else \
                self.compensation.record(model, frames, state.targets,
                                         self.head_modules)
            masks = self.apply(model, state, allocation)
            compensation = self.compensate(model, frames, state, dense)
            measured = self.verify(state)
            result = self.result(state, curves, allocation, masks, measured)
            if compensation is not None:
                compensation['distortion_after'] = measured
                result.compensation = compensation
                MMLogger.get_current_instance().info(
                    f'compensation: {compensation["reconstructed"]} layers '
                    f'refitted, {compensation["batchnorm"]} BatchNorm layers '
                    're-estimated; measured distortion '
                    f'{compensation["distortion_before"]:.4g} -> '
                    f'{measured:.4g}')
            return result

        result = run_everywhere(finish)
        result.seconds = time.perf_counter() - start
        result.log()
        return result


def check_same_inputs(model: nn.Module, state: PruningState) -> None:
    """Refuse ranks that hold other weights or another curve-cache key
    (config, calibration outputs) than rank 0 (a no-op alone)."""
    if not is_distributed():
        return
    fix = ('give every rank the same config, checkpoint and calibration '
           'frames')
    check_same_everywhere(
        fingerprint(model.state_dict().items()), 'model weights', fix)
    if state.cache is not None:
        check_same_everywhere(
            state.cache.key,
            'curve-cache key (settings, weights and calibration outputs)',
            fix)
