"""The exact multiple-choice knapsack behind :func:`rdprune_mm.allocator.
allocate` when its rounded dynamic program would not be exact.

1. **Equal slope** (:func:`lagrangian_bound`): for a multiplier ``lam`` every
   layer takes ``argmin_k d[k] + lam * c[k]``; ``lam`` is bisected. The
   feasible pick of least distortion is an incumbent ``U``, and for every
   ``lam >= 0`` the Lagrangian ``L(lam) = sum_l min_k (d + lam c) - lam B``
   is a lower bound of the optimum. The incumbent then spends the budget
   it leaves unused (:func:`spend_leftover`), which closes most of the
   distance to the bound.
2. **Reduction**: with the reduced costs ``r_lk = d_lk + lam c_lk - min_k
   (d_lk + lam c_lk) >= 0`` at the ``lam`` of the best bound, every
   allocation within the budget that beats ``U`` has ``sum_l r_l < U -
   L(lam)``: levels with a larger reduced cost cannot be part of it.
3. **Pareto search** (:func:`pareto_search`): the layers are added one by
   one to a list of partial allocations, keeping only those that no other
   beats in both cost and distortion, whose reduced-cost sum stays below the
   gap and whose cost leaves room for the cheapest levels of the layers
   still to come. The least distortion at the end is the optimum, with the
   real costs: no rounding, so integer weight counts are solved exactly.

The search gives up (returns None) once it has formed ``max_states``
partial allocations in all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

#: Relative slack on the gap: sums in another order differ by rounding.
_GAP_RTOL = 1e-9


@dataclass
class LagrangianBound:
    """What the equal-slope search gives.

    Attributes:
        levels: The feasible pick of least distortion (the incumbent).
        distortion: Its total distortion.
        bound: The best Lagrangian lower bound of the optimum.
        multiplier: The multiplier of that bound.
    """

    levels: List[int]
    distortion: float
    bound: float
    multiplier: float


def _masked(tables: Sequence[np.ndarray], allowed: Sequence[np.ndarray],
            fill: float) -> np.ndarray:
    """The tables as one (layers, levels) array, ``fill`` where a level is
    not allowed or a layer has fewer levels."""
    out = np.full((len(tables), max(len(t) for t in tables)), fill)
    for row, (table, levels) in enumerate(zip(tables, allowed)):
        out[row, levels] = table[levels]
    return out


def lagrangian_bound(dists: Sequence[np.ndarray],
                     costs: Sequence[np.ndarray],
                     allowed: Sequence[np.ndarray],
                     budget: float,
                     iters: int = 80) -> LagrangianBound:
    """Equal-slope allocation and Lagrangian bound (step 1 above).

    Args:
        dists: Per layer, the distortion of every level.
        costs: Per layer, the remaining cost of every level.
        allowed: Per layer, the allowed level indices.
        budget: Largest allowed total cost; the cheapest allowed levels
            must fit it.
        iters: Bisection steps of the multiplier.
    """
    dist = _masked(dists, allowed, np.inf)
    cost = _masked(costs, allowed, 0.0)
    rows = np.arange(len(dists))

    def pick(lam: float):
        values = dist + lam * cost
        levels = np.argmin(values, axis=1)
        total_cost = math.fsum(cost[rows, levels].tolist())
        bound = math.fsum(values[rows, levels].tolist()) - lam * budget
        return levels, total_cost, bound

    finite = np.isfinite(dist)
    spread = float(np.ptp(dist[finite])) or 1.0
    step = float(np.min(np.diff(np.unique(cost[finite])), initial=np.inf))
    high = spread / (step if math.isfinite(step) and step > 0 else 1.0)
    while pick(high)[1] > budget:  # the multiplier that forces the budget
        high *= 4
    best_levels, _, best_bound = pick(high)
    best_lam = high
    best_value = math.fsum(dist[rows, best_levels].tolist())
    low, value_low = 0.0, pick(0.0)
    if value_low[1] <= budget:  # every layer's best level fits
        levels = value_low[0]
        return LagrangianBound(levels.tolist(),
                               math.fsum(dist[rows, levels].tolist()),
                               value_low[2], 0.0)
    if value_low[2] > best_bound:
        best_bound, best_lam = value_low[2], 0.0
    for _ in range(iters):
        middle = 0.5 * (low + high)
        levels, total_cost, bound = pick(middle)
        if bound > best_bound:
            best_bound, best_lam = bound, middle
        if total_cost <= budget:
            high = middle
            value = math.fsum(dist[rows, levels].tolist())
            if value < best_value:
                best_levels, best_value = levels, value
        else:
            low = middle
    levels = spend_leftover(dist, cost, best_levels.tolist(), budget)
    return LagrangianBound(levels, math.fsum(dist[rows, levels].tolist()),
                           best_bound, best_lam)


def spend_leftover(dist: np.ndarray, cost: np.ndarray, levels: List[int],
                   budget: float) -> List[int]:
    """Greedily move layers to levels of less distortion that the unused
    budget pays for, the largest distortion drop first, until none fits.

    Args:
        dist: ``(layers, levels)`` distortions, ``inf`` where not allowed.
        cost: ``(layers, levels)`` costs.
        levels: A feasible allocation.
        budget: Largest allowed total cost.

    Returns:
        list[int]: An allocation within ``budget`` whose distortion is no
        larger than that of ``levels``.
    """
    levels = list(levels)
    rows = np.arange(len(levels))
    left = budget - math.fsum(cost[rows, levels].tolist())
    while True:
        extra = cost - cost[rows, levels][:, None]
        gain = dist[rows, levels][:, None] - dist
        gain[~((extra <= left) & (gain > 0))] = -np.inf
        layer, level = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if not np.isfinite(gain[layer, level]):
            return levels
        levels[layer] = int(level)
        left = budget - math.fsum(cost[rows, levels].tolist())


def pareto_search(dists: Sequence[np.ndarray],
                  costs: Sequence[np.ndarray],
                  allowed: Sequence[np.ndarray],
                  budget: float,
                  lagrangian: LagrangianBound,
                  max_states: int = 2_000_000) -> Optional[List[int]]:
    """The exact optimum (steps 2 and 3 above), or None once
    ``max_states`` partial allocations have been formed.

    Returns:
        list[int] | None: Levels of least distortion within ``budget`` (the
        incumbent's where nothing beats it).
    """
    lam = lagrangian.multiplier
    scale = max(1.0, abs(lagrangian.distortion), abs(lagrangian.bound))
    gap = lagrangian.distortion - lagrangian.bound + _GAP_RTOL * scale
    layers = []
    for d, c, a in zip(dists, costs, allowed):
        values = d[a] + lam * c[a]
        reduced = values - values.min()
        keep = reduced <= gap
        layers.append((a[keep], c[a][keep], d[a][keep], reduced[keep]))
    cheapest_after = np.concatenate(
        [np.cumsum([c.min() for _, c, _, _ in layers][::-1])[::-1][1:],
         [0.0]])

    state_cost = np.zeros(1)
    state_dist = np.zeros(1)
    state_reduced = np.zeros(1)
    history = []  # per layer: (parent index, level) of every state
    held = 0
    for index, (levels, cost, dist, reduced) in enumerate(layers):
        held += len(state_cost) * len(levels)
        if held > max_states:
            return None
        new_cost = (state_cost[:, None] + cost[None, :]).ravel()
        new_dist = (state_dist[:, None] + dist[None, :]).ravel()
        new_reduced = (state_reduced[:, None] + reduced[None, :]).ravel()
        parent = np.repeat(np.arange(len(state_cost)), len(levels))
        level = np.tile(levels, len(state_cost))
        room = budget - cheapest_after[index]
        ok = (new_cost <= room * (1 + 1e-15)) & (new_reduced <= gap)
        order = np.lexsort((new_dist[ok], new_cost[ok]))
        candidates = np.flatnonzero(ok)[order]
        dist_sorted = new_dist[candidates]
        best_before = np.minimum.accumulate(
            np.concatenate(([np.inf], dist_sorted[:-1])))
        survivors = candidates[dist_sorted < best_before]
        state_cost = new_cost[survivors]
        state_dist = new_dist[survivors]
        state_reduced = new_reduced[survivors]
        history.append((parent[survivors], level[survivors]))
    fits = np.flatnonzero(state_cost <= budget)
    if not len(fits):
        return list(lagrangian.levels)
    best = int(fits[np.argmin(state_dist[fits])])
    if state_dist[best] >= lagrangian.distortion:
        return list(lagrangian.levels)
    chosen = []
    for parents, levels in reversed(history):
        chosen.append(int(levels[best]))
        best = int(parents[best])
    return chosen[::-1]
