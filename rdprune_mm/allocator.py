"""Layer-wise budget allocation by dynamic programming.

Picks one pruning level per layer so that the summed distortion is minimal
while the summed remaining cost stays within a budget (a multiple-choice
knapsack). The module is free of torch so that it can be used and tested on
its own.

Discretization:
    For every layer the smallest allowed cost is subtracted from its costs
    and their sum from the budget, which leaves the shifted budget ``slack``.
    If every combination of allowed levels fits the budget, the per-layer
    best levels are returned directly. Otherwise the unit is ``1`` when all
    shifted costs are integers (within ``1e-9``) and ``floor(slack) <=
    resolution``, and ``slack / resolution`` otherwise. Costs are rounded up
    to units (``ceil(cost / unit - 1e-9)``) and the budget down
    (``floor(slack)`` units for unit ``1``, ``resolution`` units otherwise),
    so the result is the exact optimum of this discretized problem and, for
    integer costs with unit ``1``, of the original problem. Where the unit is
    not ``1``, the exact reduced Pareto search of
    :mod:`rdprune_mm.exact_allocator` solves the original problem instead;
    where that search gives up (too many partial allocations), the
    equal-slope (Lagrangian) allocation with its unused budget spent is
    returned when the Lagrangian bound proves it within 0.1 % of the
    optimum, else the better of it and the discretized optimum, so the
    result is never worse than the equal-slope pick. ``Allocation.
    lower_bound`` says how far from the optimum the result can be. The real total cost
    of the result is checked against the budget and never exceeds it.

Ties:
    Among allocations of equal distortion the one with the smallest total
    cost (in units, or real per layer when every combination fits) is
    returned; remaining ties go to the lowest level index, decided from the
    last layer backwards.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .exact_allocator import lagrangian_bound, pareto_search

__all__ = ['Allocation', 'InfeasibleBudgetError', 'allocate']

_INT_ATOL = 1e-9
_CEIL_EPS = 1e-9
_KEEP_RTOL = 1e-9
#: A Lagrangian pick this close to its bound (relative) is kept as it is.
_CERTIFIED_RTOL = 1e-3


@dataclass(frozen=True)
class Allocation:
    """Result of :func:`allocate`.

    Attributes:
        levels (tuple[int, ...]): Chosen level index of every layer.
        distortion (float): Sum of the chosen distortions.
        cost (float): Sum of the chosen remaining costs.
        budget (float): Budget the allocation was solved for.
        lower_bound (float): No allocation within the budget has less
            distortion: equal to ``distortion`` where the optimum is proven,
            the Lagrangian bound where the exact search gave up.
    """

    levels: tuple[int, ...]
    distortion: float
    cost: float
    budget: float
    lower_bound: float = math.nan


class InfeasibleBudgetError(ValueError):
    """Raised when no choice of allowed levels fits the budget.

    Args:
        budget (float): The requested budget.
        min_budget (float): Smallest budget the level bounds allow.
    """

    def __init__(self, budget: float, min_budget: float) -> None:
        self.budget = budget
        self.min_budget = min_budget
        super().__init__(
            f'budget {budget!r} is below {min_budget!r}, the smallest total '
            'cost that min_keep and fixed_levels allow; raise the budget to '
            f'at least {min_budget!r} or relax min_keep / fixed_levels')

    def __reduce__(self) -> tuple:
        return type(self), (self.budget, self.min_budget)


def allocate(distortions: Sequence[ArrayLike],
             costs: Sequence[ArrayLike],
             budget: float,
             *,
             min_keep: float | Sequence[float] | None = None,
             fixed_levels: Mapping[int, int] | None = None,
             resolution: int = 10_000) -> Allocation:
    """Choose one level per layer minimizing distortion within a budget.

    See the module docstring for the discretization and tie-breaking rules.

    Args:
        distortions (Sequence[ArrayLike]): Per layer, a 1-D array whose
            entry ``k`` is the distortion of pruning the layer at level ``k``.
        costs (Sequence[ArrayLike]): Per layer, a 1-D array of the same
            length whose entry ``k`` is the cost remaining at level ``k``.
        budget (float): Largest allowed total remaining cost.
        min_keep (float | Sequence[float], optional): Smallest kept share,
            for all layers or per layer: level ``k`` of layer ``l`` is
            allowed only if ``costs[l][k] >= min_keep * max(costs[l])``.
            Defaults to None (no bound).
        fixed_levels (Mapping[int, int], optional): Layer index to the level
            that layer must take. Defaults to None.
        resolution (int): Number of budget units when the costs are not
            integers or the budget spans more units. Defaults to 10000.

    Returns:
        Allocation: The chosen levels with their distortion and cost.

    Raises:
        InfeasibleBudgetError: If the cheapest allowed levels exceed the
            budget.
        ValueError: If an argument is malformed.
    """
    dists, costs_ = _check_tables(distortions, costs)
    budget = _check_budget(budget)
    resolution = _check_resolution(resolution)
    allowed = _allowed_levels(costs_, min_keep, fixed_levels)

    bases = [float(c[a].min()) for c, a in zip(costs_, allowed)]
    min_total = math.fsum(bases)
    if min_total > budget:
        raise InfeasibleBudgetError(budget, min_total)
    cheapest = [_best(d, c, a[c[a] == b]) for d, c, a, b in zip(
        dists, costs_, allowed, bases)]
    bound = None  # proven optimal unless the exact search gives up
    if math.fsum(float(c[a].max()) for c, a in zip(costs_, allowed)) <= budget:
        levels = [_best(d, c, a) for d, c, a in zip(dists, costs_, allowed)]
    elif _unit_is_exact(costs_, allowed, bases, budget - min_total,
                        resolution):
        levels = _solve(dists, costs_, allowed, bases, budget - min_total,
                        resolution, budget, cheapest)
    else:
        levels, bound = _solve_exact_or_best(dists, costs_, allowed, bases,
                                             budget, resolution, cheapest)
    total = math.fsum(float(c[k]) for c, k in zip(costs_, levels))
    if total > budget:
        raise RuntimeError(f'allocation cost {total!r} exceeds the budget '
                           f'{budget!r}; this is a bug in allocate')
    distortion = math.fsum(float(d[k]) for d, k in zip(dists, levels))
    return Allocation(
        levels=tuple(levels),
        distortion=distortion,
        cost=total,
        budget=budget,
        lower_bound=distortion if bound is None else min(bound, distortion))


def _check_tables(
    distortions: Sequence[ArrayLike], costs: Sequence[ArrayLike]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Convert and validate the per-layer tables."""
    distortions, costs = list(distortions), list(costs)
    if not distortions:
        raise ValueError('distortions is empty; give at least one layer')
    if len(distortions) != len(costs):
        raise ValueError(f'got {len(distortions)} distortion tables but '
                         f'{len(costs)} cost tables; give one per layer')
    dists, costs_ = [], []
    for layer, (d, c) in enumerate(zip(distortions, costs)):
        d = _as_table(d, layer, 'distortions')
        c = _as_table(c, layer, 'costs')
        if d.shape != c.shape:
            raise ValueError(f'layer {layer} has {d.size} distortions but '
                             f'{c.size} costs; give one of each per level')
        if (c < 0).any():
            raise ValueError(f'layer {layer} has a negative cost; costs are '
                             'remaining amounts and must be >= 0')
        dists.append(d)
        costs_.append(c)
    return dists, costs_


