"""Masked models equal slimmed models for the couplings of PointPillars
(hard and dynamic voxels, one and two pillar-encoder layers) and PV-RCNN,
on the real KITTI frame 000008; slim models rebuild through
``SlimDetector`` and, for PointPillars, through the slim config that
mmdet3d's test tool (``Runner.from_cfg``) loads.

As in ``test_slim.py``, BatchNorm statistics come from the frame and its
scales and shifts are random. PV-RCNN's RoI head runs on the dense model's
proposals in every pass (as the pruner measures it), so that RPN scores
equal up to float rounding cannot pick other proposals.
"""
import copy
import json
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from conftest import LIDAR, REPO, SMALL_PV_RCNN
from rdprune_mm.apis import build_detector
from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.channels import (apply_channel_mask, check_channel_groups,
                                 find_channel_groups, masked_channels,
                                 slim_copy, slim_model, write_slim_outputs)
from rdprune_mm.head_outputs import HeadOutputs, clone_tensors
from rdprune_mm.pruners import RDChannelPruner
from test_channel_groups_kitti import build
from test_slim import assert_outputs_close, random_keeps, randomize_norms

KITTI_FRAME = osp.join(LIDAR, '000008.bin')
CHANNEL_POINTPILLARS = osp.join(
    REPO, 'configs', 'pointpillars',
    'rd-channel_pointpillars_hv_secfpn_kitti-3d-car.py')
CHANNEL_PV_RCNN = osp.join(REPO, 'configs', 'pv_rcnn',
                           'rd-channel_pv_rcnn_kitti-3d-3class.py')

#: Coupling patterns: regular expressions over group names.
PATTERNS = dict(
    pointpillars=dict(
        pfn_to_bev_canvas=r'^voxel_encoder\.',
        second_backbone=r'^backbone\.',
        secondfpn_concat_to_anchor3d_head=r'^neck\.',
        all=r'.'),
    pointpillars_dv=dict(
        dynamic_pfn_scatter_to_bev_canvas=r'^voxel_encoder\.',
        all=r'.'),
    pointpillars_2pfn=dict(pfn_concat_read_twice=r'^voxel_encoder\.'),
    pointpillars_dv_2pfn=dict(
        dynamic_pfn_concat_read_twice=r'^voxel_encoder\.'),
    pv_rcnn=dict(
        sparse_stages_to_voxel_sa=(r'encoder_layer1\.0\.0$|'
                                   r'encoder_layer[234]\.2\.0$'),
        bev_reshape_to_backbone_fusion_semantic=r'conv_out\.0$',
        sa_mlps_concat_to_fusion_and_semantic=(
            r'^points_encoder\.(rawpoints_sa_layer|voxel_sa_layers)'),
        keypoint_fusion_to_roi_grid=r'point_feature_fusion_layer',
        roi_grid_flatten_to_shared_fc=r'roi_grid_pool_layer',
        roi_box_head_shared_fc_and_branches=r'^roi_head\.bbox_head\.',
        semantic_head=r'semantic_head',
        bev_backbone_and_neck=r'^(backbone|neck)\.',
        all=r'.'))
CASES = [(model, pattern) for model, patterns in PATTERNS.items()
         for pattern in patterns]


def run(setup, model):
    """Head outputs of ``model`` on the setup's frame; a two-stage model's
    RoI head gets the dense model's proposals."""
    head = HeadOutputs(model)
    head._proposals = setup['head']._proposals
    with torch.no_grad():
        return head(setup['batch'])


@pytest.fixture(scope='module')
def setups():
    """Per model: the model, its config, the frame's batch, the dense
    outputs (recording the dense proposals) and the channel groups."""
    cache = {}

    def get(name):
        if name not in cache:
            model, cfg = build(
                name, options=SMALL_PV_RCNN if name == 'pv_rcnn' else None)
            batches = calibration_batches(cfg, model,
                                          dict(frames=[KITTI_FRAME]))
            recalibrate_batchnorm(model, batches)
            randomize_norms(model)
            setup = dict(model=model, cfg=cfg, batch=batches[0],
                         head=HeadOutputs(model),
                         groups=find_channel_groups(model))
            with torch.no_grad():
                setup['reference'] = setup['head'](batches[0])
            cache[name] = setup
        return cache[name]

    return get


@pytest.mark.parametrize('name,pattern', CASES,
                         ids=[f'{m}-{p}' for m, p in CASES])
