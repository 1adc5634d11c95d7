from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest

from rdprune_mm.allocator import Allocation, InfeasibleBudgetError, allocate
from rdprune_mm.exact_allocator import spend_leftover


def _allowed(costs, min_keep=None, fixed_levels=None):
    keeps = [0.0] * len(costs) if min_keep is None else (
        [min_keep] * len(costs) if np.ndim(min_keep) == 0 else min_keep)
    allowed = [[
        k for k in range(len(c)) if c[k] >= keep * max(c) * (1 - 1e-9)
    ] for c, keep in zip(costs, keeps)]
    for layer, level in (fixed_levels or {}).items():
        allowed[layer] = [level]
    return allowed


def _brute(dists, weights, limit, allowed):
    """Least total distortion with summed weights <= limit, and its cost."""
    best = math.inf
    for combo in itertools.product(*allowed):
        if math.fsum(w[k] for w, k in zip(weights, combo)) <= limit:
            best = min(best, math.fsum(d[k] for d, k in zip(dists, combo)))
    return best


def _discrete_optimum(dists, costs, budget, resolution, allowed):
    """Brute-force optimum of the documented discretized problem."""
    bases = [min(c[k] for k in a) for c, a in zip(costs, allowed)]
    if math.fsum(max(c[k] for k in a)
                 for c, a in zip(costs, allowed)) <= budget:
        return _brute(dists, costs, budget, allowed)
    slack = budget - math.fsum(bases)
    shifted = [np.asarray(c, dtype=float) - b for c, b in zip(costs, bases)]
    integral = all(
        np.allclose(s[a], np.rint(s[a]), rtol=0, atol=1e-9)
        for s, a in zip(shifted, allowed))
    if integral and math.floor(slack) <= resolution:
        units = [np.rint(s) for s in shifted]
        capacity = math.floor(slack)
    else:
        unit = slack / resolution
        units = [np.ceil(s / unit - 1e-9) for s in shifted]
        capacity = resolution
    return _brute(dists, units, capacity, allowed)


def _instance(rng, integer):
    num_layers = int(rng.integers(2, 6))
    sizes = rng.integers(2, 7, size=num_layers)
    if integer:
        costs = [rng.integers(0, 25, size=n).astype(float) for n in sizes]
    else:
        costs = [rng.random(n) * rng.uniform(0.5, 50) for n in sizes]
    dists = [rng.normal(size=n) for n in sizes]
    low = math.fsum(c.min() for c in costs)
    high = math.fsum(c.max() for c in costs)
    budget = max(rng.uniform(low, high * 1.05), 1e-3)
    if integer and rng.random() < 0.5:
        budget = float(max(math.floor(budget), 1))
    return dists, costs, max(budget, low)


def _check_result(result, dists, costs, budget, allowed):
    assert isinstance(result, Allocation)
    assert len(result.levels) == len(costs)
    assert all(k in a for k, a in zip(result.levels, allowed))
    assert result.cost <= budget
    assert result.budget == budget
    assert result.cost == pytest.approx(
        math.fsum(c[k] for c, k in zip(costs, result.levels)))
    assert result.distortion == pytest.approx(
        math.fsum(d[k] for d, k in zip(dists, result.levels)))


def test_integer_costs_match_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        dists, costs, budget = _instance(rng, integer=True)
        allowed = _allowed(costs)
        result = allocate(dists, costs, budget)
        _check_result(result, dists, costs, budget, allowed)
        assert np.isclose(result.distortion,
                          _brute(dists, costs, budget, allowed))


@pytest.mark.parametrize('integer', [False, True])
def test_exact_where_the_rounded_dp_is_not(integer):
    """With few budget units the rounded DP is not exact: the allocator is
    (brute force), and never worse than the rounded DP's optimum."""
    rng = np.random.default_rng(1 + integer)
    for _ in range(200):
        dists, costs, budget = _instance(rng, integer=integer)
        resolution = int(rng.integers(1, 40))
        allowed = _allowed(costs)
        result = allocate(dists, costs, budget, resolution=resolution)
        _check_result(result, dists, costs, budget, allowed)
        exact = _brute(dists, costs, budget, allowed)
        discrete = _discrete_optimum(dists, costs, budget, resolution,
                                     allowed)
        assert np.isclose(result.distortion, exact)
        assert result.distortion <= discrete + 1e-9


def test_bounds_match_restricted_brute_force():
    rng = np.random.default_rng(3)
    checked = 0
    while checked < 150:
        dists, costs, _ = _instance(rng, integer=True)
        num_layers = len(costs)
        if rng.random() < 0.5:
            min_keep = float(rng.uniform(0, 1))
        else:
            min_keep = rng.uniform(0, 1, size=num_layers).tolist()
        allowed = _allowed(costs, min_keep)
        fixed = {}
        for layer in rng.choice(num_layers, size=rng.integers(0, 3)):
            fixed[int(layer)] = int(rng.choice(allowed[layer]))
        allowed = _allowed(costs, min_keep, fixed)
        low = math.fsum(min(c[k] for k in a) for c, a in zip(costs, allowed))
        high = math.fsum(max(c[k] for k in a) for c, a in zip(costs, allowed))
        budget = max(float(rng.uniform(low, high)), low, 1.0)
        result = allocate(
            dists, costs, budget, min_keep=min_keep, fixed_levels=fixed)
        _check_result(result, dists, costs, budget, allowed)
        for layer, level in fixed.items():
            assert result.levels[layer] == level
        assert np.isclose(result.distortion,
                          _brute(dists, costs, budget, allowed))
        checked += 1


