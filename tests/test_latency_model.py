"""budget_by='latency': the per-layer latency model (fit, exact cost and the
allocator's separable bound) and the pruner's time budget on the toy
network of test_channel_pruner, with real timings."""
import copy
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rdprune_mm.channels import find_channel_groups, latency, slim_copy
from rdprune_mm.channels.costs import channel_counts, separable_costs
from rdprune_mm.channels.latency import (LATENCY_SHARES, LatencyModel,
                                         fit_latency_model, kept_shares,
                                         time_layers)
from rdprune_mm.errors import PruningInputError
from rdprune_mm.pruners import channel_pruner
from rdprune_mm.report import allocation_report
from test_channel_pruner import (TinyDetector, dense_costs, tiny_pruner,
                                 tiny_setup)

LAYERS = ['conv1', 'conv2', 'conv3', 'head']


def random_model(seed):
    """A latency model with random non-negative coefficients."""
    generator = np.random.default_rng(seed)
    terms = generator.uniform(0, 1e-3, (3, len(LAYERS)))
    return LatencyModel(*({name: float(v) for name, v in zip(LAYERS, row)}
                          for row in terms))


def random_counts(groups, generator):
    return {g.name: int(generator.integers(1, g.num_channels + 1))
            for g in groups}


def fit_to(truth, groups):
    """The latency model fitted to ``truth``'s times at the uniform
    shares."""
    counts = channel_counts(groups, LATENCY_SHARES)
    measured = {name: [] for name in LAYERS}
    for k in range(len(LATENCY_SHARES)):
        seconds = truth.after(groups, {g.name: int(c[k])
                                       for g, c in zip(groups, counts)})
        for name in LAYERS:
            measured[name].append(seconds[name])
    return fit_latency_model(groups, LATENCY_SHARES, measured)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fit_predicts_every_allocation_of_a_model_in_its_family(seed):
    model, _ = tiny_setup()
    groups = find_channel_groups(model)
    truth = random_model(seed)
    fitted = fit_to(truth, groups)
    generator = np.random.default_rng(seed)
    for _ in range(20):
        allocation = random_counts(groups, generator)
        expected = truth.after(groups, allocation)
        for name, seconds in fitted.after(groups, allocation).items():
            assert seconds == pytest.approx(expected[name], rel=1e-9,
                                            abs=1e-15)
    assert all(v >= 0 for term in (fitted.quadratic, fitted.linear,
                                   fitted.constant) for v in term.values())


def test_fit_keeps_coefficients_non_negative_on_noisy_times():
    model, _ = tiny_setup()
    groups = find_channel_groups(model)
    # times that grow as channels are removed: least squares would give a
    # negative slope; the fit keeps the constant only
    measured = {name: [1.0, 1.1, 1.2, 1.3] for name in LAYERS}
    fitted = fit_latency_model(groups, LATENCY_SHARES, measured)
    for name in LAYERS:
        assert fitted.quadratic[name] == 0 and fitted.linear[name] == 0
        assert fitted.constant[name] == pytest.approx(1.15)


def test_kept_shares_average_only_the_pruned_sides():
    model, _ = tiny_setup()
    groups = find_channel_groups(model)
    sizes = {g.name: g.num_channels for g in groups}
    # conv1 produces group A (8): its input (the image) is never pruned
    counts = dict(zip(sizes, (2, 6, 4)))
    shares = kept_shares(groups, counts, LAYERS)
    assert shares['conv1'] == (0.25, 1.0, 0.25)
    assert shares['conv2'] == (1.0, 0.25, 0.625)
    assert shares['head'][2] == shares['head'][1]


@pytest.mark.parametrize('seed', [0, 1])
def test_separable_tables_bound_the_exact_time(seed):
    model, _ = tiny_setup()
    groups = find_channel_groups(model)
    latency = random_model(seed)
    shares = [1.0, 0.75, 0.5, 0.25]
    counts = channel_counts(groups, shares)
    tables, fixed = latency.separable(groups, counts)
    assert fixed + sum(t[0] for t in tables) == pytest.approx(
        sum(latency.dense.values()))
    # groups of 8, 6 and 4 channels keep exactly half at level 2
    half = {g.name: int(c[2]) for g, c in zip(groups, counts)}
    assert [2 * half[g.name] for g in groups] == [8, 6, 4]
    assert fixed + sum(t[2] for t in tables) == pytest.approx(
        latency.total_after(groups, half))
    generator = np.random.default_rng(seed)
    for _ in range(50):
        levels = generator.integers(0, len(shares), len(groups))
        exact = latency.total_after(
            groups, {g.name: int(c[k])
                     for g, c, k in zip(groups, counts, levels)})
        bound = fixed + sum(t[k] for t, k in zip(tables, levels))
        assert exact <= bound * (1 + 1e-12)


