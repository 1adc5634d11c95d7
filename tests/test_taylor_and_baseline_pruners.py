"""Taylor curves and ranking, and the magnitude baselines, selected in the
config and run through tools/prune.py on the reduced CenterPoint."""
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import QUICK_CENTERPOINT, REPO, load_tool
from rdprune_mm.apis import build_detector
from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.channels import find_channel_groups
from rdprune_mm.errors import PruningInputError
from rdprune_mm.registry import PRUNERS
from rdprune_mm.sketch import GradientSketch

prune_tool = load_tool('prune')

INCLUDE = ('pruner.targets.include=[pts_middle_encoder.conv_input,'
           'pts_neck,task_heads.0.]')


def _run(work_dir, *options):
    argv = [QUICK_CENTERPOINT, '--work-dir', str(work_dir), '--cfg-options',
            INCLUDE, *options]
    assert prune_tool.main(argv) == 0
    with open(osp.join(work_dir, 'allocation.json')) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def model_and_batches():
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    model, _ = build_detector(cfg)
    batches = calibration_batches(cfg, model, cfg.calibration)
    recalibrate_batchnorm(model, batches)
    return cfg, model, batches


def test_taylor_curves_from_the_config_are_cached(tmp_path, monkeypatch):
    report = _run(tmp_path, 'pruner.curves=taylor', 'pruner.num_levels=6',
                  'pruner.sketch.num_projections=4', 'pruner.budget=0.4')
    layers = report['layers']
    assert report['totals']['params_after'] <= 0.4 * report['totals'][
        'params_before']
    assert report['totals']['predicted_distortion'] == pytest.approx(
        sum(layer['predicted_distortion'] for layer in layers))
    assert report['totals']['measured_distortion'] > 0

    def no_sketch(*args, **kwargs):
        raise AssertionError('the curves should come from the cache')

    monkeypatch.setattr(GradientSketch, 'measure', no_sketch)
    again = _run(tmp_path, 'pruner.curves=taylor', 'pruner.num_levels=6',
                 'pruner.sketch.num_projections=4', 'pruner.budget=0.4',
                 '--overwrite')
    assert [layer['level'] for layer in again['layers']] == [
        layer['level'] for layer in layers
    ]


def test_taylor_ranking_prunes_the_lowest_scores(model_and_batches):
    cfg, model, batches = model_and_batches
    pruner = PRUNERS.build(
        dict(cfg.pruner, targets=dict(include=['task_heads.0.']),
             num_levels=5, ranking='taylor', curves='taylor', budget=0.5,
             sketch=dict(num_projections=4, seed=0)))
    targets = pruner.find_targets(model)
    original = [t.weight.detach().clone() for t in targets]
    rd = pruner.rate_distortion(model, batches)
    try:
        result = pruner.prune(model, batches)
        magnitude_orders = [
            torch.argsort(w.abs().flatten(), stable=True) for w in original
        ]
        differs = 0
        for target, order, weight, by_magnitude in zip(
                targets, rd.orders, original, magnitude_orders):
            mask = result.masks[target.name].flatten()
            pruned = int((~mask).sum())
            assert set(order[:pruned].tolist()) == set(
                torch.nonzero(~mask).flatten().tolist())
            differs += not torch.equal(order, by_magnitude)
        assert differs > 0
    finally:
        with torch.no_grad():
            for target, weight in zip(targets, original):
                target.weight.copy_(weight)


def test_a_baseline_goes_through_the_same_tool(tmp_path):
    report = _run(tmp_path, 'pruner.type=MagnitudeWeightPruner',
                  'pruner.allocation=lamp', 'pruner.budget=0.3',
                  'pruner.budget_by=flops')
    totals = report['totals']
    assert totals['flops_after'] <= 0.3 * totals['flops_before'] * (1 + 1e-9)
    assert totals['predicted_distortion'] is None
    assert totals['measured_distortion'] > 0
    pruned, _ = build_detector(Config.fromfile(QUICK_CENTERPOINT),
                               osp.join(tmp_path, 'pruned.pth'))
    modules = dict(pruned.named_modules())
    for layer in report['layers']:
        weight = modules[layer['name']].weight
        assert int((weight != 0).sum()) <= layer['params_after']
    assert osp.isfile(osp.join(tmp_path, 'allocation.png'))


