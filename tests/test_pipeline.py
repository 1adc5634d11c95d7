"""The shared pipeline: registered importance objects drive the pruners, the
budget search on arrays against brute force, and the channel baselines
(uniform, global, fastest) meet their exact budget with the allocation their
rule defines."""
import copy
import itertools
import math

import numpy as np
import pytest
import torch

from rdprune_mm.channels import find_channel_groups, total_cost_after
from rdprune_mm.errors import PruningInputError
from rdprune_mm.pipeline import (BudgetSearch, CostModel, TableCost,
                                 WeightImportance, build_importance)
from rdprune_mm.pipeline.cost_models import LatencyCost
from rdprune_mm.pipeline.importance import MagnitudeImportance
from rdprune_mm.pruners import ChannelBaselinePruner, RDWeightPruner
from rdprune_mm.pruners.channel_baseline_pruner import fastest_objective
from rdprune_mm.registry import IMPORTANCES, PRUNERS
from test_channel_pruner import dense_costs, tiny_setup


# ------------------------------------------------------------ importance
@IMPORTANCES.register_module(force=True)
class LargestFirstImportance(WeightImportance):
    """Prunes the largest weights first: the opposite of magnitude."""

    def order(self, target, sketch=None):
        return torch.argsort(-target.weight.detach().abs().flatten(),
                             stable=True)


def test_importance_names_resolve_by_granularity():
    assert isinstance(build_importance('magnitude', 'weights'),
                      MagnitudeImportance)
    assert build_importance('bn', 'channels').score_kind == 'bn'
    assert build_importance(dict(type='L1FilterImportance'),
                            'channels').score_kind == 'l1'
    with pytest.raises(PruningInputError, match='pruner.ranking'):
        build_importance('l2', 'weights')  # a channel importance
    with pytest.raises(PruningInputError, match='pruner.ranking'):
        build_importance('random', 'channels')


def test_registered_importance_decides_which_weights_go():
    model, batches = tiny_setup()
    original = {n: m.weight.detach().clone()
                for n, m in model.named_modules() if n == 'conv2'}
    pruner = RDWeightPruner(budget=0.5, num_levels=3, head_modules=['head'],
                            targets=dict(include=['^conv2$']),
                            ranking=dict(type='LargestFirstImportance'))
    result = pruner.prune(model, batches)
    mask = result.masks['conv2']
    kept, pruned = original['conv2'][mask], original['conv2'][~mask]
    assert 0 < pruned.numel() < mask.numel()
    assert kept.abs().max() <= pruned.abs().min()
    assert (model.conv2.weight[~mask] == 0).all()


# ------------------------------------------------------------ budget search
class PairCost(CostModel):
    """Two units whose joint cost is a product, bounded by a separable sum
    (AM-GM): the shape of channel pruning's costs."""

    unit = 'flops'

    def __init__(self, shares):
        self.shares = [np.asarray(s, dtype=np.float64) for s in shares]

    @property
    def total(self):
        return 1.0

    def separable(self):
        return [0.5 * s**2 for s in self.shares], 0.0

    def exact(self, levels):
        return float(self.shares[0][levels[0]] * self.shares[1][levels[1]])

    def cheapest_levels(self):
        return tuple(int(np.argmin(s)) for s in self.shares)


@pytest.mark.parametrize('seed', range(5))
def test_search_on_a_product_cost_meets_the_budget_and_beats_one_solve(seed):
    rng = np.random.default_rng(seed)
    shares = [np.linspace(1, 0.1, 6), np.linspace(1, 0.2, 5)]
    distortions = [np.sort(rng.random(len(s))) for s in shares]
    for d in distortions:
        d[0] = 0.0
    cost = PairCost(shares)
    budget = 0.3
    search = BudgetSearch(budget, resolution=10**5, search_steps=20)
    levels, _, _ = search.search(distortions, cost)
    assert cost.exact(levels) <= budget

    def value(ls):
        return sum(d[k] for d, k in zip(distortions, ls))

    plain = search.solve(distortions, cost.separable()[0], budget)
    assert value(levels) <= value(plain.levels) + 1e-12
    exact_best = min(
        value(ls) for ls in itertools.product(*(range(len(s))
                                                for s in shares))
        if cost.exact(ls) <= budget)
    assert value(levels) >= exact_best - 1e-12


def test_exact_tables_are_solved_once_to_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    tables = [np.array([10, 6, 3, 0]), np.array([7, 4, 0]),
              np.array([5, 2, 0])]
    distortions = [np.concatenate([[0], np.sort(rng.random(len(t) - 1))])
                   for t in tables]
    cost = TableCost('params', tables, 22)
    levels, _, kept = BudgetSearch(0.5, resolution=22).search(
        distortions, cost)
    best = min(
        (sum(d[k] for d, k in zip(distortions, ls)), ls)
        for ls in itertools.product(*(range(len(t)) for t in tables))
        if cost.exact(ls) <= 11)
    assert sum(d[k] for d, k in zip(distortions, levels)) == pytest.approx(
        best[0])
    assert kept == cost.exact(levels) <= 11


