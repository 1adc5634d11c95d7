"""Cost models: what a choice of levels costs, in one interface that the
budget search (:mod:`.budget_search`) takes.

A cost model gives the allocator per-unit tables (the cost of every level
of every unit, plus a constant) whose sum bounds the exact cost from above,
and the exact cost of a choice of levels. For unstructured weight pruning
the tables are exact; for channel pruning a layer between two groups costs
in proportion to the product of their kept shares, and the tables are the
separable bound of :mod:`rdprune_mm.channels.costs`.
"""
from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from ..channels import ChannelGroup, separable_costs, total_cost_after
from ..channels.latency import LatencyModel


class CostModel(metaclass=ABCMeta):
    """The cost of a choice of one level per unit.

    Attributes:
        unit: What is counted: ``'params'``, ``'flops'`` or ``'latency'``.
        exact_is_separable: Whether :meth:`exact` equals the sum of the
            :meth:`separable` tables (then one allocator solve is optimal).
    """

    unit: str = 'params'
    exact_is_separable: bool = False

    @property
    @abstractmethod
    def total(self) -> float:
        """The cost with nothing pruned."""

    @abstractmethod
    def separable(self) -> Tuple[List[np.ndarray], float]:
        """Per-unit tables (cost at every level) and a constant; their sum
        is at least :meth:`exact` for every choice of levels."""

    @abstractmethod
    def exact(self, levels: Sequence[int]) -> float:
        """The cost of ``levels``."""

    @abstractmethod
    def cheapest_levels(self) -> Tuple[int, ...]:
        """The levels that prune the most of every unit."""


class TableCost(CostModel):
    """Exact per-unit tables, as for unstructured weight pruning.

    Args:
        unit: What is counted.
        tables: Per unit, the cost kept at every level.
        total: The cost with nothing pruned.
    """

    exact_is_separable = True

    def __init__(self, unit: str, tables: List[np.ndarray],
                 total: float) -> None:
        self.unit = unit
        self.tables = tables
        self._total = float(total)

    @property
    def total(self) -> float:
        return self._total

    def separable(self) -> Tuple[List[np.ndarray], float]:
        return self.tables, 0.0

    def exact(self, levels: Sequence[int]) -> float:
        return math.fsum(float(t[k]) for t, k in zip(self.tables, levels))

    def cheapest_levels(self) -> Tuple[int, ...]:
        return tuple(int(np.argmin(t)) for t in self.tables)


class ChannelCost(CostModel):
    """Weights or FLOPs of the layers that channel groups touch.

    Args:
        unit: ``'params'`` or ``'flops'``.
        groups: The channel groups.
        counts: Per group, the channels kept at every level.
        dense: Unpruned cost per weight layer name.
    """

    def __init__(self, unit: str, groups: Sequence[ChannelGroup],
                 counts: Sequence[np.ndarray],
                 dense: Mapping[str, float]) -> None:
        self.unit = unit
        self.groups = groups
        self.counts = counts
        self.dense = dense
        self._separable = None

    @property
    def total(self) -> float:
        return math.fsum(self.dense.values())

    def keep_counts(self, levels: Sequence[int]) -> Dict[str, int]:
        """Channels every group keeps at ``levels``."""
        return {g.name: int(c[level])
                for g, c, level in zip(self.groups, self.counts, levels)}

    def separable(self) -> Tuple[List[np.ndarray], float]:
        if self._separable is None:
            self._separable = separable_costs(self.groups, self.counts,
                                              self.dense)
        return self._separable

    def exact(self, levels: Sequence[int]) -> float:
        return total_cost_after(self.groups, self.keep_counts(levels),
                                self.dense)

    def cheapest_levels(self) -> Tuple[int, ...]:
        return tuple(int(np.argmin(c)) for c in self.counts)


class LatencyCost(ChannelCost):
    """Modelled seconds per frame of the layers that channel groups touch
    (:class:`rdprune_mm.channels.latency.LatencyModel`).

    Args:
        latency: The fitted latency model.
        groups: The channel groups.
        counts: Per group, the channels kept at every level.
    """

    def __init__(self, latency: LatencyModel,
                 groups: Sequence[ChannelGroup],
                 counts: Sequence[np.ndarray]) -> None:
        super().__init__('latency', groups, counts, latency.dense)
        self.latency = latency

    def separable(self) -> Tuple[List[np.ndarray], float]:
        if self._separable is None:
            self._separable = self.latency.separable(self.groups,
                                                     self.counts)
        return self._separable

    def exact(self, levels: Sequence[int]) -> float:
        return self.latency.total_after(self.groups,
                                        self.keep_counts(levels))
