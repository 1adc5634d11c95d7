"""Replaying the unchanged parts before the head: every pass returns what
a full run of the detector returns, bit for bit, on a toy detector whose
parts are changed one at a time and on mmdet3d's shipped detectors (curves
with and without the replay); a part that writes into its inputs, and any
pass with gradients, is computed every time."""
import copy
import os.path as osp
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from torch import nn

from conftest import PV_RCNN, QUICK_CENTERPOINT, REPO, SMALL_PV_RCNN
from rdprune_mm.apis import build_detector
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.registry import PRUNERS
from rdprune_mm.upstream_replay import replaying_unchanged_parts
from test_channel_pruner import tiny_setup

POINTPILLARS = osp.join(REPO, 'configs', 'pointpillars',
                        'rd-channel_pointpillars_hv_secfpn_kitti-3d-car.py')


class WritesIntoItsInput(nn.Module):
    """Subtracts a centre from its input in place, as mmdet3d's
    ``PillarFeatureNet`` does with ``legacy=True``."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 8)

    def forward(self, points):
        points -= points.mean(0, keepdim=True)
        return self.linear(points)


class StagedDetector(nn.Module):

    def __init__(self):
        super().__init__()
        self.encoder = WritesIntoItsInput()
        self.backbone = nn.Linear(8, 8)
        self.neck = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, inputs, data_samples=None, mode='predict'):
        x = torch.relu(self.backbone(self.encoder(inputs['points'])))
        return self.head(self.neck(x))


def _toy():
    torch.manual_seed(0)
    model = StagedDetector().eval()
    batches = [
        dict(inputs=dict(points=torch.randn(16, 4)), data_samples=None)
        for _ in range(2)
    ]
    return model, batches


def test_toy_passes_equal_full_runs_and_replay_only_what_is_unchanged():
    model, batches = _toy()
    head = HeadOutputs(model, ['head'])
    # changed one at a time, then none: which parts may be replayed
    # follows from the order encoder -> backbone -> neck -> head
    order = [
        model.head, model.neck[0], model.backbone, model.encoder.linear,
        model.head
    ]
    with torch.no_grad(), replaying_unchanged_parts(head):
        replay = head.replay
        for layer in order:
            saved = layer.weight.clone()
            layer.weight.mul_(0.5)
            replayed = [head(batch) for batch in batches]
            head.replay = None
            full = [head(batch) for batch in batches]
            head.replay = replay
            layer.weight.copy_(saved)
            for got, want in zip(replayed, full):
                assert torch.equal(got['head'], want['head'])
        # the first pass records the backbone and the neck; the neck's
        # pass replays the backbone; the last pass replays both
        assert dict(replay.replayed) == {'backbone': 4, 'neck': 2}
        assert replay.calls == 3 * len(order) * len(batches)
    assert head.replay is None
    assert 'forward' not in vars(model.backbone)


class Wrapped(nn.Module):
    """Returns its features inside an object that is not a tensor."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return SimpleNamespace(features=self.linear(x))


def test_a_part_returning_other_objects_runs_every_pass():
    model, batches = _toy()
    model.neck = Wrapped()
    model.forward = lambda inputs, data_samples=None, mode='predict': \
        model.head(model.neck(model.backbone(model.encoder(
            inputs['points']))).features)
    head = HeadOutputs(model, ['head'])
    with torch.no_grad(), replaying_unchanged_parts(head) as replay:
        full = head(batches[0])
        again = head(batches[0])
    assert torch.equal(again['head'], full['head'])
    assert replay._not_replayable == {'encoder', 'neck'}
    assert dict(replay.replayed) == {'backbone': 1}


def test_no_replay_with_gradients():
    model, batches = _toy()
    head = HeadOutputs(model, ['head'])
    with replaying_unchanged_parts(head):
        with torch.no_grad():
            head(batches[0])
        outputs = head(batches[0])
        outputs['head'].sum().backward()
        assert not head.replay.replayed
    assert model.backbone.weight.grad is not None
    assert model.encoder.linear.weight.grad is not None


@pytest.mark.parametrize('pruner', [
    dict(type='RDWeightPruner', num_levels=4, budget=0.5),
    dict(type='RDChannelPruner', num_levels=4, budget=0.5, resolution=10**6)
],
                         ids=['weights', 'channels'])
def test_pruners_choose_what_full_passes_choose(pruner):
    model, batches = tiny_setup()
    results = [
        PRUNERS.build({
            **pruner, 'head_modules': ['head'],
            'replay_unchanged': replay
        }).prune(copy.deepcopy(model), batches) for replay in (False, True)
    ]
    full, replayed = (r.curves for r in results)
    assert full.keys() == replayed.keys()
    for name in full:
        np.testing.assert_array_equal(replayed[name], full[name], name)
    assert results[0].measured_distortion == results[1].measured_distortion


CENTERPOINT_LAYERS = [
    'pts_neck.deblocks.0.0', 'pts_bbox_head.task_heads.0.heatmap.1'
]
POINTPILLARS_LAYERS = ['backbone.blocks.1.0', 'bbox_head.conv_cls']
PV_RCNN_LAYERS = ['roi_head.bbox_head.shared_fc_layer.0.conv']


@pytest.mark.parametrize(
    'config, layers, not_replayable, after_a_head',
    [
        (QUICK_CENTERPOINT, CENTERPOINT_LAYERS, set(), set()),
        # PillarFeatureNet writes into its voxels
        (POINTPILLARS, POINTPILLARS_LAYERS, {'voxel_encoder'}, set()),
        # the sparse encoder returns spconv tensors, which are replayed; the
        # points encoder runs after the RPN head, so never
        (PV_RCNN, PV_RCNN_LAYERS, set(), {'points_encoder'}),
    ],
    ids=['centerpoint', 'pointpillars', 'pv_rcnn'])
def test_shipped_detectors_passes_equal_full_runs(config, layers,
                                                  not_replayable,
                                                  after_a_head):
    cfg = Config.fromfile(config)
    if config == PV_RCNN:
        cfg.merge_from_dict(SMALL_PV_RCNN)
    model, _ = build_detector(cfg)
    batch = calibration_batches(cfg, model, cfg.calibration)[0]
    modules = dict(model.named_modules())
    head = HeadOutputs(model)
    with torch.no_grad(), replaying_unchanged_parts(head):
        replay = head.replay
        head(batch)
        for name in reversed(layers):  # the deepest first: most replayed
            weight = modules[name].weight
            saved = weight.clone()
            weight.mul_(torch.rand_like(weight) < 0.5)
            replayed = head(batch)
            head.replay = None
            full = head(batch)
            head.replay = replay
            weight.copy_(saved)
            assert replayed.keys() == full.keys()
            for key, tensor in full.items():
                assert torch.equal(replayed[key], tensor), (name, key)
        assert replay._not_replayable == not_replayable
        assert not after_a_head & set(replay.replayed)
        assert after_a_head <= set(replay.parts)
        assert sum(replay.replayed.values()) >= len(layers)