@pytest.mark.parametrize('budget_by', ['params', 'flops'])
def test_every_baseline_meets_the_budget(model_and_batches, budget_by):
    cfg, model, batches = model_and_batches
    targets = None
    shares = {}
    for allocation in ('uniform', 'global', 'lamp', 'erk'):
        pruner = PRUNERS.build(
            dict(cfg.pruner, type='MagnitudeWeightPruner',
                 allocation=allocation, budget=0.3, budget_by=budget_by,
                 targets=dict(include=['pts_neck', 'task_heads.0.'])))
        targets = targets or pruner.find_targets(model)
        original = [t.weight.detach().clone() for t in targets]
        try:
            result = pruner.prune(model, batches)
        finally:
            with torch.no_grad():
                for target, weight in zip(targets, original):
                    target.weight.copy_(weight)
        assert result.achieved_budget <= 0.3 * (1 + 1e-9)
        assert result.achieved_budget >= 0.25
        assert result.measured_distortion > 0
        shares[allocation] = np.array(
            [layer.params_after / layer.params_before
             for layer in result.layers])
    if budget_by == 'params':
        assert np.ptp(shares['uniform']) < 0.01
    for allocation in ('global', 'lamp', 'erk'):
        assert np.ptp(shares[allocation]) > 0.05


def test_bad_choices_name_the_setting():
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    for override, setting in ((dict(curves='hessian'), 'pruner.curves'),
                              (dict(ranking='random'), 'pruner.ranking'),
                              (dict(sketch=dict(num_projections=0)),
                               'pruner.sketch')):
        with pytest.raises(PruningInputError, match=setting):
            PRUNERS.build(dict(cfg.pruner, **override))
    with pytest.raises(PruningInputError, match='pruner.allocation'):
        PRUNERS.build(dict(type='MagnitudeWeightPruner', allocation='snip'))


@pytest.mark.parametrize('allocation', ['uniform', 'global', 'lamp', 'erk'])
def test_baseline_configs_differ_from_rd_only_in_the_allocation(allocation):
    """The shipped baseline configs compare at equal terms: same budget,
    calibration, model, data and fine-tuning schedule as the RD config."""
    folder = osp.join(REPO, 'configs', 'kitti_like')
    rd = Config.fromfile(
        osp.join(folder, 'rd-weight_second_tiny_kitti-like.py')).to_dict()
    baseline = Config.fromfile(
        osp.join(folder,
                 f'{allocation}-weight_second_tiny_kitti-like.py')).to_dict()
    rd_pruner, pruner = rd.pop('pruner'), baseline.pop('pruner')
    assert baseline == rd
    assert pruner.pop('type') == 'MagnitudeWeightPruner'
    assert pruner.pop('allocation') == allocation
    assert rd_pruner.pop('type') == 'RDWeightPruner'
    assert pruner == rd_pruner
    PRUNERS.build(dict(pruner, type='MagnitudeWeightPruner',
                       allocation=allocation))


def test_channel_config_prunes_the_same_model_on_the_same_frames():
    """The channel config of the demo's SECOND calibrates like the weight
    config and finds groups in the sparse encoder, backbone and neck."""
    folder = osp.join(REPO, 'configs', 'kitti_like')
    weight = Config.fromfile(
        osp.join(folder, 'rd-weight_second_tiny_kitti-like.py'))
    channel = Config.fromfile(
        osp.join(folder, 'rd-channel_second_tiny_kitti-like.py'))
    assert channel.pruner.type == 'RDChannelPruner'
    assert channel.model == weight.model
    assert channel.calibration == weight.calibration
    model, _ = build_detector(channel)
    parts = {g.name.split('.')[0] for g in find_channel_groups(model)}
    assert parts == {'middle_encoder', 'backbone', 'neck'}
