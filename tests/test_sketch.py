"""Gradient sketch and Taylor curves against exact distortions."""
import numpy as np
import pytest
import torch
from torch import nn

from rdprune_mm.curves import (CurveCache, empirical_curves, saturate,
                               taylor_curves)
from rdprune_mm.distortion import MSE, NormalizedMSE, WorstCaseNormalizedMSE
from rdprune_mm.masks import magnitude_order, pruned_counts, sparsity_grid
from rdprune_mm.sketch import GradientSketch
from rdprune_mm.targets import find_targets


class TwoHeads(nn.Module):
    """A linear model with two named outputs of different scale."""

    def __init__(self, coherent: bool = False):
        super().__init__()
        self.trunk = nn.Linear(64, 32, bias=False)
        self.cls = nn.Linear(32, 3)
        self.reg = nn.Linear(32, 5)
        if coherent:
            # every weight of the trunk adds to the outputs with one sign,
            # so pruning errors add up: cross terms dominate the diagonal
            with torch.no_grad():
                self.trunk.weight.uniform_(0.1, 1.0)

    def forward(self, x):
        hidden = self.trunk(x)
        return dict(cls=self.cls(hidden), reg=10 * self.reg(hidden))


def setup(coherent=False, num_batches=2, seed=0):
    torch.manual_seed(seed)
    model = TwoHeads(coherent)
    generator = torch.Generator().manual_seed(seed + 1)
    batches = [
        torch.rand(16, 64, generator=generator) if coherent else torch.randn(
            16, 64, generator=generator) for _ in range(num_batches)
    ]
    with torch.no_grad():
        reference = [model(b) for b in batches]
    return model, batches, reference


def measure_fn(model, batches, reference, distortion):

    def measure():
        with torch.no_grad():
            return distortion(reference, [model(b) for b in batches])

    return measure


@pytest.mark.parametrize('distortion',
                         [NormalizedMSE(), MSE(), WorstCaseNormalizedMSE()])
def test_taylor_curves_match_a_linear_model(distortion):
    """On a linear model the quadratic form is exact: with many projections
    the Taylor curves come within sampling error of the measured ones."""
    model, batches, reference = setup()
    targets = find_targets(model)
    grid = sparsity_grid(6)
    sketch = GradientSketch.measure(
        targets, batches, model, distortion.quadratic_weights(reference),
        distortion.sample_reduction, num_projections=3000, seed=0)
    orders = [magnitude_order(t.weight) for t in targets]
    taylor = taylor_curves(targets, grid, sketch, orders, CurveCache(None, ''))
    empirical = empirical_curves(
        targets, grid, measure_fn(model, batches, reference, distortion),
        CurveCache(None, ''))
    for name in empirical:
        assert taylor[name][0] == 0
        np.testing.assert_allclose(taylor[name][1:], empirical[name][1:],
                                   rtol=0.12)


def test_cross_terms_inside_a_layer_are_kept():
    """Coherent errors: the diagonal alone is far off, the sketch is not."""
    model, batches, reference = setup(coherent=True)
    distortion = NormalizedMSE()
    target = find_targets(model)[0]
    sketch = GradientSketch.measure(
        [target], batches, model, distortion.quadratic_weights(reference),
        'sum', num_projections=2000, seed=3)
    order = magnitude_order(target.weight)
    counts = pruned_counts(target.num_params, [0.0, 0.5])
    estimate = sketch.curve(target.name, target.weight, order, counts)[1]
    diagonal = float(sketch.diagonal_scores(target.name, target.weight)
                     .flatten()[order[:counts[1]]].sum())
    with torch.no_grad():
        original = target.weight.clone()
        target.weight.view(-1)[order[:counts[1]]] = 0
        exact = measure_fn(model, batches, reference, distortion)()
        target.weight.copy_(original)
    assert estimate == pytest.approx(exact, rel=0.12)
    assert diagonal < exact / 5


def test_sketch_is_deterministic_and_leaves_the_model_alone():
    model, batches, reference = setup()
    model.cls.weight.requires_grad_(False)
    targets = find_targets(model)
    before = [t.weight.detach().clone() for t in targets]
    weights = NormalizedMSE().quadratic_weights(reference)
    with torch.no_grad():
        first = GradientSketch.measure(targets, batches, model, weights,
                                       'sum', num_projections=4, seed=7)
    second = GradientSketch.measure(targets, batches, model, weights, 'sum',
                                    num_projections=4, seed=7)
    other = GradientSketch.measure(targets, batches, model, weights, 'sum',
                                   num_projections=4, seed=8)
    for target, weight in zip(targets, before):
        assert torch.equal(target.weight, weight)
        assert torch.equal(first.gradients[target.name],
                           second.gradients[target.name])
        assert not torch.equal(first.gradients[target.name],
                               other.gradients[target.name])
        assert first.gradients[target.name].shape == (
            len(batches) * 4, target.num_params)
    assert model.cls.weight.requires_grad is False
    assert model.trunk.weight.requires_grad is True


def test_worst_case_takes_the_largest_sample():
    model, batches, reference = setup(num_batches=3)
    targets = find_targets(model)
    weights = WorstCaseNormalizedMSE().quadratic_weights(reference)
    summed = GradientSketch.measure(targets, batches, model, weights, 'sum',
                                    num_projections=8, seed=0)
    worst = GradientSketch(summed.gradients, summed.row_samples, 8, 'max')
    target = targets[0]
    order = magnitude_order(target.weight)
    counts = pruned_counts(target.num_params, sparsity_grid(4))
    per_sample = [
        GradientSketch(
            {target.name: summed.gradients[target.name][s * 8:(s + 1) * 8]},
            torch.zeros(8, dtype=torch.long), 8, 'sum').curve(
                target.name, target.weight, order, counts)
        for s in range(3)
    ]
    np.testing.assert_allclose(
        worst.curve(target.name, target.weight, order, counts),
        np.max(per_sample, 0))
    np.testing.assert_allclose(
        summed.curve(target.name, target.weight, order, counts),
        np.sum(per_sample, 0))


def test_saturation_caps_at_the_zero_output_distortion():
    quadratic = np.array([0.0, 1e-4, 0.5, 10.0, 1e6])
    bent = saturate(quadratic, 1.0)
    assert bent[0] == 0
    assert bent[1] == pytest.approx(1e-4, rel=1e-3)
    assert np.all(np.diff(bent) > 0) and np.all(bent < 1.0)
    np.testing.assert_array_equal(saturate(quadratic, 0.0), quadratic)
    _, _, reference = setup()
    zeros = [{n: torch.zeros_like(t) for n, t in r.items()}
             for r in reference]
    assert NormalizedMSE()(reference, zeros) == pytest.approx(1.0)
