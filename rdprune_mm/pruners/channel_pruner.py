"""RD channel pruning: per-group RD curves, the shared allocator under an
exact FLOPs (or params) budget, channel masks, then a slim model.

The unit of pruning is a channel group (:mod:`rdprune_mm.channels`): the
output channels that several layers share. A group's level is the number of
channels it keeps; its channels go in the order of their filter norms
(``ranking``). Its curve is measured as the weight pruner's: the group
alone is masked at every level and the distortion of the head outputs is
measured on the calibration frames, one pass per level (cached by a
fingerprint of the weights, the reference outputs and the settings).

A layer between two groups costs in proportion to the product of their kept
shares, which is not separable. The allocator gets the separable upper
bound of :mod:`rdprune_mm.channels.costs` (exact at equal shares); its
allocation meets the budget exactly, and the pruner then raises the budget
the allocator sees (bisection, ``search_steps`` solves) as long as the
exact cost of the allocation stays within the budget, keeping the feasible
allocation of least predicted distortion. The exact cost of the result
never exceeds the budget.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import MMLogger
from mmengine.utils import ProgressBar
from torch import nn

from ..allocator import Allocation, InfeasibleBudgetError, allocate
from ..channels import (ChannelGroup, apply_channel_mask, cost_after,
                        find_channel_groups, layer_fractions,
                        masked_channels, total_cost_after)
from ..channels.costs import channel_counts, separable_costs
from ..channels.groups import SCORE_KINDS
from ..channels.latency import (LATENCY_SHARES, LatencyModel,
                                fit_latency_model, measure_latency_model)
from ..curves import CurveCache
from ..errors import PruningInputError
from ..fileio import fingerprint
from ..flops import UseCounter, layer_flops
from ..head_outputs import HeadOutputs
from ..masks import sparsity_grid
from ..registry import DISTORTIONS, PRUNERS
from ..targets import PruningTarget, find_targets
from .weight_pruner import BUDGET_UNITS, KeptShares

CHANNEL_CURVES_VERSION = 1
#: ``budget_by`` of channel pruning: weight pruning's units, and measured
#: time per frame (:mod:`rdprune_mm.channels.latency`).
CHANNEL_BUDGET_UNITS = (*BUDGET_UNITS, 'latency')


@dataclass
class GroupAllocation:
    """What the allocator chose for one channel group.

    ``params_*`` and ``flops_*`` are the group's separable share of the
    cost of the layers it touches (half of each layer it produces or
    consumes, in proportion to the channels it covers, times its kept share
    squared; :mod:`rdprune_mm.channels.costs`); they add up to the dense
    cost before pruning, and to an upper bound of the exact cost after.
    """

    name: str
    kind: str
    level: int
    sparsity: float
    channels_before: int
    channels_after: int
    kept_share: float
    params_before: float
    params_after: float
    flops_before: float
    flops_after: float
    predicted_distortion: float


@dataclass
class LayerCost:
    """The exact cost of one weight layer after channel pruning."""

    name: str
    kind: str
    out_kept: float
    in_kept: float
    params_before: int
    params_after: float
    flops_before: float
    flops_after: float
    latency_before: Optional[float] = None
    latency_after: Optional[float] = None


@dataclass
class ChannelPruningResult(KeptShares):
    """The outcome of :meth:`RDChannelPruner.prune`.

    Totals (``params_*``, ``flops_*``) are exact (:func:`cost_after`) over
    the weight layers that the groups touch. ``layers`` is ``groups`` under
    the name that :func:`rdprune_mm.report.allocation_report` and the plots
    read.
    """

    budget: float
    groups: List[GroupAllocation]
    keeps: Dict[str, torch.Tensor] = field(repr=False)
    layer_costs: List[LayerCost] = field(repr=False)
    predicted_distortion: float
    measured_distortion: float
    unpruned_distortion: float
    curves: Dict[str, np.ndarray] = field(repr=False)
    sparsities: np.ndarray = field(repr=False)
    budget_by: str = 'flops'
    allocator_budget: float = 1.0
    separable_cost: float = 1.0
    exclude: List[str] = field(default_factory=list)
    latency: Optional[LatencyModel] = field(default=None, repr=False)
    latency_budget: Optional[float] = None
    latency_weight: float = 0.0

    @property
    def layers(self) -> List[GroupAllocation]:
        return self.groups

    @property
    def latency_before(self) -> Optional[float]:
        """Modelled seconds per frame of the layers, unpruned (None
        unless ``budget_by='latency'`` or a ``latency_budget`` is set)."""
        if self.latency is None:
            return None
        return math.fsum(layer.latency_before for layer in self.layer_costs)

    @property
    def latency_after(self) -> Optional[float]:
        """Modelled seconds per frame of the layers after pruning."""
        if self.latency is None:
            return None
        return math.fsum(layer.latency_after for layer in self.layer_costs)

    @property
    def latency_kept(self) -> Optional[float]:
        """Share of the layers' modelled time that is kept."""
        if self.latency is None:
            return None
        return self.latency_after / self.latency_before

    @property
    def achieved_budget(self) -> float:
        if self.budget_by == 'latency':
            return self.latency_kept
        return super().achieved_budget

    @property
    def masks(self):
        raise PruningInputError(
            'RDChannelPruner gives channel keep-masks (result.keeps), not '
            'weight masks: RDPruneHook holds weight masks only; prune '
            'channels with tools/prune.py and fine-tune the slim model '
            '(slim_config.py, slim.pth)')

    @property
    def params_before(self) -> int:
        return sum(layer.params_before for layer in self.layer_costs)

    @property
    def params_after(self) -> float:
        return math.fsum(layer.params_after for layer in self.layer_costs)

    @property
    def flops_before(self) -> float:
        return math.fsum(layer.flops_before for layer in self.layer_costs)

    @property
    def flops_after(self) -> float:
        return math.fsum(layer.flops_after for layer in self.layer_costs)

    def report_fields(self) -> dict:
        """What ``allocation.json`` adds for channel pruning: the cost
        model and every weight layer's exact cost."""
        latency = None if self.latency is None else dict(
            description='seconds per frame of every layer, t = quadratic * '
            'o * i + linear * p + constant (o, i: kept out/in shares; p: '
            'their mean over the pruned sides), fitted to times measured on '
            'slim copies at uniform shares',
            seconds_before=self.latency_before,
            seconds_after=self.latency_after,
            kept=self.latency_kept,
            budget=self.latency_budget,
            weight=self.latency_weight,
            **self.latency.to_dict())
        return dict(
            pruning='channels',
            cost_model=dict(
                description='groups carry a separable upper bound of the '
                'exact cost: half of each layer they produce or consume, in '
                'proportion to the channels they cover, times their kept '
                'share squared; totals and budget.achieved are exact '
                '(kept out share x kept in share per layer)',
                allocator_budget=self.allocator_budget,
                separable_cost=self.separable_cost,
                latency=latency),
            exclude=list(self.exclude),
            weight_layers=[asdict(layer) for layer in self.layer_costs])