def _as_table(values: ArrayLike, layer: int, name: str) -> np.ndarray:
    """Return ``values`` as a finite, non-empty 1-D float64 array."""
    try:
        table = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f'{name} of layer {layer} is not numeric: {err}') from None
    if table.ndim != 1 or table.size == 0:
        raise ValueError(f'{name} of layer {layer} must be a non-empty 1-D '
                         f'array, got shape {table.shape}')
    if not np.isfinite(table).all():
        raise ValueError(f'{name} of layer {layer} contains NaN or inf')
    return table


def _check_budget(budget: float) -> float:
    """Return ``budget`` as a float after checking it is finite and > 0."""
    try:
        value = float(budget)
    except (TypeError, ValueError):
        raise ValueError(
            f'budget must be a number, got {budget!r}') from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f'budget must be finite and > 0, got {budget!r}')
    return value


def _check_resolution(resolution: int) -> int:
    """Return ``resolution`` after checking it is a positive integer."""
    try:
        value = operator.index(resolution)
    except TypeError:
        raise ValueError(
            f'resolution must be an integer, got {resolution!r}') from None
    if value < 1:
        raise ValueError(f'resolution must be >= 1, got {value}')
    return value


def _allowed_levels(
        costs: list[np.ndarray], min_keep: float | Sequence[float] | None,
        fixed_levels: Mapping[int, int] | None) -> list[np.ndarray]:
    """Return, per layer, the sorted indices of the allowed levels; layers
    of the same size with every level allowed share one index array."""
    num_layers = len(costs)
    keeps = _check_min_keep(min_keep, num_layers)
    every_level: dict[int, np.ndarray] = {}
    allowed = []
    for c, keep in zip(costs, keeps):
        threshold = keep * float(c.max()) * (1 - _KEEP_RTOL)
        levels = np.flatnonzero(c >= threshold)
        if levels.size == c.size:
            levels = every_level.setdefault(c.size, levels)
        allowed.append(levels)
    for layer, level in (fixed_levels or {}).items():
        try:
            layer, level = operator.index(layer), operator.index(level)
        except TypeError:
            raise ValueError('fixed_levels must map integer layer indices '
                             f'to integer levels, got {layer!r}: '
                             f'{level!r}') from None
        if not 0 <= layer < num_layers:
            raise ValueError(f'fixed_levels names layer {layer}, but there '
                             f'are {num_layers} layers')
        if not 0 <= level < costs[layer].size:
            raise ValueError(f'fixed level {level} of layer {layer} is out '
                             f'of range; the layer has {costs[layer].size} '
                             'levels')
        if level not in allowed[layer]:
            raise ValueError(f'fixed level {level} of layer {layer} keeps '
                             'less than min_keep allows; lower min_keep for '
                             'this layer or fix another level')
        allowed[layer] = np.array([level])
    return allowed


