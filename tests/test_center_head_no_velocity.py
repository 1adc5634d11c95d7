"""CenterHeadNoVelocity: the targets and loss of mmdet3d's CenterHead on
7-value boxes, without a velocity head."""
import os.path as osp

import pytest
import torch
from mmdet3d.registry import MODELS
from mmdet3d.structures import LiDARInstance3DBoxes
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import rdprune_mm.models  # noqa: F401  (registers the head)

CONFIG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs',
                  'kitti_like', '_base_', 'centerpoint_kitti-like-3class.py')


def head_cfg(with_velocity: bool) -> dict:
    cfg = Config.fromfile(CONFIG)
    head = cfg.model.pts_bbox_head.to_dict()
    head['in_channels'] = 16
    head['share_conv_channel'] = 8
    head['train_cfg'] = cfg.model.train_cfg.pts.to_dict()
    head['test_cfg'] = cfg.model.test_cfg.pts.to_dict()
    if with_velocity:
        head['type'] = 'CenterHead'
        head['common_heads'] = dict(head['common_heads'], vel=(2, 2))
        head['bbox_coder']['code_size'] = 9
        head['train_cfg']['code_weights'] = [1.0] * 8 + [0.0, 0.0]
    return head


def ground_truth() -> InstanceData:
    boxes = torch.tensor([[10.0, 2.0, -1.0, 4.0, 1.8, 1.5, 0.3],
                          [20.0, -5.0, -1.2, 0.8, 0.6, 1.7, -1.0],
                          [30.0, 8.0, -1.1, 1.7, 0.6, 1.7, 2.0]])
    return InstanceData(bboxes_3d=LiDARInstance3DBoxes(boxes),
                        labels_3d=torch.tensor([2, 0, 1]))


def test_targets_are_centerheads_without_velocity():
    init_default_scope('mmdet3d')
    head = MODELS.build(head_cfg(False))
    reference = MODELS.build(head_cfg(True))
    gt = ground_truth()
    heatmaps, boxes, inds, masks = head.get_targets_single(gt)
    padded = InstanceData(
        bboxes_3d=LiDARInstance3DBoxes(
            torch.cat([gt.bboxes_3d.tensor, torch.zeros(3, 2)], 1),
            box_dim=9),
        labels_3d=gt.labels_3d)
    ref_heatmaps, ref_boxes, ref_inds, ref_masks = \
        reference.get_targets_single(padded)
    assert len(boxes) == 3  # one per task
    for mine, ref in zip(boxes, ref_boxes):
        assert mine.shape[1] == 8
        assert torch.equal(mine, ref[:, :8])
    for pairs in ((heatmaps, ref_heatmaps), (inds, ref_inds),
                  (masks, ref_masks)):
        for mine, ref in zip(*pairs):
            assert torch.equal(mine, ref)
    assert int(sum(m.sum() for m in masks)) == 3  # every box is a target


def test_loss_trains_and_prediction_has_seven_values():
    torch.manual_seed(0)
    init_default_scope('mmdet3d')
    head = MODELS.build(head_cfg(False))
    head.init_weights()
    feats = [torch.randn(1, 16, 48, 60)]
    gt = ground_truth()
    meta = dict(box_type_3d=LiDARInstance3DBoxes)
    losses = head.loss_by_feat(head(feats), [gt])
    assert set(losses) == {f'task{t}.loss_{k}' for t in range(3)
                           for k in ('heatmap', 'bbox')}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in head.parameters()
               if p.requires_grad)
    with torch.no_grad():
        results = head.predict_by_feat(head(feats), [meta])
    assert results[0].bboxes_3d.tensor.shape[1] == 7


def test_a_velocity_head_is_refused():
    init_default_scope('mmdet3d')
    cfg = head_cfg(True)
    cfg['type'] = 'CenterHeadNoVelocity'
    with pytest.raises(ValueError, match='remove "vel"'):
        MODELS.build(cfg)