class ConvTwice(TinyDetector):
    """The toy network with conv3 applied twice per pass."""

    def forward(self, inputs, data_samples=None, mode='predict'):
        a = torch.relu(self.bn1(self.conv1(inputs)))
        b = torch.relu(self.bn2(self.conv2(a)))
        c = torch.relu(self.bn3(self.conv3(a) + self.conv3(a)))
        return self.head(torch.cat([b, c], 1))


def test_time_layers_sums_every_call_of_a_layer(monkeypatch):
    torch.manual_seed(0)
    model = ConvTwice().eval()
    _, batches = tiny_setup()
    ticks = itertools.count()
    # a clock that advances one unit per reading: every call lasts 1
    monkeypatch.setattr(latency, 'time',
                        SimpleNamespace(perf_counter=lambda: next(ticks)))
    seconds = time_layers(model, batches[0], LAYERS, ['head'], repeats=3)
    assert seconds == dict(conv1=1, conv2=1, conv3=2, head=1)


class SlowAfterConv1(TinyDetector):
    """The toy network with a slow weightless step after conv1's
    BatchNorm (as a reshape or concatenation would be): it advances a fake
    clock by 0.2 s, and nothing else takes any time."""

    clock = [0.0]

    def forward(self, inputs, data_samples=None, mode='predict'):
        a = self.bn1(self.conv1(inputs))
        self.clock[0] += 0.2
        a = torch.relu(a)
        b = torch.relu(self.bn2(self.conv2(a)))
        c = torch.relu(self.bn3(self.conv3(a)))
        return self.head(torch.cat([b, c], 1))


def test_time_layers_counts_what_follows_a_layer_up_to_the_next(
        monkeypatch):
    torch.manual_seed(0)
    model = SlowAfterConv1().eval()
    _, batches = tiny_setup()
    monkeypatch.setattr(
        latency, 'time',
        SimpleNamespace(perf_counter=lambda: SlowAfterConv1.clock[0]))
    seconds = time_layers(model, batches[0], LAYERS, ['head'], repeats=1)
    assert seconds['conv1'] == pytest.approx(0.2)
    assert all(seconds[name] == 0 for name in LAYERS if name != 'conv1')


def test_latency_timed_on_slim_copies_then_read_from_the_cache(
        tmp_path, monkeypatch):
    model, batches = tiny_setup()
    cache = str(tmp_path)
    everything = tiny_pruner(budget=1.0, budget_by='latency').prune(
        model, batches, cache_dir=cache)
    latency = everything.latency
    assert everything.achieved_budget == pytest.approx(1.0)
    assert everything.latency_before == pytest.approx(
        sum(latency.dense.values()))
    assert sorted(latency.measured) == sorted(LAYERS)
    assert all(len(seconds) == len(LATENCY_SHARES) and min(seconds) > 0
               for seconds in latency.measured.values())

    def no_timing(*args, **kwargs):
        raise AssertionError('the timings were not read from the cache')

    monkeypatch.setattr(
        'rdprune_mm.channels.latency.measure_latency_model', no_timing)
    again = tiny_pruner(budget=1.0, budget_by='latency').prune(
        model, batches, cache_dir=cache)
    assert again.latency.to_dict() == latency.to_dict()


def test_latency_budget_met(monkeypatch):
    # a fixed latency model: the toy's real layers take microseconds, and
    # their times can be all constant (nothing to prune by time)
    latency = injected_latency(monkeypatch, 2)
    model, batches = tiny_setup()
    groups = find_channel_groups(model)
    dense_time = sum(latency.dense.values())
    least = latency.total_after(groups, {g.name: 1 for g in groups})
    budget = 0.5 * (1 + least / dense_time)
    result = tiny_pruner(budget=budget, budget_by='latency').prune(
        model, batches)
    counts = {name: int(keep.sum()) for name, keep in result.keeps.items()}
    assert result.latency_after == pytest.approx(
        latency.total_after(groups, counts))
    assert result.achieved_budget <= budget
    assert any(counts[g.name] < g.num_channels for g in groups)
    report = json.loads(json.dumps(
        {**allocation_report(result), **result.report_fields()}))
    assert report['budget']['unit'] == 'latency'
    assert report['cost_model']['latency']['kept'] == pytest.approx(
        result.achieved_budget)
    slim, _ = slim_copy(model, result.keeps)
    assert slim.conv1.out_channels == counts[groups[0].name]


def test_latency_settings_refused():
    for kwargs, message in ((dict(latency_shares=[0.5, 0.25]), 'hold 1'),
                            (dict(latency_shares=[1.0]), 'hold 1'),
                            (dict(latency_repeats=0), 'latency_repeats')):
        with pytest.raises(PruningInputError, match=message):
            tiny_pruner(budget_by='latency', **kwargs)


