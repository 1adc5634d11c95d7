"""What a pruning run gives: per-unit allocations, totals and the shares
kept (the report stage's input)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import torch
from mmengine.logging import MMLogger

from .errors import PruningInputError

if TYPE_CHECKING:
    from .channels.latency import LatencyModel

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
    compensation: Optional[dict] = None
    seconds: float = field(default=0.0, repr=False)

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

    def log(self) -> None:
        """One log line: what was kept, asked and how far the outputs
        moved."""
        MMLogger.get_current_instance().info(
            f'kept {self.params_after:,} of {self.params_before:,} '
            f'weights ({self.params_kept:.4f}) and '
            f'{self.flops_after:,.0f} of {self.flops_before:,.0f} FLOPs '
            f'({self.flops_kept:.4f}); asked {self.budget} of the '
            f'{self.budget_by}; '
            f'distortion predicted {self.predicted_distortion:.4g}, '
            f'measured {self.measured_distortion:.4g} '
            f'(ratio {self.additivity_ratio:.3f})')


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
    compensation: Optional[dict] = None
    seconds: float = field(default=0.0, repr=False)

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

    def log(self) -> None:
        """One log line: FLOPs, weights and modelled time kept, the
        budget and how far the outputs moved."""
        latency = ''
        if self.latency is not None:
            cap = ('' if self.latency_budget is None else
                   f'; cap {self.latency_budget}, weight '
                   f'{self.latency_weight:.4g}')
            latency = (f'{self.latency_after * 1e3:.4g} of '
                       f'{self.latency_before * 1e3:.4g} ms of the layers\' '
                       f'time ({self.latency_kept:.4f}, modelled{cap}); ')
        MMLogger.get_current_instance().info(
            f'kept {self.flops_after:,.0f} of {self.flops_before:,.0f} '
            f'FLOPs ({self.flops_kept:.4f}) and '
            f'{self.params_after:,.0f} of {self.params_before:,} '
            f'weights ({self.params_kept:.4f}); {latency}asked '
            f'{self.budget} of the {self.budget_by}; distortion predicted '
            f'{self.predicted_distortion:.4g}, measured '
            f'{self.measured_distortion:.4g} (ratio '
            f'{self.additivity_ratio:.3f}); {self.seconds:.1f} s')
