"""The channel allocations RD channel pruning is compared with.

They differ from :class:`RDChannelPruner` only in how many channels each
group keeps (the allocate stage; no curves): groups, channel order, masks,
the exact budget, the measured distortion, the report and the slim model
are the same. Select one in a config with::

    pruner = dict(type='ChannelBaselinePruner', allocation='uniform',
                  budget=0.5)

* ``uniform``: every group keeps the same share ``s`` of its channels,
  ``max(least, floor(s * C))``, the largest ``s`` whose exact cost fits;
* ``global``: one threshold on the channel scores of the ranking (filter
  norms, BatchNorm ``|gamma|``) across all groups, the most channels whose
  exact cost fits;
* ``fastest``: the least modelled time (:mod:`rdprune_mm.channels.latency`)
  whose exact cost fits, distortion ignored: what any allocation could
  reach on this machine at the budget.

``least`` is ``max(1, ceil(min_keep * C))`` channels of every group.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..allocator import allocate
from ..channels import (apply_channel_mask, separable_costs,
                        total_cost_after)
from ..channels.latency import LATENCY_SHARES
from ..channels.records import group_allocations, layer_costs
from ..errors import PruningInputError
from ..pipeline import (PruningState, bisect_edge, check_choice,
                        check_ignored_settings)
from ..registry import PRUNERS
from ..results import ChannelPruningResult
from .channel_pruner import RDChannelPruner
from .weight_pruner import BUDGET_UNITS

CHANNEL_BASELINES = ('uniform', 'global', 'fastest')


def fastest_objective(times: np.ndarray, flops: np.ndarray) -> np.ndarray:
    """What ``'fastest'`` minimises over one group's levels (fewer channels
    at higher levels): the modelled time, never above that of a level with
    more channels (a timing can be noisy), plus a tie-break far below the
    timings' resolution that prefers fewer FLOPs, so that removing channels
    never looks slower and a reachable FLOPs budget is always met."""
    monotone = np.minimum.accumulate(np.asarray(times, dtype=np.float64))
    scale = 1e-9 * max(float(np.abs(monotone).max()), 1e-30)
    return monotone + scale * np.asarray(flops, np.float64) / max(
        float(flops[0]), 1e-30)


@PRUNERS.register_module()
class ChannelBaselinePruner(RDChannelPruner):
    """Channel pruning with a baseline allocation.

    Args:
        allocation: ``'uniform'``, ``'global'`` or ``'fastest'`` (see the
            module docstring).
        budget: Share of the FLOPs (``budget_by='flops'``) or weights
            (``'params'``) of the layers the groups touch to keep, in
            (0, 1]; met by the exact cost.
        budget_by: ``'flops'`` or ``'params'``.
        targets: As :class:`RDChannelPruner`'s.
        ranking: Channel importance, as :class:`RDChannelPruner`'s; also
            the scores of ``'global'``.
        distortion: Config of the measure reported in the result.
        min_keep: Smallest share of every group's channels to keep.
        head_modules: Modules whose outputs define the distortion.
        num_levels: Kept-share levels among which ``'fastest'`` chooses.
        latency_shares: Shares at which ``'fastest'`` times the layers.
        latency_repeats: Timed passes per share of ``'fastest'``.
        latency_budget: Must be None: the baselines have no time cap.
        **rd_settings: Settings of :class:`RDChannelPruner` with no meaning
            here (``resolution``, ``search_steps``), accepted and ignored
            so that a config can switch ``pruner.type`` alone.
    """

    RD_SETTINGS = ('resolution', 'search_steps')

    def __init__(self,
                 allocation: str = 'uniform',
                 budget: float = 0.5,
                 budget_by: str = 'flops',
                 targets: Optional[dict] = None,
                 ranking: str = 'l2',
                 distortion: Optional[dict] = None,
                 min_keep: float = 0.0,
                 head_modules: Optional[Sequence[str]] = None,
                 num_levels: int = 11,
                 latency_shares: Sequence[float] = LATENCY_SHARES,
                 latency_repeats: int = 3,
                 latency_budget: Optional[float] = None,
                 compensate: Optional[dict] = None,
                 **rd_settings) -> None:
        check_ignored_settings(rd_settings, self.RD_SETTINGS, 'ChannelBaselinePruner')
        self.allocation = check_choice(allocation, CHANNEL_BASELINES,
                                       'pruner.allocation')
        check_choice(budget_by, BUDGET_UNITS, 'pruner.budget_by')
        if latency_budget is not None:
            raise PruningInputError(
                'ChannelBaselinePruner has no time cap; set '
                'pruner.latency_budget=None or use RDChannelPruner')
        super().__init__(
            budget=budget, num_levels=num_levels, targets=targets,
            ranking=ranking, distortion=distortion, min_keep=min_keep,
            head_modules=head_modules, budget_by=budget_by,
            latency_shares=latency_shares, latency_repeats=latency_repeats,
            compensate=compensate)

    @property
    def needs_latency(self) -> bool:
        return self.allocation == 'fastest'

    def curves(self, model: nn.Module, batches: Sequence[dict],
               state: PruningState) -> Dict[str, np.ndarray]:
        return {}

    # ------------------------------------------------------ allocations
    def _least(self, state: PruningState) -> Dict[str, int]:
        return {
            u.name: min(u.group.num_channels,
                        max(1, math.ceil(self.min_keep *
                                         u.group.num_channels - 1e-9)))
            for u in state.units
        }

    def _fits(self, state: PruningState, counts: Dict[str, int]) -> bool:
        cost = state.cost
        return total_cost_after(state.extra['groups'], counts,
                                cost.dense) <= (self.budget * cost.total *
                                                (1 - 1e-12))

    def _uniform(self, state: PruningState) -> Dict[str, int]:
        least = self._least(state)

        def counts(share: float) -> Dict[str, int]:
            return {u.name: max(least[u.name],
                                int(math.floor(share * u.group.num_channels)))
                    for u in state.units}

        share = bisect_edge(lambda s: self._fits(state, counts(s)), 0.0, 1.0,
                            fits_low=True)
        return counts(share)

    def _global(self, state: PruningState) -> Dict[str, int]:
        least = self._least(state)
        scores = torch.cat([
            self.importance.scores(u.group).double() for u in state.units
        ])
        owner = torch.cat([
            torch.full((u.group.num_channels, ), i)
            for i, u in enumerate(state.units)
        ])
        ranked = owner[torch.argsort(scores, descending=True, stable=True)]

        def counts(top: int) -> Dict[str, int]:
            kept = torch.bincount(ranked[:top], minlength=len(state.units))
            return {u.name: max(least[u.name], int(kept[i]))
                    for i, u in enumerate(state.units)}

        low, high = 0, len(ranked)  # the most channels that fit
        while low < high:
            middle = (low + high + 1) // 2
            if self._fits(state, counts(middle)):
                low = middle
            else:
                high = middle - 1
        return counts(low)

    def _fastest(self, state: PruningState) -> Dict[str, int]:
        groups, units = state.extra['groups'], state.units
        counts = [u.kept for u in units]
        measured, _ = state.extra['latency'].separable()
        flop_tables, _ = separable_costs(groups, counts, state.cost.dense)
        removed = [t[0] - t for t in flop_tables]
        times = [fastest_objective(t, f) for t, f in zip(measured,
                                                         flop_tables)]

        def kept(limit: float) -> Dict[str, int]:
            levels = allocate(times, removed, limit).levels
            return {u.name: int(c[k]) for u, c, k in zip(units, counts,
                                                         levels)}

        limit = bisect_edge(lambda limit: self._fits(state, kept(limit)),
                            0.0, sum(float(r.max()) for r in removed),
                            fits_low=False)
        return kept(limit)

    def allocate(self, state: PruningState, curves: Dict[str, np.ndarray]
                 ) -> Dict[str, int]:
        """Channels every group keeps."""
        rules = {'uniform': self._uniform, 'global': self._global,
                 'fastest': self._fastest}
        return rules[self.allocation](state)

    def apply(self, model: nn.Module, state: PruningState,
              counts: Dict[str, int]) -> Dict[str, torch.Tensor]:
        keeps = {u.name: u.keep_mask(u.group.num_channels - counts[u.name])
                 for u in state.units}
        for unit in state.units:
            apply_channel_mask(unit.group, keeps[unit.name])
        return keeps

    def result(self, state: PruningState, curves: Dict[str, np.ndarray],
               counts: Dict[str, int], keeps: Dict[str, torch.Tensor],
               measured: float) -> ChannelPruningResult:
        """With ``predicted_distortion`` NaN, no curves and level -1 (no
        grid) for every group."""
        groups, extra = state.extra['groups'], state.extra
        chosen = [np.array([g.num_channels, counts[g.name]]) for g in groups]
        nan_curves = {g.name: np.full(2, math.nan) for g in groups}
        latency = extra['latency']
        tables, fixed = separable_costs(groups, chosen, state.cost.dense)
        total = state.cost.total
        return ChannelPruningResult(
            budget=self.budget,
            groups=group_allocations(groups, chosen, [-1] * len(groups),
                                     extra['params'], extra['flops'],
                                     nan_curves),
            keeps=keeps,
            layer_costs=layer_costs(
                state.targets, groups, counts, extra['params'],
                extra['flops'], None if latency is None else latency.latency),
            predicted_distortion=math.nan,
            measured_distortion=measured,
            unpruned_distortion=state.calibration.unpruned_distortion,
            curves={},
            sparsities=np.zeros(0),
            budget_by=self.budget_by,
            allocator_budget=self.budget,
            separable_cost=(fixed + math.fsum(t[-1] for t in tables)) / total,
            exclude=self.exclude,
            latency=None if latency is None else latency.latency)
