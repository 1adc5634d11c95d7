"""Empirical curves: level 0 exact, cache resumes and reruns for free."""
import numpy as np
import pytest
import torch
from torch import nn

from rdprune_mm.curves import CurveCache, empirical_curves
from rdprune_mm.masks import sparsity_grid
from rdprune_mm.targets import find_targets


class Interrupted(Exception):
    pass


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def make_measure(model, calls, fail_after=None):
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(1))
    reference = model(x).detach()

    def measure():
        calls.append(1)
        if fail_after is not None and len(calls) > fail_after:
            raise Interrupted
        out = model(x)
        return float(((out - reference)**2).sum() / (reference**2).sum())

    return measure


def test_curves_measure_each_layer_alone(tmp_path):
    model = small_model()
    targets = find_targets(model)
    before = [t.weight.detach().clone() for t in targets]
    calls = []
    measure = make_measure(model, calls)
    grid = sparsity_grid(5)
    curves = empirical_curves(targets, grid, measure,
                              CurveCache(str(tmp_path), 'k'), measure())
    assert curves['0'][0] == 0.0 and curves['2'][0] == 0.0
    assert all(curve[-1] > 0 for curve in curves.values())
    for target, weight in zip(targets, before):
        assert torch.equal(target.weight, weight)
    # level k of layer 0 equals pruning that layer alone, by hand
    with torch.no_grad():
        w = targets[0].weight
        keep = w.abs() > w.abs().flatten().sort().values[63]
        w.mul_(keep)
        assert measure() == pytest.approx(curves['0'][2], rel=1e-12)


def test_interrupted_run_resumes_and_rerun_recomputes_nothing(tmp_path):
    model = small_model()
    targets = find_targets(model)
    grid = sparsity_grid(5)
    levels = len(grid) - 1

    calls = []
    with pytest.raises(Interrupted):
        empirical_curves(targets, grid,
                         make_measure(model, calls, fail_after=levels + 2),
                         CurveCache(str(tmp_path), 'key'))
    assert all(torch.isfinite(t.weight).all() for t in targets)

    calls = []
    resumed = empirical_curves(targets, grid, make_measure(model, calls),
                               CurveCache(str(tmp_path), 'key'))
    assert len(calls) == levels  # only the second layer was left

    calls = []
    again = empirical_curves(targets, grid, make_measure(model, calls),
                             CurveCache(str(tmp_path), 'key'))
    assert calls == []
    for name in resumed:
        np.testing.assert_array_equal(resumed[name], again[name])

    calls = []
    empirical_curves(targets, grid, make_measure(model, calls),
                     CurveCache(str(tmp_path), 'other settings'))
    assert len(calls) == 2 * levels
