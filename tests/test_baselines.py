"""Baseline allocations: budgets, brute-force references for global and
LAMP, the ERK and uniform rules, earlier rounds and floors."""
import math
import re

import numpy as np
import pytest
import torch

from rdprune_mm.baselines import (BASELINE_METHODS, baseline_keep_counts,
                                  baseline_masks, kept_shares, lamp_scores,
                                  prune_order)
from rdprune_mm.errors import PruningInputError
from rdprune_mm.masks import magnitude_order, mask_from_order

# conv2d (out, in, k, k), linear (out, in), spconv (out, k, k, k, in)
SHAPES = [(8, 4, 3, 3), (10, 20), (6, 3, 3, 3, 5)]
BUDGETS = [0.03, 0.3, 0.77]


def _weights(seed=0, shapes=SHAPES):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _flops_uses(seed=0):
    """Uses per weight: scalars for the dense layers, one count per kernel
    offset of the sparse one (corners rarely used, some never, the
    submanifold centre by every site)."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, 40, (27, ), generator=generator)
    offsets[:3] = 0
    offsets[13] = 200
    return [
        torch.tensor(35.0, dtype=torch.float64),
        torch.tensor(3.0, dtype=torch.float64),
        offsets.to(torch.float64).view(1, 3, 3, 3, 1)
    ]


def _random_costs(weights, seed=0):
    """An independent random cost for every weight."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.rand(w.shape, generator=generator, dtype=torch.float64) * 5
        for w in weights
    ]


COSTS = {
    'params': lambda weights: None,
    'flops': lambda weights: _flops_uses(),
    'random': _random_costs,
}


def _per_weight(weights, costs):
    if costs is None:
        return [torch.ones(w.shape, dtype=torch.float64) for w in weights]
    return [c.expand(w.shape) for w, c in zip(weights, costs)]


def _cost(weights, costs, masks):
    return sum(
        float((c * m).sum())
        for c, m in zip(_per_weight(weights, costs), masks))


def _total(weights, costs):
    return sum(float(c.sum()) for c in _per_weight(weights, costs))


def _top(weight, count):
    """Keep-mask of the ``count`` largest weights (the RD pruner's mask)."""
    return mask_from_order(
        magnitude_order(weight), weight.shape, weight.numel() - count)


def _top_cost(weights, costs, counts):
    return _cost(weights, costs,
                 [_top(w, min(k, w.numel())) for w, k in zip(weights, counts)])


def _fits(cost, limit):
    return cost <= limit * (1 + 1e-12)


@pytest.mark.parametrize('method', BASELINE_METHODS)
@pytest.mark.parametrize('cost_kind', sorted(COSTS))
def test_every_method_meets_the_budget(method, cost_kind):
    weights = _weights()
    costs = COSTS[cost_kind](weights)
    total = _total(weights, costs)
    for budget in BUDGETS:
        masks = baseline_masks(method, weights, budget, costs)
        kept = _cost(weights, costs, masks)
        assert _fits(kept, budget * total)
        # well used: more than half of the budget even at 3 %
        assert kept > 0.5 * budget * total
    masks = baseline_masks(method, weights, 1.0, costs)
    assert all(bool(m.all()) for m in masks)


@pytest.mark.parametrize('method', BASELINE_METHODS)
def test_masks_keep_the_largest_weights_of_every_layer(method):
    weights = _weights(1)
    counts = baseline_keep_counts(method, weights, 0.3, _flops_uses())
    masks = baseline_masks(method, weights, 0.3, _flops_uses())
    for weight, mask, count in zip(weights, masks, counts):
        assert int(mask.sum()) == count
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        kept, pruned = weight.abs()[mask], weight.abs()[~mask]
        if kept.numel() and pruned.numel():
            assert kept.min() >= pruned.max()
        assert torch.equal(mask, _top(weight, count))


def _uniform_step_up(weights, counts):
    """Counts at the next share where any layer gains a weight."""
    numels = [w.numel() for w in weights]
    share = min((k + 1) / n for k, n in zip(counts, numels) if k < n)
    return [min(n, math.floor(share * n + 1e-9)) for n in numels]


@pytest.mark.parametrize('cost_kind', sorted(COSTS))
def test_uniform_takes_the_largest_share_that_fits(cost_kind):
    weights = _weights(2)
    costs = COSTS[cost_kind](weights)
    total = _total(weights, costs)
    for budget in BUDGETS:
        counts = baseline_keep_counts('uniform', weights, budget, costs)
        shares = [k / w.numel() for k, w in zip(counts, weights)]
        ceilings = [(k + 1) / w.numel() for k, w in zip(counts, weights)]
        # one share s with floor(s * n_l) = k_l for every layer
        assert max(shares) < min(ceilings)
        assert not _fits(
            _top_cost(weights, costs, _uniform_step_up(weights, counts)),
            budget * total)