def test_unreachable_budget_names_the_least_share():
    cost = TableCost('params', [np.array([10, 5]), np.array([10, 5])], 20)
    with pytest.raises(PruningInputError, match=r'below 0\.5000'):
        BudgetSearch(0.4, floor='pruner.min_keep=0.5').check_reachable(cost)


# ------------------------------------------------------------ channel baselines
def _counts(result):
    return {name: int(keep.sum()) for name, keep in result.keeps.items()}


@pytest.mark.parametrize('budget', [0.3, 0.55, 0.8])
def test_uniform_channel_baseline_keeps_one_share(budget):
    model, batches = tiny_setup()
    groups = find_channel_groups(model)
    dense = dense_costs(model, batches, 'flops')
    result = ChannelBaselinePruner(
        allocation='uniform', budget=budget,
        head_modules=['head']).prune(model, batches)
    counts = _counts(result)
    assert total_cost_after(groups, counts, dense) <= budget * sum(
        dense.values())
    shares = [counts[g.name] / g.num_channels for g in groups]
    share = max(shares)

    def uniform(s):
        return {g.name: max(1, math.floor(s * g.num_channels))
                for g in groups}

    assert counts == uniform(share)
    # the next share at which any group gains a channel no longer fits
    larger = min((math.floor(share * g.num_channels) + 1) / g.num_channels
                 for g in groups)
    assert total_cost_after(groups, uniform(larger), dense) > budget * sum(
        dense.values())
    assert all(level.level == -1 for level in result.groups)
    assert math.isnan(result.predicted_distortion)


def test_global_channel_baseline_keeps_the_highest_scores():
    model, batches = tiny_setup(2)
    groups = find_channel_groups(model)
    dense = dense_costs(model, batches, 'params')
    budget = 0.5
    result = ChannelBaselinePruner(
        allocation='global', budget=budget, budget_by='params',
        ranking='l2', head_modules=['head']).prune(copy.deepcopy(model),
                                                   batches)
    counts = _counts(result)
    assert total_cost_after(groups, counts, dense) <= budget * sum(
        dense.values())
    kept_scores, pruned_scores = [], []
    for group in groups:
        scores = group.channel_scores('l2')
        keep = result.keeps[group.name]
        if int(keep.sum()) > 1:  # beyond the one-channel floor
            kept_scores.append(scores[keep].min())
        pruned_scores.extend(scores[~keep].tolist())
    assert pruned_scores and min(kept_scores) >= max(pruned_scores)


def _fastest_at_half_the_flops():
    """The 'fastest' baseline at budget 0.5 on the tiny network: its result
    and the FLOPs kept, counted again from its channel counts."""
    model, batches = tiny_setup()
    groups = find_channel_groups(model)
    dense = dense_costs(model, batches, 'flops')
    result = PRUNERS.build(
        dict(type='ChannelBaselinePruner', allocation='fastest', budget=0.5,
             head_modules=['head'], num_levels=4, latency_repeats=1)).prune(
                 model, batches)
    kept = total_cost_after(groups, _counts(result), dense) / sum(
        dense.values())
    return result, kept


def test_fastest_channel_baseline_meets_the_budget():
    result, kept = _fastest_at_half_the_flops()
    assert kept <= 0.5
    assert result.latency_kept is not None and result.latency_kept < 1


def test_fastest_meets_the_budget_when_timings_say_pruning_is_slower(
        monkeypatch):
    """Noisy timings of tiny layers can make fewer channels look slower;
    the fastest allocation must still meet its FLOPs budget."""
    timed = LatencyCost.separable

    def slower_when_pruned(self):
        tables, fixed = timed(self)
        return [t[::-1].copy() for t in tables], fixed

    monkeypatch.setattr(LatencyCost, 'separable', slower_when_pruned)
    _, kept = _fastest_at_half_the_flops()
    assert kept <= 0.5


def test_fastest_objective_never_rewards_keeping_channels():
    times = np.array([3.0, 3.5, 2.0, 2.0, 2.5])  # noisy, levels 0..4
    flops = np.array([10.0, 8.0, 6.0, 4.0, 2.0])
    objective = fastest_objective(times, flops)
    assert np.all(np.diff(objective) < 0)
    assert objective == pytest.approx([3.0, 3.0, 2.0, 2.0, 2.0])


def test_channel_baseline_settings_refused():
    for kwargs, setting in ((dict(allocation='random'), 'pruner.allocation'),
                            (dict(budget_by='latency'), 'pruner.budget_by'),
                            (dict(num_levels=1), 'num_levels'),
                            (dict(latency_budget=0.5), 'latency_budget'),
                            (dict(unknown=1), 'unknown')):
        with pytest.raises(PruningInputError, match=setting):
            ChannelBaselinePruner(**kwargs)
    # RD settings a config may carry are accepted
    assert ChannelBaselinePruner(resolution=100,
                                 search_steps=3).allocation == 'uniform'
