"""DecodedDistortion: grouping by head type, hand-computed values, its
quadratic weights against measured distortions, and Taylor curves with it."""
import copy
import math

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

from conftest import QUICK_CENTERPOINT
from rdprune_mm.apis import build_detector
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.curves import CurveCache, empirical_curves, taylor_curves
from rdprune_mm.decoded_distortion import DecodedDistortion, output_groups
from rdprune_mm.masks import magnitude_order, sparsity_grid
from rdprune_mm.pipeline.calibration import calibrate
from rdprune_mm.registry import DISTORTIONS
from rdprune_mm.sketch import GradientSketch
from rdprune_mm.targets import find_targets


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_groups_follow_the_head_types():
    names = [
        'pts_bbox_head.0.0.heatmap', 'pts_bbox_head.0.0.reg',
        'pts_bbox_head.0.0.dim', 'pts_bbox_head.1.0.heatmap',
        'pts_bbox_head.1.0.rot', 'bbox_head.0.0', 'bbox_head.1.0',
        'bbox_head.2.0', 'roi_head.bbox_head.0'
    ]
    groups = {g.score or g.regression[0]: g for g in output_groups(names)}
    assert groups['pts_bbox_head.0.0.heatmap'].kind == 'center'
    assert groups['pts_bbox_head.0.0.heatmap'].regression == [
        'pts_bbox_head.0.0.dim', 'pts_bbox_head.0.0.reg'
    ]
    assert groups['pts_bbox_head.1.0.heatmap'].regression == [
        'pts_bbox_head.1.0.rot'
    ]
    assert groups['bbox_head.0.0'].kind == 'anchor'
    assert groups['bbox_head.0.0'].regression == [
        'bbox_head.1.0', 'bbox_head.2.0'
    ]
    assert groups['roi_head.bbox_head.0'].kind == 'other'
    assert len(groups) == 4


def test_centerpoint_value_by_hand():
    """One task, a 1 x 2 map: heatmap logits 0 and -4, a 1-channel reg."""
    reference = [{
        'h.0.heatmap': torch.tensor([[[[0.0, -4.0]]]]),
        'h.0.reg': torch.tensor([[[[1.0, 2.0]]]]),
    }]
    outputs = [{
        'h.0.heatmap': torch.tensor([[[[1.0, -4.0]]]]),
        'h.0.reg': torch.tensor([[[[1.5, 0.0]]]]),
    }]
    f0, f1 = sigmoid(0.0), sigmoid(-4.0)
    score = (sigmoid(1.0) - f0)**2 / (f0**2 + f1**2)
    regression = (f0 * 0.5**2 + f1 * 2.0**2) / (f0 * 1.0 + f1 * 4.0)
    expected = 0.5 * score + 0.5 * regression
    assert DecodedDistortion()(reference, outputs) == pytest.approx(
        expected, rel=1e-12)
    assert DecodedDistortion(score_weight=1.0)(
        reference, outputs) == pytest.approx(score, rel=1e-12)
    assert DecodedDistortion()(reference, reference) == 0


def test_centered_regression_energy_by_hand():
    """Two frames of one cell each: the reg's energy is taken about its
    foreground-weighted mean over both frames, not about zero."""
    reference = [{
        'h.0.heatmap': torch.tensor([[[[0.0]]]]),
        'h.0.reg': torch.tensor([[[[10.0]]]]),
    }, {
        'h.0.heatmap': torch.tensor([[[[2.0]]]]),
        'h.0.reg': torch.tensor([[[[12.0]]]]),
    }]
    outputs = [{
        'h.0.heatmap': torch.tensor([[[[0.0]]]]),
        'h.0.reg': torch.tensor([[[[10.5]]]]),
    },
               dict(reference[1])]
    f0, f1 = sigmoid(0.0), sigmoid(2.0)
    mean = (f0 * 10.0 + f1 * 12.0) / (f0 + f1)
    centered = f0 * 0.5**2 / (f0 * (10 - mean)**2 + f1 * (12 - mean)**2)
    raw = f0 * 0.5**2 / (f0 * 100.0 + f1 * 144.0)
    measure = DecodedDistortion(regression_energy='centered')
    assert measure(reference, outputs) == pytest.approx(0.5 * centered,
                                                        rel=1e-12)
    assert DecodedDistortion()(reference, outputs) == pytest.approx(0.5 * raw,
                                                                    rel=1e-12)
    # a frame's errors alone reduce with the whole reference's centre
    errors = measure.sample_errors(reference[:1], outputs[:1])
    both = torch.cat([errors, torch.zeros_like(errors)])
    assert measure.reduce(reference, both) == pytest.approx(0.5 * centered,
                                                            rel=1e-12)
    with pytest.raises(ValueError, match='regression_energy'):
        DecodedDistortion(regression_energy='variance')