def _check_min_keep(min_keep: float | Sequence[float] | None,
                    num_layers: int) -> list[float]:
    """Return one validated minimum kept share per layer."""
    if min_keep is None:
        return [0.0] * num_layers
    if np.ndim(min_keep) == 0:
        keeps = [min_keep] * num_layers
    else:
        keeps = list(min_keep)
        if len(keeps) != num_layers:
            raise ValueError(f'min_keep has {len(keeps)} entries but there '
                             f'are {num_layers} layers')
    checked = []
    for layer, keep in enumerate(keeps):
        try:
            keep = float(keep)
        except (TypeError, ValueError):
            raise ValueError(f'min_keep of layer {layer} must be a number, '
                             f'got {keep!r}') from None
        if not 0 <= keep <= 1:
            raise ValueError(f'min_keep of layer {layer} must lie in [0, 1], '
                             f'got {keep!r}')
        checked.append(keep)
    return checked


def _best(dist: np.ndarray, cost: np.ndarray, levels: np.ndarray) -> int:
    """Return the level of least distortion, then cost, then index."""
    order = np.lexsort((levels, cost[levels], dist[levels]))
    return int(levels[order[0]])


def _unit_is_exact(costs: list[np.ndarray], allowed: list[np.ndarray],
                   bases: list[float], slack: float, resolution: int) -> bool:
    """Whether the DP's budget unit is one of integer costs (then its
    discretized problem is the original one)."""
    return slack < resolution + 1 and all(
        np.allclose(c[a] - b, np.rint(c[a] - b), rtol=0, atol=_INT_ATOL)
        for c, a, b in zip(costs, allowed, bases))


def _solve_exact_or_best(dists: list[np.ndarray], costs: list[np.ndarray],
                         allowed: list[np.ndarray], bases: list[float],
                         budget: float, resolution: int,
                         cheapest: list[int]) -> tuple[list[int],
                                                       float | None]:
    """The exact optimum by the reduced Pareto search
    (:mod:`rdprune_mm.exact_allocator`); where it gives up (too many
    states), the better of the discretized DP and the equal-slope
    (Lagrangian) allocation with its unused budget spent, and the
    Lagrangian lower bound (``None`` when the optimum is proven)."""
    lagrangian = lagrangian_bound(dists, costs, allowed, budget)
    exact = pareto_search(dists, costs, allowed, budget, lagrangian,
                          max_states=_state_cap(len(costs), resolution))
    if exact is not None:
        return exact, None
    incumbent = lagrangian.levels
    gap = lagrangian.distortion - lagrangian.bound
    if gap <= _CERTIFIED_RTOL * abs(lagrangian.distortion):
        # within 0.1 % of the optimum, proven: the rounded DP, whose
        # rounding alone leaves up to 2 % of the budget unused, cannot
        # gain more
        return list(incumbent), lagrangian.bound
    levels = _solve(dists, costs, allowed, bases, budget - sum(bases),
                    resolution, budget, cheapest)
    if _total(dists, incumbent) < _total(dists, levels):
        return list(incumbent), lagrangian.bound
    return levels, lagrangian.bound


