"""RD channel pruning: per-group RD curves, the shared allocator under an
exact FLOPs (or params, or modelled time) budget, channel masks, then a
slim model.

The unit of pruning is a channel group (:mod:`rdprune_mm.channels`): the
output channels that several layers share. A group's level is the number of
channels it keeps; its channels go in the order of its importance
(``ranking``). Its curve is measured as the weight pruner's: the group alone
is masked at every level and the distortion of the head outputs is measured
on the calibration frames (:class:`rdprune_mm.pipeline.PruningPipeline`).

A layer between two groups costs in proportion to the product of their kept
shares, which is not separable: the budget search
(:mod:`rdprune_mm.pipeline.budget_search`) gives the allocator the separable
upper bound of :mod:`rdprune_mm.channels.costs` and raises the budget it
sees while the exact cost stays within the budget. The exact cost of the
result never exceeds the budget.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import MMLogger
from torch import nn

from ..channels import (ChannelGroup, apply_channel_mask, channel_counts,
                        find_channel_groups)
from ..channels.latency import LATENCY_SHARES, cached_latency_model
from ..channels.records import group_allocations, layer_costs
from ..errors import PruningInputError
from ..flops import layer_flops
from ..masks import sparsity_grid
from ..pipeline import (BudgetSearch, ChannelCost, LatencyCost,
                        PruningPipeline, PruningState, build_importance,
                        check_budget, check_choice, check_num_levels,
                        check_positive_int)
from ..registry import PRUNERS
from ..results import ChannelPruningResult
from ..targets import PruningTarget, find_targets
from ..units import ChannelUnit
from .weight_pruner import BUDGET_UNITS

CHANNEL_CURVES_VERSION = 1
#: ``budget_by`` of channel pruning: weight pruning's units, and measured
#: time per frame (:mod:`rdprune_mm.channels.latency`).
CHANNEL_BUDGET_UNITS = (*BUDGET_UNITS, 'latency')


@PRUNERS.register_module()
class RDChannelPruner(PruningPipeline):
    """Rate-distortion optimal, layer-adaptive structured channel pruning.

    Args:
        budget: Share of the FLOPs (``budget_by='flops'``) or weights
            (``'params'``) of the layers the channel groups touch to keep,
            in (0, 1]. Met by the exact cost of the allocation.
        num_levels: Levels of each group's curve: kept shares
            ``1, (n-2)/(n-1), ..., 0``, rounded to channel counts (and at
            least ``min_keep``, one channel).
        targets: ``dict(include=[regex...], exclude=[regex...])`` over
            module names: a group is pruned when one of its producers
            matches ``include`` and none matches ``exclude``; modules
            without channel rules that match ``exclude`` are black boxes.
        ranking: Channel order inside a group, a channel importance of the
            ``IMPORTANCES`` registry by alias or config: ``'l2'`` / ``'l1'``
            (the producers' filter norms), ``'bn'`` (BatchNorm
            ``|gamma|``) or ``'fisher'`` (first-order Taylor on the head
            outputs, :class:`ChannelTaylorImportance`).
        distortion: Config of a measure in the ``DISTORTIONS`` registry.
        min_keep: Smallest share of every group's channels to keep (one
            channel is always kept).
        head_modules: Modules whose outputs define the distortion (None:
            the detector's detection head).
        budget_by: ``'flops'`` (measured on the calibration frames, sparse
            convs from their active pairs), ``'params'``, or ``'latency'``
            (time per frame on the model's device, from a per-layer model
            fitted to slim copies timed at ``latency_shares``; see
            :mod:`rdprune_mm.channels.latency`).
        resolution: Budget units of the allocator's dynamic program.
        search_steps: Bisection steps that raise the allocator's budget
            while the exact cost stays within the budget (0: none).
        latency_budget: Also keep at most this share of the layers'
            modelled time, in (0, 1], beside the FLOPs or weights
            ``budget`` (None: no time cap). The cap enters the allocation
            as a Lagrange weight on the time tables, the least that meets
            it (:meth:`BudgetSearch.search_with_cap`).
        latency_shares: Uniform kept shares at which the layers are timed
            for ``'latency'`` or ``latency_budget`` (at least 2, one of
            them 1).
        latency_repeats: Timed passes per share (their median counts).
        compensate: Post-pruning compensation (see
            :class:`~rdprune_mm.pipeline.PruningPipeline`); None: off.
        replay_unchanged: Whether the curves replay the detector parts a
            pass leaves unchanged (:mod:`rdprune_mm.upstream_replay`).
    """

    unit_noun = 'channel groups'
    masks_weights = False

    def __init__(self,
                 budget: float = 0.5,
                 num_levels: int = 11,
                 targets: Optional[dict] = None,
                 ranking: str = 'l2',
                 distortion: Optional[dict] = None,
                 min_keep: float = 0.0,
                 head_modules: Optional[Sequence[str]] = None,
                 budget_by: str = 'flops',
                 resolution: int = 10_000,
                 search_steps: int = 12,
                 latency_budget: Optional[float] = None,
                 latency_shares: Sequence[float] = LATENCY_SHARES,
                 latency_repeats: int = 3,
                 compensate: Optional[dict] = None,
                 replay_unchanged: bool = True) -> None:
        super().__init__(budget, distortion, min_keep, head_modules, targets,
                         compensate, replay_unchanged)
        self.budget_by = check_choice(budget_by, CHANNEL_BUDGET_UNITS,
                                      'pruner.budget_by')
        if latency_budget is not None:
            if budget_by == 'latency':
                raise PruningInputError(
                    "latency_budget caps the time beside a FLOPs or weights "
                    "budget, but budget_by is 'latency' already; set "
                    "pruner.budget alone or pruner.budget_by='flops'")
            check_budget(latency_budget, 'pruner.latency_budget',
                         "the share of the layers' modelled time to keep")
        if (len(latency_shares) < 2 or 1.0 not in latency_shares
                or not all(0 < s <= 1 for s in latency_shares)):
            raise PruningInputError(
                f'latency_shares {list(latency_shares)} must hold 1 and at '
                'least one other share in (0, 1), e.g. (1, 0.75, 0.5, '
                '0.25); fix pruner.latency_shares')
        check_positive_int(latency_repeats, 'pruner.latency_repeats')
        self.importance = build_importance(ranking, 'channels')
        self.sparsities = sparsity_grid(check_num_levels(num_levels))
        self.ranking = ranking
        self.resolution = check_positive_int(resolution,
                                             'pruner.resolution')
        self.search_steps = check_positive_int(search_steps,
                                               'pruner.search_steps', 0)
        self.latency_budget = latency_budget
        self.latency_shares = tuple(float(s) for s in latency_shares)
        self.latency_repeats = latency_repeats

    @property
    def exclude(self) -> List[str]:
        return list(self.targets_cfg.get('exclude') or [])

    @property
    def needs_latency(self) -> bool:
        return self.budget_by == 'latency' or self.latency_budget is not None

    def find_groups(self, model: nn.Module) -> List[ChannelGroup]:
        """The channel groups this pruner prunes."""
        return find_channel_groups(model, self.targets_cfg.get('include'),
                                   self.exclude)

    def check_keep_within(self, keep_within: Optional[dict]) -> None:
        if keep_within:
            raise PruningInputError(
                'RDChannelPruner prunes once: iterative rounds '
                '(keep_within) are supported by RDWeightPruner only')

    def select(self, model: nn.Module) -> Tuple[List[PruningTarget], dict]:
        """The groups, and the weight layers they touch.

        Raises:
            PruningInputError: If a group touches a layer that is not a
                prunable weight layer.
        """
        groups = self.find_groups(model)
        touched = {layer.name for g in groups
                   for layer in (*g.producers, *g.consumers)}
        targets = [t for t in find_targets(model) if t.name in touched]
        missing = touched - {t.name for t in targets}
        if missing:
            raise PruningInputError(
                f'channel groups touch {sorted(missing)[:3]}, which are not '
                'prunable weight layers; exclude them with '
                'pruner.targets.exclude')
        return targets, dict(groups=groups)

    def budget_search(self) -> BudgetSearch:
        return BudgetSearch(
            self.budget, resolution=self.resolution,
            search_steps=self.search_steps,
            floor=f'pruner.min_keep={self.min_keep} (and one channel per '
            'group)')

    # ------------------------------------------------------- the stages
    def setup(self, model: nn.Module, batches: Sequence[dict],
              state: PruningState, cache_dir: Optional[str]) -> None:
        groups = state.extra['groups']
        uses = state.calibration.uses
        flops = {t.name: layer_flops(uses[t.name], t.weight)
                 for t in state.targets}
        if self.budget_by == 'flops' and sum(flops.values()) == 0:
            raise PruningInputError(
                'the channel groups\' layers did no FLOPs on the calibration '
                "frames (none of them ran); use pruner.budget_by='params'")
        params = {t.name: float(t.num_params) for t in state.targets}
        counts = channel_counts(groups, 1.0 - self.sparsities, self.min_keep)
        if self.importance.needs_calibration:
            MMLogger.get_current_instance().info(
                f'{self.ranking} ranking: backward passes on '
                f'{len(batches)} calibration frame(s)')
            self.importance.measure(
                groups, state.targets, batches, state.calibration.head,
                self.distortion.quadratic_weights(state.calibration.reference),
                self.distortion.sample_reduction)
        state.units = [
            ChannelUnit(g, self.importance.order(g), c)
            for g, c in zip(groups, counts)
        ]
        state.extra.update(params=params, flops=flops, counts=counts,
                           latency=None)
        MMLogger.get_current_instance().info(
            f'{len(groups)} channel groups over {len(state.targets)} '
            f'layers, {len(batches)} calibration frame(s), {self.ranking} '
            'ranking')
        if self.needs_latency:
            latency = cached_latency_model(
                model, groups, [t.name for t in state.targets],
                state.calibration.reference[0], batches[0], cache_dir,
                self.exclude, self.head_modules, self.latency_shares,
                self.latency_repeats)
            state.extra['latency'] = LatencyCost(latency, groups, counts)
        state.cost = (state.extra['latency']
                      if self.budget_by == 'latency' else ChannelCost(
                          self.budget_by, groups, counts,
                          flops if self.budget_by == 'flops' else params))
        state.cache = self.curve_cache(model, state, cache_dir)

    def curve_settings(self, state: PruningState) -> dict:
        return dict(
            version=CHANNEL_CURVES_VERSION,
            pruning='channels',
            counts={u.name: u.kept.tolist() for u in state.units},
            distortion=self.distortion_cfg,
            ranking=self.ranking,
            head_modules=self.head_modules)

    def check_budget(self, state: PruningState) -> None:
        """Refuse a budget, or a time cap, that even the fewest channels
        exceed, before any curve is measured."""
        super().check_budget(state)
        if self.latency_budget is None:
            return
        latency = state.extra['latency']
        share = latency.exact(latency.cheapest_levels()) / latency.total
        if share > self.latency_budget:
            raise PruningInputError(
                f'latency_budget {self.latency_budget} is below '
                f"{share:.4f}, the share of the layers' modelled time left "
                f'with the fewest channels pruner.min_keep={self.min_keep} '
                '(and one channel per group) allows; raise '
                'pruner.latency_budget or lower pruner.min_keep')

    def allocate(self, state: PruningState, curves: Dict[str, np.ndarray]
                 ) -> Tuple[Tuple[int, ...], float, float, float]:
        """Levels whose exact cost meets the budget (and the time cap).

        Returns:
            tuple: The levels, the budget the allocator was given (total
            units, the tables' constant included), the separable cost of
            the levels and the time weight.
        """
        distortions = [curves[u.name] for u in state.units]
        cost, search = state.cost, self.budget_search()
        if self.latency_budget is not None and self.latency_budget < 1:
            return search.search_with_cap(distortions, cost,
                                          state.extra['latency'],
                                          self.latency_budget,
                                          'pruner.latency_budget')
        if self.budget >= 1:  # everything fits: nothing to prune
            tables, fixed = cost.separable()
            return ((0, ) * len(state.units), cost.total,
                    fixed + math.fsum(t[0] for t in tables), 0.0)
        return (*search.search(distortions, cost), 0.0)

    def apply(self, model: nn.Module, state: PruningState,
              allocation: tuple) -> Dict[str, torch.Tensor]:
        keeps = {u.name: u.keep_at(level)
                 for u, level in zip(state.units, allocation[0])}
        for unit in state.units:
            apply_channel_mask(unit.group, keeps[unit.name])
        return keeps

    def result(self, state: PruningState, curves: Dict[str, np.ndarray],
               allocation: tuple, keeps: Dict[str, torch.Tensor],
               measured: float) -> ChannelPruningResult:
        levels, dp_budget, separable, weight = allocation
        groups, extra = state.extra['groups'], state.extra
        latency = extra['latency']
        counts = state.cost.keep_counts(levels)
        total = state.cost.total
        return ChannelPruningResult(
            budget=self.budget,
            groups=group_allocations(groups, extra['counts'], levels,
                                     extra['params'], extra['flops'],
                                     curves),
            keeps=keeps,
            layer_costs=layer_costs(
                state.targets, groups, counts, extra['params'],
                extra['flops'], None if latency is None else latency.latency),
            predicted_distortion=math.fsum(
                float(curves[g.name][k]) for g, k in zip(groups, levels)),
            measured_distortion=measured,
            unpruned_distortion=state.calibration.unpruned_distortion,
            curves=curves,
            sparsities=self.sparsities,
            budget_by=self.budget_by,
            allocator_budget=dp_budget / total,
            separable_cost=separable / total,
            exclude=self.exclude,
            latency=None if latency is None else latency.latency,
            latency_budget=self.latency_budget,
            latency_weight=weight)
