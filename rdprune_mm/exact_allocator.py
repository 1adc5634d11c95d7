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

Memory: the equal-slope search holds the distortions and costs as two
(layers, levels) tables and works through them a block of rows at a time;
the Pareto search keeps, of the layers already added, one back-pointer per
partial allocation (its index among that layer's candidates, in the
smallest integer type that holds it), and the cost, distortion and reduced
cost of the current partial allocations only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

#: Relative slack on the gap: sums in another order differ by rounding.
_GAP_RTOL = 1e-9
#: Entries of a scratch block: the (layers, levels) tables are worked on a
#: block of rows at a time, so that no temporary of their size is formed.
_SCRATCH_ENTRIES = 2048


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


def _masked(tables: Sequence[np.ndarray],
            allowed: Sequence[np.ndarray],
            fill: float,
            dtype: np.dtype = np.dtype(np.float64)) -> np.ndarray:
    """The tables as one (layers, levels) array of ``dtype``, ``fill`` where
    a level is not allowed or a layer has fewer levels."""
    out = np.full((len(tables), max(len(t) for t in tables)), fill, dtype)
    for row, (table, levels) in enumerate(zip(tables, allowed)):
        out[row, levels] = table[levels]
    return out


def _block_rows(num_levels: int) -> int:
    """Rows of a (layers, ``num_levels``) table handled at once, so that a
    scratch block holds about ``_SCRATCH_ENTRIES`` entries."""
    return max(1, _SCRATCH_ENTRIES // num_levels)


def _cost_layout(costs: Sequence[np.ndarray],
                 allowed: Sequence[np.ndarray]) -> tuple[float, np.dtype]:
    """The least positive difference between two allowed costs (of any
    layers, ``inf`` where all are equal) and the smallest type that holds
    every allowed cost exactly: an unsigned integer type below ``2**32``
    where all are whole numbers (weight counts), else float64.

    The allowed costs are sorted in one flat array and differenced block by
    block, so no more than one copy of them is held.
    """
    flat = np.empty(sum(len(a) for a in allowed))
    start = 0
    for table, levels in zip(costs, allowed):
        flat[start:start + len(levels)] = table[levels]
        start += len(levels)
    flat.sort()
    step = math.inf
    whole = True
    for start in range(0, flat.size, _SCRATCH_ENTRIES):
        block = flat[start:start + _SCRATCH_ENTRIES + 1]
        whole = whole and bool(np.all(np.rint(block) == block))
        diffs = np.diff(block)
        positive = diffs[diffs > 0]
        if positive.size:
            step = min(step, float(positive.min()))
    if whole and 0 <= flat[0] and flat[-1] < 2**32:
        return step, np.min_scalar_type(int(flat[-1]))
    return step, np.dtype(np.float64)


def lagrangian_bound(dists: Sequence[np.ndarray],
                     costs: Sequence[np.ndarray],
                     allowed: Sequence[np.ndarray],
                     budget: float,
                     iters: int = 80) -> LagrangianBound:
    """Equal-slope allocation and Lagrangian bound (step 1 above).

    Holds the distortions and costs as two (layers, levels) tables, the
    costs as unsigned integers where they are whole numbers (their float64
    products and differences are the same); the picks work through them a
    block of rows at a time in one small scratch array, so no other table
    of that size is formed.

    Args:
        dists: Per layer, the distortion of every level.
        costs: Per layer, the remaining cost of every level.
        allowed: Per layer, the allowed level indices.
        budget: Largest allowed total cost; the cheapest allowed levels
            must fit it.
        iters: Bisection steps of the multiplier.
    """
    step, cost_type = _cost_layout(costs, allowed)
    dist = _masked(dists, allowed, np.inf)
    cost = _masked(costs, allowed, 0, cost_type)
    num_layers, num_levels = dist.shape
    rows = np.arange(num_layers)
    block = _block_rows(num_levels)
    scratch = np.empty((block, num_levels))

    def pick(lam: float) -> tuple[np.ndarray, float, float]:
        """Each layer's level of least ``d + lam * c``, their total cost
        and the Lagrangian ``L(lam)``."""
        levels = np.empty(num_layers, dtype=np.intp)
        least = np.empty(num_layers)
        for start in range(0, num_layers, block):
            stop = min(start + block, num_layers)
            values = scratch[:stop - start]
            values[...] = cost[start:stop]
            values *= lam
            values += dist[start:stop]
            np.argmin(values, axis=1, out=levels[start:stop])
            least[start:stop] = values[rows[:stop - start], levels[start:stop]]
        total_cost = math.fsum(cost[rows, levels].tolist())
        bound = math.fsum(least.tolist()) - lam * budget
        return levels, total_cost, bound

    spread = (max(float(d[a].max()) for d, a in zip(dists, allowed)) -
              min(float(d[a].min()) for d, a in zip(dists, allowed))) or 1.0
    high = spread / (step if math.isfinite(step) and step > 0 else 1.0)
    best_levels, total_cost, best_bound = pick(high)
    while total_cost > budget:  # the multiplier that forces the budget
        high *= 4
        best_levels, total_cost, best_bound = pick(high)
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
    budget pays for, the largest distortion drop first (the first layer,
    then level, among equal drops), until none fits.

    The moves are scanned a block of rows at a time in two small scratch
    arrays.

    Args:
        dist: ``(layers, levels)`` distortions, ``inf`` where not allowed.
        cost: ``(layers, levels)`` costs, float or integer.
        levels: A feasible allocation.
        budget: Largest allowed total cost.

    Returns:
        list[int]: An allocation within ``budget`` whose distortion is no
        larger than that of ``levels``.
    """
    levels = list(levels)
    num_layers, num_levels = dist.shape
    rows = np.arange(num_layers)
    block = _block_rows(num_levels)
    extra_scratch = np.empty((block, num_levels))
    gain_scratch = np.empty((block, num_levels))
    while True:
        chosen_cost = cost[rows, levels].astype(np.float64)
        chosen_dist = dist[rows, levels]
        left = budget - math.fsum(chosen_cost.tolist())
        best_gain, best_move = -math.inf, (0, 0)
        for start in range(0, num_layers, block):
            stop = min(start + block, num_layers)
            extra = extra_scratch[:stop - start]
            gain = gain_scratch[:stop - start]
            # a ufunc buffers a copy of a broadcast operand, an assignment
            # broadcasts without one
            extra[...] = cost[start:stop]
            gain[...] = chosen_cost[start:stop, None]
            extra -= gain
            gain[...] = chosen_dist[start:stop, None]
            gain -= dist[start:stop]
            gain[~((extra <= left) & (gain > 0))] = -np.inf
            at = int(np.argmax(gain))
            if gain.flat[at] > best_gain:
                best_gain = float(gain.flat[at])
                best_move = divmod(start * num_levels + at, num_levels)
        if not math.isfinite(best_gain):
            return levels
        layer, level = best_move
        levels[layer] = level


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
    # per layer: the levels whose reduced cost fits the gap (one flat array,
    # layer ``l``'s from ``bounds[l]`` to ``bounds[l + 1]``), the least
    # ``d + lam c`` and the least cost among those levels
    kept, least, cheapest = [], [], []
    for d, c, a in zip(dists, costs, allowed):
        values = d[a] + lam * c[a]
        least.append(values.min())
        keep = values - least[-1] <= gap
        kept.append(a[keep])
        cheapest.append(c[a][keep].min())
    bounds = np.cumsum([0] + [len(k) for k in kept])
    kept = np.concatenate(kept)
    cheapest_after = np.concatenate(
        [np.cumsum(cheapest[::-1])[::-1][1:], [0.0]])

    state_cost = np.zeros(1)
    state_dist = np.zeros(1)
    state_reduced = np.zeros(1)
    # per layer, every state's index among that layer's candidates:
    # ``parent * len(levels) + choice``, in the smallest integer type
    history = []
    held = 0
    for index, (d, c) in enumerate(zip(dists, costs)):
        levels = kept[bounds[index]:bounds[index + 1]]
        cost, dist = c[levels], d[levels]
        reduced = dist + lam * cost - least[index]
        held += len(state_cost) * len(levels)
        if held > max_states:
            return None
        new_cost = (state_cost[:, None] + cost[None, :]).ravel()
        new_dist = (state_dist[:, None] + dist[None, :]).ravel()
        new_reduced = (state_reduced[:, None] + reduced[None, :]).ravel()
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
        history.append(survivors.astype(np.min_scalar_type(new_cost.size)))
    fits = np.flatnonzero(state_cost <= budget)
    if not len(fits):
        return list(lagrangian.levels)
    best = int(fits[np.argmin(state_dist[fits])])
    if state_dist[best] >= lagrangian.distortion:
        return list(lagrangian.levels)
    chosen = []
    for index in range(len(history) - 1, -1, -1):
        levels = kept[bounds[index]:bounds[index + 1]]
        best, choice = divmod(int(history[index][best]), len(levels))
        chosen.append(int(levels[choice]))
    return chosen[::-1]