@dataclass
class _Setup:
    """What one calibration run of a model gives the pruner."""

    groups: List[ChannelGroup]
    targets: List[PruningTarget]
    counts: List[np.ndarray]
    orders: List[torch.Tensor]
    params: Dict[str, float]
    flops: Dict[str, float]
    measure: Callable[[], float]
    unpruned: float
    reference: list
    latency: Optional[LatencyModel] = None


@PRUNERS.register_module()
class RDChannelPruner:
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
        ranking: Channel order inside a group: ``'l2'`` / ``'l1'`` (the
            producers' filter norms) or ``'bn'`` (BatchNorm ``|gamma|``).
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
            it (see :meth:`choose_levels`).
        latency_shares: Uniform kept shares at which the layers are timed
            for ``'latency'`` or ``latency_budget`` (at least 2, one of
            them 1).
        latency_repeats: Timed passes per share (their median counts).
    """

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
                 latency_repeats: int = 3) -> None:
        if not 0 < budget <= 1:
            raise PruningInputError(
                f'budget {budget} is outside (0, 1]: it is the share of '
                'FLOPs (or weights) to keep, e.g. pruner.budget=0.5 halves '
                'them')
        if not 0 <= min_keep <= 1:
            raise PruningInputError(
                f'min_keep {min_keep} is outside [0, 1]; fix pruner.min_keep')
        if budget_by not in CHANNEL_BUDGET_UNITS:
            raise PruningInputError(
                f'budget_by {budget_by!r} is not one of '
                f'{CHANNEL_BUDGET_UNITS}; fix pruner.budget_by')
        if latency_budget is not None:
            if budget_by == 'latency':
                raise PruningInputError(
                    "latency_budget caps the time beside a FLOPs or weights "
                    "budget, but budget_by is 'latency' already; set "
                    "pruner.budget alone or pruner.budget_by='flops'")
            if not 0 < latency_budget <= 1:
                raise PruningInputError(
                    f'latency_budget {latency_budget} is outside (0, 1]: it '
                    "is the share of the layers' modelled time to keep; fix "
                    'pruner.latency_budget')
        if (len(latency_shares) < 2 or 1.0 not in latency_shares
                or not all(0 < s <= 1 for s in latency_shares)):
            raise PruningInputError(
                f'latency_shares {list(latency_shares)} must hold 1 and at '
                'least one other share in (0, 1), e.g. (1, 0.75, 0.5, '
                '0.25); fix pruner.latency_shares')
        if latency_repeats < 1:
            raise PruningInputError(
                f'latency_repeats {latency_repeats} < 1; set '
                'pruner.latency_repeats >= 1')
        if ranking not in SCORE_KINDS:
            raise PruningInputError(
                f'ranking {ranking!r} is not one of {SCORE_KINDS}; fix '
                'pruner.ranking')
        if num_levels < 2:
            raise PruningInputError(
                f'num_levels {num_levels} < 2; set pruner.num_levels >= 2')
        if search_steps < 0:
            raise PruningInputError(
                f'search_steps {search_steps} < 0; set pruner.search_steps '
                '>= 0')
        self.budget = budget
        self.sparsities = sparsity_grid(num_levels)
        self.targets_cfg = dict(targets or {})
        self.ranking = ranking
        self.distortion_cfg = dict(distortion or dict(type='NormalizedMSE'))
        self.distortion = DISTORTIONS.build(self.distortion_cfg)
        self.min_keep = min_keep
        self.head_modules = head_modules
        self.budget_by = budget_by
        self.resolution = resolution
        self.search_steps = search_steps
        self.latency_budget = latency_budget
        self.latency_shares = tuple(float(s) for s in latency_shares)
        self.latency_repeats = latency_repeats

    @property
    def exclude(self) -> List[str]:
        return list(self.targets_cfg.get('exclude') or [])

    def find_groups(self, model: nn.Module) -> List[ChannelGroup]:
        """The channel groups this pruner prunes."""
        return find_channel_groups(model, self.targets_cfg.get('include'),
                                   self.exclude)

    # ------------------------------------------------------------ setup
    @torch.no_grad()
    def _setup(self, model: nn.Module, batches: Sequence[dict]) -> _Setup:
        if not batches:
            raise PruningInputError(
                'the calibration set is empty; give at least one frame')
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
        head = HeadOutputs(model, self.head_modules)
        with UseCounter(targets) as counter:
            reference = [head(batch) for batch in batches]
        uses = counter.uses(len(batches))
        flops = {t.name: layer_flops(uses[t.name], t.weight)
                 for t in targets}
        if self.budget_by == 'flops' and sum(flops.values()) == 0:
            raise PruningInputError(
                'the channel groups\' layers did no FLOPs on the calibration '
                "frames (none of them ran); use pruner.budget_by='params'")

        def measure() -> float:
            return self.distortion(reference,
                                   [head(batch) for batch in batches])

        unpruned = measure()
        if unpruned != 0:
            MMLogger.get_current_instance().warning(
                f'the unpruned model reproduces its own outputs only to a '
                f'distortion of {unpruned:.3g}: its forward pass is not '
                'deterministic, and curves below that level are noise')
        return _Setup(
            groups=groups,
            targets=targets,
            counts=channel_counts(groups, 1.0 - self.sparsities,
                                  self.min_keep),
            orders=[g.channel_order(self.ranking) for g in groups],
            params={t.name: float(t.num_params) for t in targets},
            flops=flops,
            measure=measure,
            unpruned=unpruned,
            reference=reference)

    @staticmethod
    def _keep(group: ChannelGroup, order: torch.Tensor,
              count: int) -> torch.Tensor:
        keep = torch.ones(group.num_channels, dtype=torch.bool)
        keep[order[:group.num_channels - int(count)]] = False
        return keep

    def _curve_key(self, model: nn.Module, setup: _Setup) -> str:
        reference_tensors = ((f'{i}.{name}', tensor)
                             for i, outputs in enumerate(setup.reference)
                             for name, tensor in sorted(outputs.items()))
        settings = dict(
            version=CHANNEL_CURVES_VERSION,
            pruning='channels',
            counts={g.name: c.tolist()
                    for g, c in zip(setup.groups, setup.counts)},
            distortion=self.distortion_cfg,
            ranking=self.ranking,
            head_modules=self.head_modules)
        return fingerprint((*model.state_dict().items(), *reference_tensors),
                           extra=settings)

    # ------------------------------------------------------------ curves
    @torch.no_grad()
    def channel_curves(self, model: nn.Module, setup: _Setup,
                       cache_dir: Optional[str] = None
                       ) -> Dict[str, np.ndarray]:
        """Every group's distortion at every level, cached.

        Each group is masked alone (:func:`masked_channels`) at each
        distinct channel count of its levels; a count that keeps every
        channel reads the unpruned distortion.

        Returns:
            dict[str, np.ndarray]: One curve per group name.
        """
        logger = MMLogger.get_current_instance()
        cache = CurveCache(cache_dir, self._curve_key(model, setup))
        todo = [i for i, g in enumerate(setup.groups) if g.name not in cache]
        if len(todo) < len(setup.groups):
            logger.info(f'curves: {len(setup.groups) - len(todo)} of '
                        f'{len(setup.groups)} channel groups loaded from '
                        f'{cache.path}')
        passes = sum(
            len({int(c) for c in setup.counts[i]}
                - {setup.groups[i].num_channels}) for i in todo)
        if todo:
            logger.info(f'curves: measuring {len(todo)} channel groups, '
                        f'{passes} passes of the calibration set')
            progress = ProgressBar(passes)
        for i in todo:
            group, order, counts = (setup.groups[i], setup.orders[i],
                                    setup.counts[i])
            measured = {group.num_channels: setup.unpruned}
            for count in counts:
                count = int(count)
                if count in measured:
                    continue
                keep = self._keep(group, order, count)
                with masked_channels([group], {group.name: keep}):
                    measured[count] = setup.measure()
                progress.update()
            cache[group.name] = np.array(
                [measured[int(c)] for c in counts], dtype=np.float64)
        if todo and passes:
            print()
        return {g.name: cache[g.name] for g in setup.groups}

    # ------------------------------------------------------------ latency
    @torch.no_grad()
    def latency_model(self, model: nn.Module, setup: _Setup, batch: dict,
                      cache_dir: Optional[str] = None) -> LatencyModel:
        """The layers' latency model on this machine, cached beside the
        curves: the key is the architecture, the groups, the frame (through
        its reference outputs), the timing settings, the device, the thread
        count and the torch version."""
        logger = MMLogger.get_current_instance()
        device = next(model.parameters()).device
        key = fingerprint(
            sorted(setup.reference[0].items()),
            extra=dict(timing='segments to the next layer',
                       architecture=str(model),
                       groups={g.name: g.num_channels for g in setup.groups},
                       shares=self.latency_shares,
                       repeats=self.latency_repeats,
                       device=str(device),
                       device_name=(torch.cuda.get_device_name(device)
                                    if device.type == 'cuda' else
                                    platform.processor()
                                    or platform.machine()),
                       threads=torch.get_num_threads(),
                       torch=torch.__version__))
        cache = CurveCache(cache_dir, key, prefix='latency')
        names = [t.name for t in setup.targets]
        if all(name in cache for name in names):
            logger.info(f'latency: {len(names)} layers loaded from '
                        f'{cache.path}')
            return fit_latency_model(setup.groups, self.latency_shares,
                                     {name: cache[name] for name in names})
        logger.info(f'latency: timing {len(names)} layers on slim copies '
                    f'at kept shares {list(self.latency_shares)} on {device}'
                    f' ({self.latency_repeats} passes each)')
        progress = ProgressBar(len(self.latency_shares))
        latency = measure_latency_model(
            model, setup.groups, batch, names, self.exclude,
            self.head_modules, self.latency_shares, self.latency_repeats,
            progress=progress)
        print()
        cache.update({name: latency.measured[name] for name in names})
        return latency

    # ------------------------------------------------------------ costs
    def _dense_costs(self, setup: _Setup) -> Dict[str, float]:
        if self.budget_by == 'latency':
            return setup.latency.dense
        return setup.flops if self.budget_by == 'flops' else setup.params

    @staticmethod
    def _keep_counts(setup: _Setup, levels: Sequence[int]) -> Dict[str, int]:
        return {g.name: int(c[level])
                for g, c, level in zip(setup.groups, setup.counts, levels)}

    def _exact(self, setup: _Setup, levels: Sequence[int]) -> float:
        counts = self._keep_counts(setup, levels)
        if self.budget_by == 'latency':
            return setup.latency.total_after(setup.groups, counts)
        return total_cost_after(setup.groups, counts,
                                self._dense_costs(setup))

    def _separable(self, setup: _Setup) -> Tuple[List[np.ndarray], float]:
        if self.budget_by == 'latency':
            return setup.latency.separable(setup.groups, setup.counts)
        return separable_costs(setup.groups, setup.counts,
                               self._dense_costs(setup))

    def _solve(self, curves: List[np.ndarray], tables: List[np.ndarray],
               fixed: float, budget: float) -> Optional[Allocation]:
        """The allocator's optimum on the separable costs (None if even
        the cheapest levels exceed ``budget``)."""
        try:
            return allocate(curves, tables, budget - fixed,
                            resolution=self.resolution)
        except InfeasibleBudgetError:
            return None

    def _check_budget(self, setup: _Setup) -> Tuple[Tuple[int, ...], float]:
        """The fewest channels' levels and the budget in cost units.

        Raises:
            PruningInputError: If even those levels exceed the budget.
        """
        total = math.fsum(self._dense_costs(setup).values())
        # a hair below the budget, so that float sums in another order
        # (the reported totals) cannot exceed it
        target = self.budget * total * (1 - 1e-12)
        least = tuple(int(np.argmin(c)) for c in setup.counts)
        least_cost = self._exact(setup, least)
        if least_cost > target:
            raise PruningInputError(
                f'budget {self.budget} is below {least_cost / total:.4f} '
                f'(share of {self.budget_by}), the least that '
                f'pruner.min_keep={self.min_keep} (and one channel per '
                'group) allows; raise pruner.budget or lower pruner.min_keep')
        return least, target

    def _check_latency_cap(self, setup: _Setup) -> None:
        """Refuse a time cap that even the fewest channels exceed."""
        least = {g.name: int(np.min(c))
                 for g, c in zip(setup.groups, setup.counts)}
        share = (setup.latency.total_after(setup.groups, least) /
                 math.fsum(setup.latency.dense.values()))
        if share > self.latency_budget:
            raise PruningInputError(
                f'latency_budget {self.latency_budget} is below '
                f"{share:.4f}, the share of the layers' modelled time left "
                f'with the fewest channels pruner.min_keep={self.min_keep} '
                '(and one channel per group) allows; raise '
                'pruner.latency_budget or lower pruner.min_keep')

    def choose_levels(self, setup: _Setup, curves: Dict[str, np.ndarray]
                      ) -> Tuple[Tuple[int, ...], float, float, float]:
        """Levels whose exact cost meets the budget (and the time cap), of
        least predicted distortion among those the search tries.

        Without ``latency_budget`` this is :meth:`_within_budget` on the
        curves. With it, the allocator minimizes ``distortion + weight *
        time share`` (the separable time tables over the layers' dense
        time) within the budget; the weight is 0 if that already meets the
        cap, else the least one that does (grown fourfold, then bisected in
        ``search_steps``). No allocation within the allocator's budget
        that is as fast in separable time is less distorted; one under the
        cap that no weight selects (a duality gap) may be.

        Returns:
            tuple: The levels, the budget the allocator was given (total
            units, ``fixed`` included), the separable cost of the levels
            and the time weight.

        Raises:
            PruningInputError: If even the fewest channels that
                ``min_keep`` allows exceed the budget, or no weight brings
                the time within the cap.
        """
        distortions = [curves[g.name] for g in setup.groups]
        tables, fixed = self._separable(setup)
        if self.latency_budget is None or self.latency_budget >= 1:
            if self.budget >= 1:  # everything fits: nothing to prune
                levels = (0, ) * len(setup.groups)
                return (levels, math.fsum(self._dense_costs(setup).values()),
                        fixed + math.fsum(t[0] for t in tables), 0.0)
            return (*self._within_budget(setup, distortions, tables, fixed),
                    0.0)
        latency = setup.latency
        dense_time = math.fsum(latency.dense.values())
        cap = self.latency_budget * dense_time * (1 - 1e-12)
        time_tables, _ = latency.separable(setup.groups, setup.counts)
        shares = [t / dense_time for t in time_tables]

        def predicted(levels: Sequence[int]) -> float:
            return math.fsum(d[k] for d, k in zip(distortions, levels))

        def solve(weight: float):
            objective = [d + weight * s for d, s in zip(distortions, shares)]
            found = self._within_budget(setup, objective, tables, fixed)
            seconds = latency.total_after(
                setup.groups, self._keep_counts(setup, found[0]))
            return found, seconds <= cap, seconds

        found, fits, seconds = solve(0.0)
        if fits:
            return (*found, 0.0)
        low, high = 0.0, 1.0
        scale = max(1.0, math.fsum(float(np.ptp(d)) for d in distortions))
        while True:
            found, fits, seconds = solve(high)
            if fits:
                break
            if high > 1e9 * scale:
                within = ('' if self.budget >= 1 else
                          f' within {self.budget} of the {self.budget_by}')
                raise PruningInputError(
                    f'latency_budget {self.latency_budget} is below '
                    f'{seconds / dense_time:.4f}, the least share of the '
                    f"layers' modelled time the allocator reaches{within}; "
                    'raise pruner.latency_budget or lower pruner.min_keep')
            low, high = high, 4 * high
        best, weight = found, high
        for _ in range(self.search_steps):
            middle = 0.5 * (low + high)
            found, fits, _ = solve(middle)
            if not fits:
                low = middle
                continue
            high = middle
            if predicted(found[0]) <= predicted(best[0]):
                best, weight = found, middle
        return (*best, weight)

    def _within_budget(self, setup: _Setup,
                       objective: Sequence[np.ndarray],
                       tables: List[np.ndarray], fixed: float
                       ) -> Tuple[Tuple[int, ...], float, float]:
        """Levels whose exact cost meets the budget, of least ``objective``
        (per group, one value per level) among those the search tries: the
        allocator's budget on the separable costs (``tables`` and ``fixed``,
        :meth:`_separable`) is bisected upwards while the exact cost of its
        optimum stays within the budget.

        Returns:
            tuple: The levels, the budget the allocator was given and the
            separable cost of the levels.
        """
        total = math.fsum(self._dense_costs(setup).values())
        if self.budget >= 1:  # every level fits: the least objective
            levels = tuple(
                int(np.lexsort((np.arange(len(o)), o))[0]) for o in objective)
            return levels, total, fixed + math.fsum(
                t[k] for t, k in zip(tables, levels))
        least, target = self._check_budget(setup)

        def separable(levels: Sequence[int]) -> float:
            return fixed + math.fsum(t[k] for t, k in zip(tables, levels))

        def value(levels: Sequence[int]) -> float:
            return math.fsum(o[k] for o, k in zip(objective, levels))

        best, best_budget = least, separable(least)
        low = max(target, best_budget)
        high = max(total, separable([0] * len(tables)))

        def attempt(dp_budget: float) -> bool:
            nonlocal best, best_budget
            solved = self._solve(objective, tables, fixed, dp_budget)
            if solved is None or self._exact(setup, solved.levels) > target:
                return False
            if value(solved.levels) < value(best):
                best, best_budget = tuple(solved.levels), dp_budget
            return True

        attempt(low)
        if attempt(high):
            low = high
        for _ in range(self.search_steps):
            if high - low <= 1e-9 * total:
                break
            middle = 0.5 * (low + high)
            if attempt(middle):
                low = middle
            else:
                high = middle
        return best, best_budget, separable(best)

    # ------------------------------------------------------------ prune
    def _layer_costs(self, setup: _Setup,
                     counts: Dict[str, int]) -> List[LayerCost]:
        fractions = layer_fractions(setup.groups, counts)
        params = cost_after(setup.groups, counts, setup.params)
        flops = cost_after(setup.groups, counts, setup.flops)
        latency_before = latency_after = {}
        if setup.latency is not None:
            latency_before = setup.latency.dense
            latency_after = setup.latency.after(setup.groups, counts)
        return [
            LayerCost(
                name=t.name,
                kind=t.kind,
                out_kept=fractions.get(t.name, (1.0, 1.0))[0],
                in_kept=fractions.get(t.name, (1.0, 1.0))[1],
                params_before=t.num_params,
                params_after=params[t.name],
                flops_before=setup.flops[t.name],
                flops_after=flops[t.name],
                latency_before=latency_before.get(t.name),
                latency_after=latency_after.get(t.name))
            for t in setup.targets
        ]

    def _group_allocations(self, setup: _Setup, levels: Sequence[int],
                           curves: Dict[str, np.ndarray]
                           ) -> List[GroupAllocation]:
        param_tables, _ = separable_costs(setup.groups, setup.counts,
                                          setup.params)
        flop_tables, _ = separable_costs(setup.groups, setup.counts,
                                         setup.flops)
        out = []
        for i, (group, level) in enumerate(zip(setup.groups, levels)):
            kept = int(setup.counts[i][level])
            out.append(
                GroupAllocation(
                    name=group.name,
                    kind='channels',
                    level=int(level),
                    sparsity=1 - kept / group.num_channels,
                    channels_before=group.num_channels,
                    channels_after=kept,
                    kept_share=kept / group.num_channels,
                    params_before=float(param_tables[i][0]),
                    params_after=float(param_tables[i][level]),
                    flops_before=float(flop_tables[i][0]),
                    flops_after=float(flop_tables[i][level]),
                    predicted_distortion=float(curves[group.name][level])))
        return out

    @torch.no_grad()
    def prune(self,
              model: nn.Module,
              batches: Sequence[dict],
              cache_dir: Optional[str] = None,
              keep_within: Optional[dict] = None) -> ChannelPruningResult:
        """Allocate channels and mask them in ``model``, in place.

        The masked model computes what the slim model
        (:func:`rdprune_mm.channels.export.slim_copy` with
        ``result.keeps``) computes.

        Args:
            model: The detector, in eval mode, on its device.
            batches: Preprocessed calibration batches.
            cache_dir: Folder of the curve cache (None: no cache).
            keep_within: Not supported (iterative rounds are weight
                pruning only); must be None.

        Returns:
            ChannelPruningResult: The allocation, keep-masks, exact costs
            and distortions.
        """
        if keep_within:
            raise PruningInputError(
                'RDChannelPruner prunes once: iterative rounds '
                '(keep_within) are supported by RDWeightPruner only')
        logger = MMLogger.get_current_instance()
        start = time.perf_counter()
        setup = self._setup(model, batches)
        logger.info(f'{len(setup.groups)} channel groups over '
                    f'{len(setup.targets)} layers, {len(batches)} '
                    f'calibration frame(s), {self.ranking} ranking')
        if self.budget_by == 'latency' or self.latency_budget is not None:
            setup.latency = self.latency_model(model, setup, batches[0],
                                               cache_dir)
        if self.budget < 1:  # before any curve is measured
            self._check_budget(setup)
        if self.latency_budget is not None:
            self._check_latency_cap(setup)
        curves = self.channel_curves(model, setup, cache_dir)
        levels, dp_budget, separable, weight = self.choose_levels(
            setup, curves)
        counts = self._keep_counts(setup, levels)
        keeps = {
            g.name: self._keep(g, order, counts[g.name])
            for g, order in zip(setup.groups, setup.orders)
        }
        for group in setup.groups:
            apply_channel_mask(group, keeps[group.name])
        total = math.fsum(self._dense_costs(setup).values())
        result = ChannelPruningResult(
            budget=self.budget,
            groups=self._group_allocations(setup, levels, curves),
            keeps=keeps,
            layer_costs=self._layer_costs(setup, counts),
            predicted_distortion=math.fsum(
                float(curves[g.name][k])
                for g, k in zip(setup.groups, levels)),
            measured_distortion=setup.measure(),
            unpruned_distortion=setup.unpruned,
            curves=curves,
            sparsities=self.sparsities,
            budget_by=self.budget_by,
            allocator_budget=dp_budget / total,
            separable_cost=separable / total,
            exclude=self.exclude,
            latency=setup.latency,
            latency_budget=self.latency_budget,
            latency_weight=weight)
        logger.info(
            f'kept {result.flops_after:,.0f} of {result.flops_before:,.0f} '
            f'FLOPs ({result.flops_kept:.4f}) and '
            f'{result.params_after:,.0f} of {result.params_before:,} '
            f'weights ({result.params_kept:.4f}); '
            + ('' if result.latency is None else
               f'{result.latency_after * 1e3:.4g} of '
               f'{result.latency_before * 1e3:.4g} ms of the layers\' time '
               f'({result.latency_kept:.4f}, modelled'
               + ('' if self.latency_budget is None else
                  f'; cap {self.latency_budget}, weight {weight:.4g}')
               + '); ') +
            f'asked {self.budget} of '
            f'the {self.budget_by}; distortion predicted '
            f'{result.predicted_distortion:.4g}, measured '
            f'{result.measured_distortion:.4g} (ratio '
            f'{result.additivity_ratio:.3f}); '
            f'{time.perf_counter() - start:.1f} s')
        return result