def test_ceil_tolerates_rounding_noise():
    step = 3 * 0.1
    assert step / 0.1 > 3
    result = allocate([[10, 0], [10, 0], [1, 0]], [[0, step], [0, 0.1],
                                                  [0, 5]],
                      0.4,
                      resolution=4)
    assert result.levels == (1, 1, 0)
    assert result.cost <= 0.4


def test_ties_prefer_cheaper_then_lower_level():
    costs = [[4.0, 2.0, 2.0, 0.0], [4.0, 3.0, 3.0, 1.0]]
    dists = [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    result = allocate(dists, costs, 5.0)
    assert result.levels == (3, 0)
    flat = allocate([[0.0, 0.0, 0.0]] * 2, [[3.0, 1.0, 1.0]] * 2, 5.0)
    assert flat.levels == (1, 1)
    crossed = allocate([[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [2.0, 0.0]],
                       2.0)
    assert crossed.levels == (0, 0)


def test_infeasible_budget_names_minimum():
    costs = [[10.0, 4.0, 0.0], [8.0, 6.0, 2.5]]
    dists = [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]
    with pytest.raises(InfeasibleBudgetError) as info:
        allocate(dists, costs, 2.0)
    assert isinstance(info.value, ValueError)
    assert info.value.min_budget == pytest.approx(2.5)
    assert '2.5' in str(info.value)
    assert 'budget' in str(info.value) and 'min_keep' in str(info.value)
    with pytest.raises(InfeasibleBudgetError) as info:
        allocate(dists, costs, 10.0, min_keep=0.5, fixed_levels={1: 0})
    assert info.value.min_budget == pytest.approx(18.0)
    assert '18' in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value)
    assert allocate(dists, costs, 2.5).levels == (2, 2)


_GOOD = dict(distortions=[[0.0, 1.0], [0.0, 2.0]],
             costs=[[2.0, 1.0], [2.0, 0.0]],
             budget=3.0)


@pytest.mark.parametrize('change, match', [
    (dict(distortions=[], costs=[]), 'empty'),
    (dict(distortions=[[0.0, 1.0]]), 'per layer'),
    (dict(costs=[[2.0, 1.0], [2.0]]), 'layer 1'),
    (dict(costs=[[2.0, -1.0], [2.0, 0.0]]), 'negative'),
    (dict(costs=[[2.0, np.nan], [2.0, 0.0]]), 'NaN'),
    (dict(distortions=[[0.0, np.inf], [0.0, 2.0]]), 'NaN or inf'),
    (dict(costs=[[], [2.0, 0.0]]), 'non-empty 1-D'),
    (dict(costs=[[[2.0, 1.0]], [2.0, 0.0]]), 'non-empty 1-D'),
    (dict(costs=[['a', 'b'], [2.0, 0.0]]), 'not numeric'),
    (dict(budget=0.0), 'budget'),
    (dict(budget=-1.0), 'budget'),
    (dict(budget=float('nan')), 'budget'),
    (dict(budget='lots'), 'budget'),
    (dict(fixed_levels={0: 2}), 'out of range'),
    (dict(fixed_levels={0: -1}), 'out of range'),
    (dict(fixed_levels={2: 0}), 'layer 2'),
    (dict(fixed_levels={0: 0.5}), 'integer'),
    (dict(fixed_levels={0: 1}, min_keep=0.9), 'min_keep'),
    (dict(min_keep=1.5), r'\[0, 1\]'),
    (dict(min_keep=-0.1), r'\[0, 1\]'),
    (dict(min_keep=float('nan')), r'\[0, 1\]'),
    (dict(min_keep=[0.5]), 'min_keep has 1'),
    (dict(resolution=0), 'resolution'),
    (dict(resolution=2.5), 'resolution'),
])
def test_bad_input_raises_value_error(change, match):
    kwargs = {**_GOOD, **change}
    with pytest.raises(ValueError, match=match):
        allocate(**kwargs)


def test_accepts_numpy_inputs_and_is_frozen():
    result = allocate([np.array([0.0, 1.0]), np.array([0.0, 2.0])],
                      (np.array([2, 1]), np.array([2, 0])),
                      np.float32(3.0),
                      fixed_levels={np.int64(0): np.int64(1)})
    assert result.levels == (1, 0)
    assert all(type(k) is int for k in result.levels)
    with pytest.raises(AttributeError):
        result.levels = (0, 0)


def test_large_instance_solves():
    rng = np.random.default_rng(4)
    sizes = rng.integers(1_000, 100_000, size=200)
    shares = np.linspace(1.0, 0.0, 101)
    costs = [shares * s for s in sizes]
    dists = [np.cumsum(np.sort(rng.random(101))) * rng.random() for _ in sizes]
    budget = 0.5 * float(sizes.sum())
    result = allocate(dists, costs, budget, min_keep=0.1)
    assert len(result.levels) == 200
    assert result.cost <= budget
    assert all(c[k] >= 0.1 * c.max() * (1 - 1e-9)
               for c, k in zip(costs, result.levels))
    assert allocate(dists, costs, budget, min_keep=0.1) == result
    assert math.fsum(c[55] for c in costs) <= budget
    assert result.distortion <= math.fsum(d[55] for d in dists) + 1e-9


def _pseudo_polynomial(dists, costs, budget):
    """Least distortion over integer costs: a DP over every unit of the
    budget (the reference the allocator must match exactly)."""
    capacity = int(budget)
    best = np.zeros(capacity + 1)  # least distortion within each budget
    for d, c in zip(dists, costs):
        new = np.full(capacity + 1, np.inf)
        for dk, ck in zip(d, c.astype(int)):
            if ck <= capacity:
                new[ck:] = np.minimum(new[ck:], best[:capacity + 1 - ck] + dk)
        best = new
    return best[capacity]


def test_integer_weight_counts_exact_beyond_the_resolution():
    rng = np.random.default_rng(11)
    for _ in range(20):
        layers = int(rng.integers(6, 12))
        sizes = rng.integers(200, 3000, size=layers)
        shares = np.linspace(1, 0, 21)
        costs = [np.floor(shares * n) for n in sizes]
        dists = [np.cumsum(np.sort(rng.random(21))) * rng.random()
                 for _ in range(layers)]
        dists = [d - d[0] for d in dists]
        budget = float(int(rng.uniform(0.2, 0.8) * sizes.sum()))
        result = allocate(dists, costs, budget, resolution=100)
        assert result.cost <= budget
        optimum = _pseudo_polynomial(dists, costs, budget)
        assert result.distortion == pytest.approx(optimum, abs=1e-12)
        assert result.lower_bound <= optimum + 1e-12


def _equal_slope(dists, costs, budget, iters=100):
    """The best feasible pick of ``argmin d + lam * c`` over a bisected
    multiplier (an independent equal-slope search)."""
    dist, cost = np.stack(dists), np.stack(costs)
    rows = np.arange(len(dists))
    low, high, best = 0.0, 1e12, math.inf
    for _ in range(iters):
        lam = 0.5 * (low + high)
        levels = np.argmin(dist + lam * cost, axis=1)
        if cost[rows, levels].sum() <= budget:
            high = lam
            best = min(best, float(dist[rows, levels].sum()))
        else:
            low = lam
    return best


@pytest.mark.parametrize('seed', range(3))
def test_never_worse_than_equal_slope_on_large_instances(seed):
    rng = np.random.default_rng(seed)
    layers, levels = 120, 51
    sizes = rng.integers(1_000, 2_400_000, size=layers)
    shares = np.linspace(1, 0, levels)
    costs = [np.floor(shares * n) for n in sizes]
    dists = [np.concatenate(([0.0], np.cumsum(
        rng.exponential(size=levels - 1)**3))) * a
        for a in rng.lognormal(-4.0, 1.0, size=layers)]
    budget = float(int(0.3 * sizes.sum()))
    result = allocate(dists, costs, budget)
    assert result.cost <= budget
    assert result.distortion <= _equal_slope(dists, costs, budget) + 1e-9
    assert result.lower_bound <= result.distortion


def test_unused_budget_is_spent():
    """Equal slope picks level 1 of both layers (cost 6 of 9); the budget
    left pays for layer 0's level 0, which a greedy step then takes."""
    dist = np.array([[0.0, 1.0, 10.0], [0.0, 5.0, 6.0]])
    cost = np.array([[5.0, 2.0, 0.0], [9.0, 4.0, 3.0]])
    assert spend_leftover(dist, cost, [1, 1], 9.0) == [0, 1]
    assert spend_leftover(dist, cost, [1, 1], 6.0) == [1, 1]


def test_spend_leftover_on_integer_costs_and_across_row_blocks():
    """Whole-number costs held as unsigned integers give the same moves as
    floats (a cheaper level does not wrap around), and among equal drops
    the first layer moves, also where the layers span several blocks of
    rows."""
    dist = np.array([[0.0, 2.0, 1.0]] * 3)
    cost = np.array([[7.0, 3.0, 0.0]] * 3)
    assert spend_leftover(dist, cost, [1, 1, 1], 9.0) == [2, 2, 0]
    assert spend_leftover(dist, cost.astype(np.uint8), [1, 1, 1],
                          9.0) == [2, 2, 0]
    layers = 5_000
    dist = np.array([[0.0, 3.0]] * layers)
    cost = np.array([[7.0, 0.0]] * layers)
    assert spend_leftover(dist, cost, [1] * layers,
                          7.0) == [0] + [1] * (layers - 1)
