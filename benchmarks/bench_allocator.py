"""Time :func:`rdprune_mm.allocator.allocate` against a Lagrangian baseline.

``allocate`` solves small budgets with its dynamic program and larger ones
with the exact reduced Pareto search (:mod:`rdprune_mm.exact_allocator`),
falling back to the better of the rounded DP and the equal-slope pick where
that search gives up. On every synthetic problem the dynamic
program is compared, in the same run, with the equal-slope Lagrangian
search (:func:`lagrangian_allocate`): seconds per solve, total distortion
and total cost. Prints ratios; asserts nothing.

Usage:
    python3 benchmarks/bench_allocator.py [--layers 200] [--levels 101]
        [--resolution 10000] [--repeats 5] [--seed 0] [--iters 60]
"""
from __future__ import annotations

import argparse
import math
import time
import tracemalloc
from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike

from rdprune_mm.allocator import allocate

def lagrangian_allocate(distortions: Sequence[ArrayLike],
                        costs: Sequence[ArrayLike],
                        budget: float,
                        iters: int = 60,
                        span: float = 1e15) -> tuple[np.ndarray, float, float]:
    """Equal-slope baseline: bisect one multiplier shared by all layers.

    For a multiplier ``lam`` every layer independently takes the level
    ``argmin_k d[k] + lam * c[k]``. A larger ``lam`` favours cheaper levels,
    so the total cost does not grow with ``lam``. ``lam`` is bisected on a
    log scale between ``scale / span`` and ``scale * span``, with ``scale =
    max|d| / max(c)``, and the feasible pick of least total distortion seen
    is returned. Only levels on the lower convex hull of a layer's
    (cost, distortion) curve can be picked, so the result can be worse than
    the optimum of the multiple-choice knapsack.

    Args:
        distortions (Sequence[ArrayLike]): Per layer, the distortion of
            every level. All layers must have the same number of levels.
        costs (Sequence[ArrayLike]): Per layer, the remaining cost of every
            level, same shape as ``distortions``.
        budget (float): Largest allowed total remaining cost.
        iters (int): Number of bisection steps. Defaults to 60.
        span (float): Factor from ``scale`` to either end of the search
            range of ``lam``. Defaults to 1e15.

    Returns:
        tuple[np.ndarray, float, float]: The chosen level of every layer,
        the total distortion and the total cost.

    Raises:
        ValueError: If even the largest ``lam`` exceeds the budget.
    """
    dist = np.stack([np.asarray(d, dtype=np.float64) for d in distortions])
    cost = np.stack([np.asarray(c, dtype=np.float64) for c in costs])
    rows = np.arange(dist.shape[0])

    def pick(lam: float) -> tuple[np.ndarray, float, float]:
        levels = np.argmin(dist + lam * cost, axis=1)
        return (levels, math.fsum(dist[rows, levels]),
                math.fsum(cost[rows, levels]))

    scale = (np.abs(dist).max() or 1.0) / (cost.max() or 1.0)
    lo, hi = scale / span, scale * span
    best = pick(hi)
    if best[2] > budget:
        raise ValueError(f'budget {budget!r} is below the cheapest '
                         f'Lagrangian pick {best[2]!r}')
    for _ in range(iters):
        mid = math.sqrt(lo * hi)
        candidate = pick(mid)
        if candidate[2] <= budget:
            hi = mid
            if candidate[1] < best[1]:
                best = candidate
        else:
            lo = mid
    return best