def test_anchor_regression_is_weighted_by_its_own_anchor():
    """2 anchors x 3 classes, 7 box values, 2 direction bins per anchor:
    an error in anchor 1's box weighs anchor 1's top class score, not
    anchor 0's."""
    cls = torch.full((1, 6, 1, 1), -6.0)
    cls[0, 3 + 2] = 2.0  # anchor 1, class 2: a confident object
    boxes = torch.ones(1, 14, 1, 1)
    directions = torch.zeros(1, 4, 1, 1)
    reference = [{'b.0.0': cls, 'b.1.0': boxes, 'b.2.0': directions}]
    changed = boxes.clone()
    changed[0, 7 + 4] += 1.0  # anchor 1's box, value 4
    outputs = [{'b.0.0': cls, 'b.1.0': changed, 'b.2.0': directions}]
    background, obj = sigmoid(-6.0), sigmoid(2.0)
    energy = 7 * background + 7 * obj
    expected = 0.25 * obj / energy
    distortion = DecodedDistortion()
    assert distortion(reference, outputs) == pytest.approx(expected,
                                                           rel=1e-12)
    changed = boxes.clone()
    changed[0, 4] += 1.0  # anchor 0's box: background, almost free
    outputs = [{'b.0.0': cls, 'b.1.0': changed, 'b.2.0': directions}]
    assert distortion(reference, outputs) == pytest.approx(
        0.25 * background / energy, rel=1e-12)


class CenterLike(nn.Module):
    """1x1 convs from a feature map to a heatmap and a regression map."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Conv2d(8, 16, 1, bias=False)
        self.heatmap = nn.Conv2d(16, 2, 1)
        self.reg = nn.Conv2d(16, 3, 1)
        with torch.no_grad():
            self.heatmap.bias.fill_(-2.0)

    def forward(self, x):
        hidden = self.trunk(x)
        return {'head.0.heatmap': self.heatmap(hidden),
                'head.0.reg': self.reg(hidden)}


def center_setup():
    torch.manual_seed(0)
    model = CenterLike()
    batches = [torch.randn(1, 8, 6, 5) for _ in range(2)]
    with torch.no_grad():
        reference = [model(b) for b in batches]
    return model, batches, reference


@pytest.mark.parametrize('energy', ['raw', 'centered'])
def test_quadratic_weights_match_small_changes(energy):
    """D(eps * dW) / eps^2 tends to sum w (J dW)^2: the weights are the
    measure's second-order expansion, sigmoid slope included."""
    model, batches, reference = center_setup()
    distortion = DecodedDistortion(regression_energy=energy)
    weights = distortion.quadratic_weights(reference)
    direction = torch.randn_like(model.trunk.weight)
    original = model.trunk.weight.detach().clone()
    ratios = []
    for eps in (1e-2, 1e-3):
        with torch.no_grad():
            model.trunk.weight.copy_(original + eps * direction)
            outputs = [model(b) for b in batches]
            model.trunk.weight.copy_(original)
        predicted = sum(
            float((w[n] * (o[n].double() - r[n].double())**2).sum())
            for w, o, r in zip(weights, outputs, reference) for n in w)
        ratios.append(distortion(reference, outputs) / predicted)
    assert ratios[1] == pytest.approx(1.0, abs=2e-3)
    assert abs(ratios[1] - 1) < abs(ratios[0] - 1) or \
        ratios[0] == pytest.approx(1.0, abs=2e-3)


def test_taylor_curves_follow_the_measured_curves():
    """At low sparsity (where the second-order expansion holds) the sketch
    with per-element weights estimates the measured curves."""
    model, batches, reference = center_setup()
    distortion = DISTORTIONS.build(dict(type='DecodedDistortion'))
    targets = [t for t in find_targets(model) if t.name == 'trunk']
    grid = sparsity_grid(11)[:3]  # 0, 0.1, 0.2 of the weights
    sketch = GradientSketch.measure(
        targets, batches, model, distortion.quadratic_weights(reference),
        distortion.sample_reduction, num_projections=500, seed=0)
    orders = [magnitude_order(t.weight) for t in targets]
    taylor = taylor_curves(targets, grid, sketch, orders, CurveCache(None, ''))

    def measure():
        with torch.no_grad():
            return distortion(reference, [model(b) for b in batches])

    empirical = empirical_curves(targets, grid, measure, CurveCache(None, ''))
    np.testing.assert_allclose(taylor['trunk'][1:], empirical['trunk'][1:],
                               rtol=0.15)
    assert empirical['trunk'][2] > empirical['trunk'][1] > 0


def test_frames_of_a_pass_measure_what_the_whole_pass_measures():
    """The per-frame error terms of calibrate() on mmdet3d's CenterPoint:
    rows of frames run apart are the rows of the whole pass, and their
    reduction is the whole pass's distortion to the bit, which is what
    ranks that share a pass's frames rely on."""
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    model, _ = build_detector(cfg)
    batch = calibration_batches(cfg, model, cfg.calibration)[0]
    calibration = calibrate(model, [batch, copy.deepcopy(batch)], [], None,
                            DecodedDistortion())
    frames = calibration.frames
    weight = model.pts_bbox_head.shared_conv.conv.weight
    with torch.no_grad():
        weight.mul_(torch.rand_like(weight) < 0.7)
        whole = calibration.measure()
        apart = torch.cat([frames.errors([0]), frames.errors([1])])
        together = frames.errors([0, 1])
    assert whole > 0
    assert torch.equal(apart, together)
    assert frames.reduce(apart) == whole
