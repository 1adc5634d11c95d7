"""The same pruner on an mmdet 2D detector (RetinaNet R-18 from mmdet's
shipped config), calibrated on a rendered real KITTI scene."""
import json
import os.path as osp

import torch

from conftest import REPO, load_tool
from rdprune_mm.apis import build_detector, load_config

CONFIG = osp.join(REPO, 'configs', 'retinanet',
                  'rd-weight_retinanet_r18_fpn_coco.py')


def test_retinanet_pruned_within_budget(tmp_path):
    image = str(tmp_path / 'scene.png')
    assert load_tool('render_lidar_image').main(['--out', image]) == 0
    work_dir = str(tmp_path / 'work')
    argv = [
        CONFIG, '--work-dir', work_dir, '--cfg-options',
        f'calibration.frames=[{image}]', 'pruner.num_levels=3',
        'pruner.budget=0.6',
        'pruner.targets.include=[backbone.layer4.1,neck.fpn_convs.3,'
        'bbox_head.retina_reg]'
    ]
    assert load_tool('prune').main(argv) == 0
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    assert len(report['layers']) == 4
    assert report['budget']['achieved'] <= 0.6
    assert report['totals']['unpruned_distortion'] == 0.0

    cfg = load_config(CONFIG)
    model, _ = build_detector(cfg, osp.join(work_dir, 'pruned.pth'))
    modules = dict(model.named_modules())
    for layer in report['layers']:
        weight = modules[layer['name']].weight
        pruned = layer['params_before'] - layer['params_after']
        assert int((weight == 0).sum()) == pruned
        assert layer['kind'] == 'conv'
    assert torch.count_nonzero(model.backbone.conv1.weight) == \
        model.backbone.conv1.weight.numel()