def _problems(layers: int, levels: int, seed: int) -> dict:
    """Return named ``(costs, distortions, budget)`` problems.

    Level ``k`` keeps the share ``shares[k]`` (from 1 down to 0) of a layer
    of ``n_l`` parameters, so its cost is ``n_l * shares[k]``.
    """
    rng = np.random.default_rng(seed)
    shares = np.linspace(1.0, 0.0, levels)
    sizes = rng.integers(1_000, 100_000, size=layers)
    curves = [
        np.cumsum(np.sort(rng.random(levels))) * rng.random()
        for _ in range(layers)
    ]
    equal = np.full(layers, 10_000)
    half = 0.5 * float(sizes.sum())
    problems = {
        'float costs, 50% budget': ([shares * s for s in sizes], curves,
                                    half),
        'integer costs, 50% budget':
        ([np.round(shares * s) for s in sizes], curves, half),
        'every layer spans the budget': ([shares * s for s in equal], curves,
                                         float(equal[0])),
        'random tables, 50% budget':
        ([rng.random(levels) * s for s in sizes],
         [rng.random(levels) for _ in range(layers)], half),
    }
    # d = a * s**p in the pruned share s: convex for p >= 1.
    pruned = 1.0 - shares
    scales = rng.lognormal(0.0, 1.0, size=layers)
    powers = rng.uniform(1.0, 4.0, size=layers)
    power = [a * pruned**p for a, p in zip(scales, powers)]
    # Increasing, but with heavy-tailed random steps: not convex.
    jumpy = [
        np.concatenate(([0.0], np.cumsum(rng.exponential(size=levels - 1)**3)))
        * a for a in rng.lognormal(-4.0, 1.0, size=layers)
    ]
    kept = [shares * s for s in sizes]
    total = float(sizes.sum())
    problems.update({
        'power curves, 50% budget': (kept, power, 0.5 * total),
        'power curves, 30% budget': (kept, power, 0.3 * total),
        'power curves, 80% budget': (kept, power, 0.8 * total),
        'jumpy curves, 50% budget': (kept, jumpy, 0.5 * total),
        'jumpy curves, 30% budget': (kept, jumpy, 0.3 * total),
    })
    return problems


def single_weight_dp(distortions: Sequence[ArrayLike],
                     costs: Sequence[ArrayLike],
                     budget: float) -> tuple[float, float]:
    """The exact optimum for integer costs by a DP over every unit of the
    budget (one weight each), as a textbook multiple-choice knapsack does
    it: a value row of ``budget + 1`` floats and, per layer, a row of the
    chosen levels for the backtrack.

    Returns:
        tuple[float, float]: The least distortion and its total cost.
    """
    capacity = int(math.floor(budget))
    value = np.zeros(capacity + 1)
    choices = []
    for dist, cost in zip(distortions, costs):
        cost = np.asarray(cost, dtype=np.int64)
        new = np.full(capacity + 1, np.inf)
        pick = np.zeros(capacity + 1, dtype=np.int16)
        for level, (d, c) in enumerate(zip(dist, cost)):
            if c > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[c:] = value[:capacity + 1 - c] + d
            better = candidate < new
            new[better] = candidate[better]
            pick[better] = level
        choices.append(pick)
        value = new
    used = int(np.argmin(value))
    best = float(value[used])
    total = 0.0
    for cost, pick in zip(reversed(list(costs)), reversed(choices)):
        level = int(pick[used])
        used -= int(cost[level])
        total += float(cost[level])
    return best, total