def injected_latency(monkeypatch, seed):
    """Make the pruner's timing return a fixed random latency model (fitted
    to its own times at the uniform shares, which it reproduces exactly)."""
    model, _ = tiny_setup()
    fitted = fit_to(random_model(seed), find_channel_groups(model))
    monkeypatch.setattr('rdprune_mm.channels.latency.measure_latency_model',
                        lambda *args, **kwargs: fitted)
    return fitted


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('tightness', [0.7, 0.85, 0.95])
def test_latency_cap_met_and_no_allocation_as_fast_is_less_distorted(
        monkeypatch, seed, tightness):
    latency = injected_latency(monkeypatch, seed)
    model, batches = tiny_setup()
    groups = find_channel_groups(model)
    dense = dense_costs(model, batches, 'flops')
    total = sum(dense.values())
    budget = 0.6
    uncapped = tiny_pruner(budget=budget).prune(copy.deepcopy(model),
                                                batches)
    assert uncapped.latency is None
    pruner = tiny_pruner(budget=budget)
    counts = channel_counts(groups, 1 - pruner.sparsities)

    def seconds(levels):
        return latency.total_after(
            groups, {g.name: int(c[k])
                     for g, c, k in zip(groups, counts, levels)})

    dense_time = sum(latency.dense.values())
    free_levels = tuple(g.level for g in uncapped.groups)
    least = seconds([len(c) - 1 for c in counts])
    # a cap between the fewest channels' time and the uncapped allocation's
    cap = (least + tightness * (seconds(free_levels) - least)) / dense_time
    result = tiny_pruner(budget=budget, latency_budget=cap).prune(
        copy.deepcopy(model), batches)
    chosen = tuple(g.level for g in result.groups)
    assert result.latency_weight > 0
    assert seconds(chosen) <= cap * dense_time
    assert result.latency_kept == pytest.approx(seconds(chosen) / dense_time)
    assert result.flops_after <= budget * total
    assert result.predicted_distortion >= uncapped.predicted_distortion

    curves = [result.curves[g.name] for g in groups]
    flop_tables, flop_fixed = separable_costs(groups, counts, dense)
    time_tables, time_fixed = latency.separable(groups, counts)

    def table_sum(tables, fixed, levels):
        return fixed + sum(t[k] for t, k in zip(tables, levels))

    # the allocator's optimum of distortion + weight * time: nothing within
    # its budget that is as fast (separable time) is less distorted
    for levels in itertools.product(*(range(len(c)) for c in curves)):
        if (table_sum(flop_tables, flop_fixed, levels) >
                result.allocator_budget * total * (1 + 1e-12)):
            continue
        if (table_sum(time_tables, time_fixed, levels) <=
                table_sum(time_tables, time_fixed, chosen)):
            assert sum(c[k] for c, k in zip(curves, levels)) >= (
                result.predicted_distortion - 1e-12)
    # and the weight is the least that meets the cap: no optimum of a
    # smaller weight within the asked budget meets it with less distortion
    within = [
        levels for levels in itertools.product(
            *(range(len(c)) for c in curves))
        if table_sum(flop_tables, flop_fixed, levels) <= budget * total
    ]
    for weight in np.linspace(0, result.latency_weight, 200):
        optimum = min(within, key=lambda levels: (
            sum(c[k] for c, k in zip(curves, levels)) + weight *
            table_sum(time_tables, 0.0, levels) / dense_time))
        if seconds(optimum) <= cap * dense_time:
            assert result.predicted_distortion <= sum(
                c[k] for c, k in zip(curves, optimum)) + 1e-12


def test_latency_cap_already_met_changes_nothing(monkeypatch):
    injected_latency(monkeypatch, 0)
    model, batches = tiny_setup()
    uncapped = tiny_pruner(budget=0.5).prune(copy.deepcopy(model), batches)
    capped = tiny_pruner(budget=0.5, latency_budget=1.0).prune(
        copy.deepcopy(model), batches)
    assert capped.latency_weight == 0
    assert [g.level for g in capped.groups] == [
        g.level for g in uncapped.groups]
    report = json.loads(json.dumps(capped.report_fields()))
    assert report['cost_model']['latency']['budget'] == 1.0
    assert report['cost_model']['latency']['kept'] == pytest.approx(
        capped.latency_kept)


def test_latency_cap_below_the_fewest_channels_refused_before_curves(
        monkeypatch):
    latency = injected_latency(monkeypatch, 1)
    model, batches = tiny_setup()
    groups = find_channel_groups(model)
    least = latency.total_after(groups, {g.name: 1 for g in groups}) / sum(
        latency.dense.values())

    def no_curves(*args, **kwargs):
        raise AssertionError('curves measured before the cap was checked')

    monkeypatch.setattr(channel_pruner.RDChannelPruner, 'curves',
                        no_curves)
    with pytest.raises(PruningInputError,
                       match=f'below {least:.4f}.*latency_budget'):
        tiny_pruner(budget=0.5, latency_budget=0.9 * least).prune(
            model, batches)


def test_latency_cap_settings_refused():
    for kwargs, message in (
            (dict(budget_by='latency', latency_budget=0.5),
             "budget_by is 'latency' already"),
            (dict(latency_budget=0.0), r'outside \(0, 1\]'),
            (dict(latency_budget=1.5), r'outside \(0, 1\]')):
        with pytest.raises(PruningInputError, match=message):
            tiny_pruner(**kwargs)