def _state_cap(num_layers: int, resolution: int) -> int:
    """Partial allocations the Pareto search may form before it gives up:
    a fifth of the entries of the discretized DP's tables (``num_layers``
    tables of ``resolution + 1`` floats), at least 100,000, so that giving
    up costs about as much as the DP."""
    return max(100_000, num_layers * (resolution + 1) // 5)


def _total(dists: list[np.ndarray], levels: Sequence[int]) -> float:
    return math.fsum(float(d[k]) for d, k in zip(dists, levels))


def _solve(dists: list[np.ndarray], costs: list[np.ndarray],
           allowed: list[np.ndarray], bases: list[float], slack: float,
           resolution: int, budget: float, cheapest: list[int]) -> list[int]:
    """Solve the discretized problem when not every combination fits."""
    shifted = [c[a] - b for c, a, b in zip(costs, allowed, bases)]
    integral = all(
        np.allclose(s, np.rint(s), rtol=0, atol=_INT_ATOL) for s in shifted)
    if integral and slack < resolution + 1:
        capacity = int(math.floor(slack))
        units = [np.rint(s) for s in shifted]
    else:
        capacity = resolution
        unit = slack / resolution if slack > 0 else 1.0
        units = [
            np.ceil(np.minimum(s / unit, capacity + 1) - _CEIL_EPS)
            for s in shifted
        ]
    layers = [
        _pareto(u.astype(np.int64), d[a], a)
        for u, d, a in zip(units, dists, allowed)
    ]
    tables = _forward(layers, capacity)
    final = tables[-1]
    reach = np.flatnonzero(np.isfinite(final))
    for r in reach[np.lexsort((reach, final[reach]))]:
        levels = _backtrack(layers, tables, int(r))
        if math.fsum(float(c[k]) for c, k in zip(costs, levels)) <= budget:
            return levels
    return cheapest


def _pareto(units: np.ndarray, dist: np.ndarray,
            levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop levels that another level beats on units and distortion.

    Returns the surviving units, distortions and level indices sorted by
    level index. A dropped level cannot appear in the returned optimum under
    the documented tie-breaking.
    """
    order = np.lexsort((levels, dist, units))
    sorted_dist = dist[order]
    best_before = np.minimum.accumulate(
        np.concatenate(([np.inf], sorted_dist[:-1])))
    keep = np.sort(order[sorted_dist < best_before])
    return units[keep], dist[keep], levels[keep]


def _forward(layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
             capacity: int) -> list[np.ndarray]:
    """Return, per layer, the least distortion for each exact unit total.

    Entry ``r`` of the ``l``-th table is the least distortion of layers
    ``0..l`` whose units sum to exactly ``r`` (inf if none). Tables stop at
    the largest reachable total.
    """
    value = np.zeros(1)
    buffer = np.empty(capacity + 1)
    tables = []
    for units, dist, _ in layers:
        fits = units <= capacity
        units, dist = units[fits], dist[fits]
        top = min(capacity, value.size - 1 + int(units.max()))
        new = np.full(top + 1, np.inf)
        for c, d in zip(units.tolist(), dist.tolist()):
            n = min(value.size, top + 1 - c)
            window = new[c:c + n]
            np.minimum(window, np.add(value[:n], d, out=buffer[:n]),
                       out=window)
        tables.append(new)
        value = new
    return tables


def _backtrack(layers: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
               tables: list[np.ndarray], total: int) -> list[int]:
    """Recover the levels behind entry ``total`` of the last table."""
    levels = []
    for index in range(len(layers) - 1, -1, -1):
        units, dist, ids = layers[index]
        prev = tables[index - 1] if index else np.zeros(1)
        target = tables[index][total]
        rest = total - units
        ok = (rest >= 0) & (rest < prev.size)
        sums = np.full(units.size, np.inf)
        sums[ok] = prev[rest[ok]] + dist[ok]
        pick = int(np.flatnonzero(ok & (sums == target))[0])
        levels.append(int(ids[pick]))
        total = int(rest[pick])
    return levels[::-1]