def _peak_bytes(solve: Callable[[], object]) -> tuple[int, object]:
    """Peak bytes that ``solve`` allocates (tracemalloc sees numpy's
    buffers) and its result."""
    tracemalloc.start()
    try:
        result = solve()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def compare_with_single_weight_dp(layers: int, levels: int,
                                  seed: int) -> None:
    """``allocate`` against the exact DP at the resolution of single weights
    on integer weight counts small enough for that DP: time, peak memory
    and distortion."""
    rng = np.random.default_rng(seed)
    shares = np.linspace(1.0, 0.0, levels)
    sizes = rng.integers(100, 2_400, size=layers)
    costs = [np.floor(shares * n) for n in sizes]
    dists = [
        np.cumsum(np.sort(rng.random(levels))) * rng.random()
        for _ in range(layers)
    ]
    dists = [d - d[0] for d in dists]
    budget = float(int(0.5 * sizes.sum()))
    start = time.perf_counter()
    ours_bytes, ours = _peak_bytes(lambda: allocate(dists, costs, budget))
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    dp_bytes, (dp_dist, dp_cost) = _peak_bytes(
        lambda: single_weight_dp(dists, costs, budget))
    dp_s = time.perf_counter() - start
    print(f'\ninteger weight counts, {layers} layers x {levels} levels, '
          f'{int(budget):,} weights to keep: allocate against the DP over '
          'single weights')
    print(f'{"":16s} {"seconds":>8s} {"peak MiB":>9s} {"distortion":>12s} '
          f'{"cost/B":>7s}')
    print(f'{"allocate":16s} {ours_s:8.3f} {ours_bytes / 2**20:9.2f} '
          f'{ours.distortion:12.6f} {ours.cost / budget:7.4f}  (lower '
          f'bound {ours.lower_bound:.6f})')
    print(f'{"single-weight DP":16s} {dp_s:8.3f} {dp_bytes / 2**20:9.2f} '
          f'{dp_dist:12.6f} {dp_cost / budget:7.4f}')
    print(f'memory ratio {dp_bytes / max(ours_bytes, 1):.0f}x, distortion '
          f'allocate / DP {ours.distortion / dp_dist:.6f}')


def _median_time(solve: Callable[[], object],
                 repeats: int) -> tuple[float, object]:
    """Return the median seconds of ``repeats`` calls and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = solve()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def _ratio(num: float, den: float) -> float:
    """Return ``num / den``, or nan when ``den`` is 0."""
    return num / den if den else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--layers', type=int, default=200)
    parser.add_argument('--levels', type=int, default=101)
    parser.add_argument('--resolution', type=int, default=10_000)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--iters', type=int, default=60, help='Lagrangian bisection steps')
    parser.add_argument(
        '--single-weight-dp',
        action='store_true',
        help='also compare with the exact DP over single weights on '
        'integer weight counts of 100-2,400 per layer (slow)')
    args = parser.parse_args()
    print(f'{args.layers} layers x {args.levels} levels, DP resolution '
          f'{args.resolution}, Lagrangian {args.iters} bisection steps, '
          f'median of {args.repeats} solves')
    print('time ratio = allocate / Lagrangian seconds; distortion ratio = '
          'Lagrangian / allocate (>= 1: allocate is better)')
    print(f'{"problem":29s} {"alloc s":>7s} {"Lag s":>7s} {"t ratio":>8s} '
          f'{"alloc d":>10s} {"Lag dist":>10s} {"d ratio":>8s} '
          f'{"alloc c/B":>9s} {"Lag c/B":>7s} {"alloc MiB":>9s}')
    problems = _problems(args.layers, args.levels, args.seed)
    for name, (costs, dists, budget) in problems.items():
        dp_s, dp = _median_time(
            lambda: allocate(
                dists, costs, budget, resolution=args.resolution),
            args.repeats)
        lag_s, (_, lag_dist, lag_cost) = _median_time(
            lambda: lagrangian_allocate(
                dists, costs, budget, iters=args.iters), args.repeats)
        peak, _ = _peak_bytes(lambda: allocate(
            dists, costs, budget, resolution=args.resolution))
        print(f'{name:29s} {dp_s:7.4f} {lag_s:7.4f} '
              f'{_ratio(dp_s, lag_s):8.2f} {dp.distortion:10.4g} '
              f'{lag_dist:10.4g} {_ratio(lag_dist, dp.distortion):8.5f} '
              f'{dp.cost / budget:9.4f} {lag_cost / budget:7.4f} '
              f'{peak / 2**20:9.2f}')
    if args.single_weight_dp:
        compare_with_single_weight_dp(args.layers, args.levels, args.seed)


if __name__ == '__main__':
    main()