def _ranked_prefix(scores, costs, limit):
    """Brute force: (kept flags, next-ranked cost excess) of the longest
    run of the highest scores whose cost fits."""
    rank = np.argsort(-scores, kind='stable')
    cumulative = np.cumsum(costs[rank])
    length = int(np.sum(cumulative <= limit))
    kept = np.zeros(len(scores), dtype=bool)
    kept[rank[:length]] = True
    return kept, length, cumulative


def _brute_lamp(weight):
    """LAMP scores straight from the formula, one weight at a time."""
    flat = weight.flatten().double()
    return torch.stack([
        flat[i]**2 / (flat[flat.abs() >= flat[i].abs()]**2).sum()
        for i in range(flat.numel())
    ])


BRUTE_SCORES = {
    'global': lambda weight: weight.flatten().double().abs(),
    'lamp': _brute_lamp,
}


@pytest.mark.parametrize('method', sorted(BRUTE_SCORES))
@pytest.mark.parametrize('cost_kind', sorted(COSTS))
def test_global_and_lamp_match_a_brute_force_threshold(method, cost_kind):
    weights = _weights(3)
    costs = COSTS[cost_kind](weights)
    scores = torch.cat([BRUTE_SCORES[method](w) for w in weights]).numpy()
    flat_costs = torch.cat([c.flatten() for c in _per_weight(weights, costs)
                            ]).numpy()
    total = _total(weights, costs)
    for budget in BUDGETS:
        masks = baseline_masks(method, weights, budget, costs)
        kept, length, cumulative = _ranked_prefix(scores, flat_costs,
                                                  budget * total)
        assert np.array_equal(
            torch.cat([m.flatten() for m in masks]).numpy(), kept)
        # the next-ranked weight would not fit
        assert length < len(scores)
        assert not _fits(cumulative[length], budget * total)


def test_lamp_scores_follow_the_formula():
    for weight in _weights(4, [(5, 3, 2), (7, 6), (2, 3, 3, 3, 2)]):
        scores = lamp_scores(weight)
        assert scores.shape == weight.shape
        assert torch.allclose(scores.flatten(), _brute_lamp(weight),
                              rtol=1e-12, atol=0)
        assert scores.flatten()[weight.abs().argmax()] == 1
    # ties: positional, the later weight in flat order scores more
    tied = lamp_scores(torch.tensor([1.0, -1.0, 2.0, 0.0]))
    assert torch.allclose(tied,
                          torch.tensor([1 / 6, 1 / 5, 1.0, 0.0],
                                       dtype=torch.float64))


@pytest.mark.parametrize('cost_kind', sorted(COSTS))
def test_lamp_keeps_the_largest_weight_of_every_layer(cost_kind):
    weights = _weights(5)
    # a layer of tiny weights: one global threshold prunes all of it
    weights[1] = weights[1] * 1e-3
    costs = COSTS[cost_kind](weights)
    per_weight = _per_weight(weights, costs)
    tops = sum(
        float(c.flatten()[w.abs().argmax()])
        for w, c in zip(weights, per_weight))
    budget = tops / _total(weights, costs) * (1 + 1e-9)
    lamp = baseline_masks('lamp', weights, budget, costs)
    assert all(
        bool(m.flatten()[w.abs().argmax()]) for w, m in zip(weights, lamp))
    assert not baseline_masks('global', weights, 0.3, costs)[1].any()
    assert all(m.any() for m in baseline_masks('lamp', weights, 0.01, costs))


def test_erk_densities_follow_the_ratio_with_capped_layers_dense():
    # a tiny linear layer that ERK keeps dense, and larger ones
    shapes = [(3, 4), (16, 8, 3, 3), (10, 20), (6, 3, 3, 3, 5)]
    weights = _weights(6, shapes)
    numel = sum(w.numel() for w in weights)
    for budget in (0.15, 0.3):
        counts = baseline_keep_counts('erk', weights, budget)
        sizes = [sum(w.shape) for w in weights]
        dense = [k == w.numel() for k, w in zip(counts, weights)]
        assert any(dense) and not all(dense)
        uncapped = [(k, s) for k, s, d in zip(counts, sizes, dense) if not d]
        # one eps with floor(eps * sum(dims)) = k for every uncapped layer
        assert max(k / s for k, s in uncapped) < min(
            (k + 1) / s for k, s in uncapped)
        low = max(k / s for k, s in uncapped)
        high = min((k + 1) / s for k, s in uncapped)
        ratios = [s / w.numel() for s, w in zip(sizes, weights)]
        for size, weight, capped in zip(sizes, weights, dense):
            if capped:
                # that eps makes the layer's ERK density reach 1
                assert max(low, weight.numel() / size) < high
                assert size / weight.numel() >= max(
                    r for r, d in zip(ratios, dense) if not d)
        assert sum(counts) <= budget * numel
        # the next eps where an uncapped layer gains a weight overflows
        bigger = [
            min(w.numel(), math.floor(high * s + 1e-9))
            for w, s in zip(weights, sizes)
        ]
        assert sum(bigger) > budget * numel


