"""KITTI detectors that need the CPU kernels, pruned end to end on the real
KITTI frame: PV-RCNN (the RoI head's distortion measured on the reference
proposals) and PointPillars with dynamic voxelization."""
import json
import os.path as osp

import pytest
import torch
from mmengine.config import Config

from conftest import DYNAMIC_POINTPILLARS, PV_RCNN, SMALL_PV_RCNN, load_tool
from rdprune_mm.apis import build_detector
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.head_outputs import HeadOutputs

HEADS = ['rpn_head', 'roi_head.semantic_head', 'roi_head.bbox_head']
# one layer of every part: sparse convs, set abstraction, BEV backbone and
# neck, RPN head, RoI grid pooling and both RoI sub-heads
INCLUDE = ('pruner.targets.include=['
           r'middle_encoder.encoder_layers.encoder_layer2.0.0$,'
           r'points_encoder.voxel_sa_layers.1.mlps.0.layer1,'
           r'backbone.blocks.1.0$,neck.deblocks.1.0$,rpn_head.conv_cls,'
           r'roi_grid_pool_layer.mlps.0.layer0,'
           r'semantic_head.seg_cls_layer.0,bbox_head.shared_fc_layer.0]')


@pytest.fixture(scope='module')
def pv_rcnn():
    cfg = Config.fromfile(PV_RCNN)
    cfg.merge_from_dict(SMALL_PV_RCNN)
    model, _ = build_detector(cfg)
    batch = calibration_batches(cfg, model, cfg.calibration)[0]
    return model, batch


def test_heads_and_proposal_replay(pv_rcnn):
    model, batch = pv_rcnn
    head = HeadOutputs(model)
    assert head.head_names == HEADS
    with torch.no_grad():
        reference = head(batch)
        again = head(batch)
        rpn_conv = model.rpn_head.conv_cls.weight
        saved = rpn_conv.clone()
        rpn_conv.mul_(torch.rand_like(saved) < 0.5)
        pruned = head(batch)
        rpn_conv.copy_(saved)
    assert any(k.startswith('roi_head.bbox_head') for k in reference)
    assert any(k.startswith('roi_head.semantic_head') for k in reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=0)
        assert pruned[name].shape == tensor.shape, name
    # pruning the RPN's class conv moves its scores, and with them the
    # proposals it would decode; the RoI head still gets the reference
    # proposals, so everything downstream stays exactly as it was
    assert not torch.equal(pruned['rpn_head.0.0'], reference['rpn_head.0.0'])
    for name, tensor in reference.items():
        if not name.startswith('rpn_head.0.'):
            torch.testing.assert_close(pruned[name], tensor, rtol=0, atol=0)


def test_prune_tool_end_to_end(tmp_path):
    work_dir = str(tmp_path)
    argv = [
        PV_RCNN, '--work-dir', work_dir, '--cfg-options',
        'pruner.num_levels=3', 'pruner.budget=0.6', INCLUDE,
        *[f'{key}={value}' for key, value in SMALL_PV_RCNN.items()]
    ]
    assert load_tool('prune').main(argv) == 0
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    names = [layer['name'] for layer in report['layers']]
    for part in ('middle_encoder', 'points_encoder', 'backbone', 'neck',
                 'rpn_head', 'roi_head.bbox_roi_extractor',
                 'roi_head.semantic_head', 'roi_head.bbox_head'):
        assert any(name.startswith(part) for name in names), part
    assert len(names) == 8
    before = sum(layer['params_before'] for layer in report['layers'])
    after = sum(layer['params_after'] for layer in report['layers'])
    assert after <= 0.6 * before
    assert report['totals']['measured_distortion'] > 0
    assert osp.isfile(osp.join(work_dir, 'pruned.pth'))


def test_dynamic_voxel_detector_prunes(tmp_path):
    argv = [DYNAMIC_POINTPILLARS, '--work-dir', str(tmp_path),
            '--cfg-options', 'pruner.num_levels=3',
            'pruner.targets.include=[voxel_encoder,backbone.blocks.0.0$]']
    assert load_tool('prune').main(argv) == 0
    with open(osp.join(tmp_path, 'allocation.json')) as f:
        report = json.load(f)
    names = [layer['name'] for layer in report['layers']]
    assert any(name.startswith('voxel_encoder') for name in names)
    assert report['totals']['unpruned_distortion'] == 0.0
    assert report['totals']['measured_distortion'] > 0
