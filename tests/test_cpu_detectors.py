"""mmdet3d's shipped LiDAR detectors run predict, loss and backward on CPU.

Each model is built from mmdet3d's own config (random weights) and fed a
real frame from ../shared/data/lidar through the config's own training
pipeline (minus database sampling, whose database is not here).
"""
import os.path as osp

import pytest
import torch

import rdprune_mm  # noqa: F401  (CPU kernels)
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import set_random_seed

from rdprune_mm.calibration import dataloader_batches

from conftest import LIDAR

MMDET3D_CONFIGS = osp.join(
    osp.dirname(__import__('mmdet3d').__file__), '.mim', 'configs')
KITTI = dict(
    data_root=LIDAR + '/', ann_file='000008.pkl',
    data_prefix=dict(pts='', img=''))
NUSCENES = dict(
    data_root=LIDAR + '/', ann_file='n015-2018-07-24-11-22-45+0800.pkl',
    data_prefix=dict(pts='', sweeps='', img=''))

DETECTORS = [
    ('centerpoint/centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d.py',
     NUSCENES),
    ('centerpoint/centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d'
     '.py', NUSCENES),
    ('second/second_hv_secfpn_8xb6-80e_kitti-3d-3class.py', KITTI),
    ('pointpillars/pointpillars_hv_secfpn_8xb6-160e_kitti-3d-3class.py',
     KITTI),
    ('pv_rcnn/pv_rcnn_8xb2-80e_kitti-3d-3class.py', KITTI),
    ('dynamic_voxelization/second_dv_secfpn_8xb2-cosine-80e_kitti-3d-3class'
     '.py', KITTI),
    ('dynamic_voxelization/pointpillars_dv_secfpn_8xb6-160e_kitti-3d-car.py',
     KITTI),
]


def _build(name: str, overrides: dict):
    from mmdet3d.registry import MODELS
    cfg = Config.fromfile(osp.join(MMDET3D_CONFIGS, name))
    init_default_scope('mmdet3d')
    set_random_seed(0)
    data = dataloader_batches(cfg, 'train_dataloader', overrides,
                              skip_transforms=('ObjectSample', ))[0]
    return MODELS.build(cfg.model), data, cfg


def _first_layer(model: torch.nn.Module) -> torch.nn.Parameter:
    return next(p for p in model.parameters() if p.dim() > 1)


@pytest.mark.parametrize('name,overrides', DETECTORS,
                         ids=[osp.basename(n)[:-3] for n, _ in DETECTORS])
def test_loss_backward_and_predict_on_cpu(name, overrides):
    model, data, cfg = _build(name, overrides)
    assert len(data['data_samples'][0].gt_instances_3d) > 0

    model.train()
    batch = model.data_preprocessor(data, training=True)
    losses = model(**batch, mode='loss')
    total = 0
    for key, value in losses.items():
        if 'loss' not in key:
            continue
        for term in (value if isinstance(value, (list, tuple)) else [value]):
            assert torch.isfinite(term).all(), key
            total = total + term.sum()
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.isfinite(g).all() for g in grads)
    first_grad = _first_layer(model).grad
    assert first_grad is not None and first_grad.abs().sum() > 0, \
        'no gradient reached the first layer'

    model.eval()
    with torch.no_grad():
        batch = model.data_preprocessor(data, training=False)
        result = model(**batch, mode='predict')[0].pred_instances_3d
    boxes = result.bboxes_3d.tensor
    assert boxes.device.type == 'cpu' and torch.isfinite(boxes).all()
    assert len(boxes) == len(result.scores_3d) == len(result.labels_3d)
    assert ((result.scores_3d >= 0) & (result.scores_3d <= 1)).all()