def test_masked_equals_slimmed(setups, name, pattern):
    setup = setups(name)
    model = setup['model']
    selected = [
        g for g in setup['groups']
        if re.search(PATTERNS[name][pattern], g.name)
    ]
    assert selected
    keeps = random_keeps(selected)
    state = copy.deepcopy(model.state_dict())
    with masked_channels(selected, keeps):
        masked = run(setup, model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert any(not torch.allclose(masked[k], setup['reference'][k])
               for k in masked), 'masking changed nothing'

    slim = copy.deepcopy(model)
    slim_model(slim, find_channel_groups(slim), keeps)
    assert sum(p.numel() for p in slim.parameters()) < sum(
        p.numel() for p in model.parameters())
    assert_outputs_close(run(setup, slim), masked)
    scatter = getattr(slim.middle_encoder, 'in_channels', None)
    if name.startswith('pointpillars'):
        pillars = [g for g in selected if g.attributes]
        kept = int(keeps[pillars[0].name].sum()) if pillars else 64
        assert scatter == kept == slim.backbone.blocks[0][0].in_channels


@pytest.mark.parametrize('name', list(PATTERNS))
def test_masked_channels_reach_consumers_as_zeros(setups, name):
    setup = setups(name)
    calls = check_channel_groups(setup['groups'],
                                 lambda: run(setup, setup['model']))
    assert set(calls) == {c.name for g in setup['groups']
                          for c in g.consumers}


@pytest.mark.parametrize('name', ['pointpillars', 'pointpillars_dv',
                                  'pv_rcnn'])
def test_slim_detector_rebuilds_the_slim_model(setups, name):
    setup = setups(name)
    keeps = random_keeps(setup['groups'], seed=1)
    slim, structure = slim_copy(setup['model'], keeps)
    expected = run(setup, slim)
    init_default_scope('mmdet3d')
    rebuilt = MODELS.build(dict(type='SlimDetector',
                                detector=setup['cfg'].model,
                                structure=json.loads(json.dumps(structure))))
    assert type(rebuilt) is type(setup['model'])
    rebuilt.load_state_dict(slim.state_dict(), strict=True)
    assert_outputs_close(run(setup, rebuilt.eval()), expected)
    if name.startswith('pointpillars'):
        assert rebuilt.middle_encoder.in_channels == int(
            keeps[setup['groups'][0].name].sum())


def test_slim_pointpillars_through_the_runner(tmp_path):
    """The repo's PointPillars channel config: slim outputs written as
    tools/prune.py writes them, then loaded as mmdet3d's tools/test.py
    does (Runner.from_cfg, load_checkpoint strict); the full predict path
    (decoding, NMS) of the loaded model equals the masked model's."""
    from mmengine.runner import Runner
    cfg = Config.fromfile(CHANNEL_POINTPILLARS)
    model, _ = build_detector(cfg)
    batches = calibration_batches(cfg, model, cfg.calibration)
    recalibrate_batchnorm(model, batches)
    randomize_norms(model)
    groups = find_channel_groups(model)
    keeps = random_keeps(groups, seed=2, share=0.5)
    for group in groups:
        apply_channel_mask(group, keeps[group.name])
    work_dir = str(tmp_path / 'prune')
    write_slim_outputs(model, keeps, cfg, work_dir)

    slim_cfg = Config.fromfile(osp.join(work_dir, 'slim_config.py'))
    assert slim_cfg.model.type == 'SlimDetector'
    slim_cfg.work_dir = str(tmp_path / 'test')
    slim_cfg.load_from = osp.join(work_dir, 'slim.pth')
    runner = Runner.from_cfg(slim_cfg)
    runner.load_checkpoint(slim_cfg.load_from, strict=True)
    slim = runner.model.eval()
    assert slim.middle_encoder.in_channels == int(keeps[groups[0].name].sum())
    assert sum(p.numel() for p in slim.parameters()) < 0.5 * sum(
        p.numel() for p in model.parameters())
    with torch.no_grad():
        assert_outputs_close(HeadOutputs(slim)(batches[0]),
                             HeadOutputs(model)(batches[0]))
        slim_boxes = slim(**clone_tensors(batches[0]), mode='predict')[0]
        masked_boxes = model(**clone_tensors(batches[0]),
                             mode='predict')[0]
    torch.testing.assert_close(slim_boxes.pred_instances_3d.scores_3d,
                               masked_boxes.pred_instances_3d.scores_3d)
    assert len(masked_boxes.pred_instances_3d.scores_3d)


def test_passes_repeat_although_the_pillar_encoder_writes_its_input(setups):
    """mmdet3d's PillarFeatureNet (legacy=True, the shipped default)
    subtracts the pillar centres from its input voxels in place; every
    HeadOutputs pass runs on clones, so a batch gives the same outputs
    however often it is run."""
    setup = setups('pointpillars')
    batch = setup['batch']
    voxels = batch['inputs']['voxels']['voxels']
    before = voxels.clone()
    again = run(setup, setup['model'])
    assert torch.equal(voxels, before)
    for key, tensor in setup['reference'].items():
        assert torch.equal(again[key], tensor), key
    inputs = clone_tensors(batch['inputs'])
    with torch.no_grad():
        setup['model'](inputs=inputs, data_samples=batch['data_samples'],
                       mode='predict')
    assert not torch.equal(inputs['voxels']['voxels'], before)


def test_rd_channel_pruner_on_the_pv_rcnn_config():
    """The repo's PV-RCNN channel config, one group of every PV-RCNN
    coupling pruned by RDChannelPruner: the budget holds, the unpruned
    model's distortion is exactly 0 (repeatable passes), and the slim copy
    equals the masked model on the same proposals."""
    cfg = Config.fromfile(CHANNEL_PV_RCNN)
    cfg.merge_from_dict(SMALL_PV_RCNN)
    model, _ = build_detector(cfg)
    batches = calibration_batches(cfg, model, cfg.calibration)
    include = [
        r'conv_out\.0$', r'encoder_layer2\.2\.0$',
        r'voxel_sa_layers\.1\.mlps\.0\.layer1', r'fusion_layer',
        r'roi_grid_pool_layer\.mlps\.0\.layer1', r'shared_fc_layer\.2'
    ]
    result = RDChannelPruner(
        budget=0.5, num_levels=3,
        targets=dict(include=include)).prune(model, batches)
    assert len(result.groups) == len(include)
    assert result.achieved_budget <= 0.5
    assert result.unpruned_distortion == 0
    assert result.measured_distortion > 0
    assert any(g.channels_after < g.channels_before for g in result.groups)
    slim, _ = slim_copy(model, result.keeps)
    head = HeadOutputs(model)
    with torch.no_grad():
        masked = head(batches[0])
    assert_outputs_close(run(dict(head=head, batch=batches[0]), slim),
                         masked)