@pytest.mark.parametrize('method', BASELINE_METHODS)
def test_keep_within_is_never_undone(method):
    weights = _weights(7)
    generator = torch.Generator().manual_seed(7)
    earlier = [torch.rand(w.shape, generator=generator) < 0.6 for w in weights]
    # earlier round's pruned weights not zeroed and large: still pruned
    weights = [w.masked_fill(~e, 100.0) for w, e in zip(weights, earlier)]
    costs = _flops_uses()
    total = _total(weights, costs)
    masks = baseline_masks(method, weights, 0.3, costs, keep_within=earlier)
    for weight, mask, keep in zip(weights, masks, earlier):
        assert not (mask & ~keep).any()
        available = weight.abs()[keep & ~mask]
        if mask.any() and available.numel():
            assert weight.abs()[mask].min() >= available.max()
    assert _fits(_cost(weights, costs, masks), 0.3 * total)
    every = baseline_masks(method, weights, 1.0, costs, keep_within=earlier)
    assert all(torch.equal(m, e) for m, e in zip(every, earlier))


def test_keep_within_counts_pruned_weights_as_zero():
    weight = _weights(8)[0]
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(
        8)) < 0.5
    noisy = weight.masked_fill(~keep, -50.0)
    assert torch.equal(
        lamp_scores(noisy, keep), lamp_scores(weight * keep, keep))
    order = prune_order(noisy, keep)
    first = order[:int((~keep).sum())]
    assert not keep.flatten()[first].any()


@pytest.mark.parametrize('method', BASELINE_METHODS)
def test_min_keep_is_respected(method):
    weights = _weights(9)
    weights[2] = weights[2] * 1e-3
    floors = [math.ceil(0.1 * w.numel()) for w in weights]
    counts = baseline_keep_counts(method, weights, 0.12, _flops_uses(),
                                  min_keep=0.1)
    assert all(k >= f for k, f in zip(counts, floors))
    assert _fits(
        _top_cost(weights, _flops_uses(), counts),
        0.12 * _total(weights, _flops_uses()))
    # without the floor the small-weight layer falls below it
    if method == 'global':
        free = baseline_keep_counts(method, weights, 0.12, _flops_uses())
        assert free[2] < floors[2]


def test_infeasible_budget_names_the_least_budget():
    weights = _weights(10)
    with pytest.raises(PruningInputError, match='min_keep') as error:
        baseline_masks('global', weights, 0.3, min_keep=0.5)
    message = str(error.value)
    assert 'raise the budget' in message
    share = float(re.search(r'below ([0-9.]+)', message).group(1))
    least = float(re.search(r'at least ([0-9.]+)', message).group(1))
    floors = [math.ceil(0.5 * w.numel()) for w in weights]
    assert share == pytest.approx(sum(floors) / sum(w.numel()
                                                    for w in weights))
    assert least >= share
    counts = baseline_keep_counts('global', weights, least, min_keep=0.5)
    assert all(k >= f for k, f in zip(counts, floors))
    with pytest.raises(PruningInputError, match='min_keep'):
        baseline_keep_counts('global', weights, share - 1e-5, min_keep=0.5)


@pytest.mark.parametrize('kwargs, problem', [
    (dict(method='random'), 'not one of'),
    (dict(budget=0.0), 'outside'),
    (dict(budget=1.5), 'outside'),
    (dict(min_keep=-0.1), 'min_keep'),
])
def test_bad_arguments_raise_a_pruning_input_error(kwargs, problem):
    arguments = dict(method='lamp', weights=_weights(), budget=0.5)
    arguments.update(kwargs)
    with pytest.raises(PruningInputError, match=problem):
        baseline_masks(**arguments)


def test_non_finite_weights_raise_a_pruning_input_error():
    with pytest.raises(PruningInputError, match='NaN'):
        baseline_masks('uniform', [torch.tensor([1.0, float('nan')])], 0.5)


def test_kept_shares():
    masks = baseline_masks('uniform', _weights(), 0.5)
    shares = kept_shares(masks)
    assert shares == [float(m.double().mean()) for m in masks]
    assert all(abs(s - 0.5) < 1 / m.numel() for s, m in zip(shares, masks))


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('method', BASELINE_METHODS)
def test_cuda_weights_give_the_cpu_masks(method):
    weights = _weights(11)
    costs = _flops_uses()
    earlier = [w.abs() > 0.2 for w in weights]
    cpu = baseline_masks(method, weights, 0.3, costs, keep_within=earlier)
    cuda = baseline_masks(method, [w.cuda() for w in weights], 0.3, costs,
                          keep_within=earlier)
    assert all(m.is_cuda for m in cuda)
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda))
