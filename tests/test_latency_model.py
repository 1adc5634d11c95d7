"""budget_by='latency': the per-layer latency model (fit, exact cost and the
allocator's separable bound) and the pruner's time budget on the toy
network of test_channel_pruner, with real timings."""
import itertools
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rdprune_mm.channels import find_channel_groups, latency, slim_copy
from rdprune_mm.channels.costs import channel_counts
from rdprune_mm.channels.latency import (LATENCY_SHARES, LatencyModel,
                                         fit_latency_model, kept_shares,
                                         time_layers)
from rdprune_mm.errors import PruningInputError
from rdprune_mm.pruners import channel_pruner
from rdprune_mm.report import allocation_report
from test_channel_pruner import TinyDetector, tiny_pruner, tiny_setup

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


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_fit_predicts_every_allocation_of_a_model_in_its_family(seed):
    model, _ = tiny_setup()
    groups = find_channel_groups(model)
    truth = random_model(seed)
    counts = channel_counts(groups, LATENCY_SHARES)
    measured = {name: [] for name in LAYERS}
    for k in range(len(LATENCY_SHARES)):
        seconds = truth.after(groups, {g.name: int(c[k])
                                       for g, c in zip(groups, counts)})
        for name in LAYERS:
            measured[name].append(seconds[name])
    fitted = fit_latency_model(groups, LATENCY_SHARES, measured)
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


def test_latency_budget_met_and_the_timings_cached(tmp_path, monkeypatch):
    model, batches = tiny_setup()
    cache = str(tmp_path)
    everything = tiny_pruner(budget=1.0, budget_by='latency').prune(
        model, batches, cache_dir=cache)
    latency = everything.latency
    assert everything.achieved_budget == pytest.approx(1.0)
    assert everything.latency_before == pytest.approx(
        sum(latency.dense.values()))
    assert sorted(latency.measured) == sorted(LAYERS)
    groups = find_channel_groups(model)
    least = latency.total_after(groups, {g.name: 1 for g in groups})
    budget = 0.5 * (1 + least / everything.latency_before)

    def no_timing(*args, **kwargs):
        raise AssertionError('the timings were not read from the cache')

    monkeypatch.setattr(channel_pruner, 'measure_latency_model', no_timing)
    result = tiny_pruner(budget=budget, budget_by='latency').prune(
        model, batches, cache_dir=cache)
    counts = {name: int(keep.sum()) for name, keep in result.keeps.items()}
    assert result.latency.to_dict() == latency.to_dict()
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
