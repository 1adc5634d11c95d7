"""RDChannelPruner: the exact budget, the allocator's optimum on the
separable costs (brute force on a toy network of three groups), masked ==
slim on CenterPoint (reduced grid, real nuScenes frame) and RetinaNet R-50
(a 128 x 160 image), and the slim export of tools/prune.py: slim.pth,
structure.json and slim_config.py rebuilt through ``type='SlimDetector'``."""
import copy
import itertools
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import load_checkpoint
from torch import nn

from conftest import load_tool
from rdprune_mm.apis import build_detector
from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.channels import (channel_counts, channel_structure,
                                 find_channel_groups, register_channel_rule,
                                 separable_costs, slim_copy,
                                 total_cost_after)
from rdprune_mm.errors import PruningInputError
from rdprune_mm.flops import measure_flops
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.pruners import ChannelPruningResult, RDChannelPruner
from rdprune_mm.registry import PRUNERS
from rdprune_mm.targets import find_targets
from test_channel_groups import build_retinanet, image_batches
from test_slim import assert_outputs_close as assert_close
from test_slim import randomize_norms

prune_tool = load_tool('prune')
REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CHANNEL_CENTERPOINT = osp.join(REPO, 'configs', 'centerpoint',
                               'rd-channel_centerpoint_voxel02-quick_nus.py')
#: Groups of every coupling kind (sparse residual chain and block, the BEV
#: reshape, dense backbone, SECONDFPN concat, CenterHead's shared conv and
#: one task's branches), 16 of CenterPoint's 64.
CENTERPOINT_GROUPS = [
    r'encoder_layer4', r'conv_out', r'pts_backbone\.blocks\.1\.(9|12|15)$',
    r'pts_neck', r'shared_conv', r'task_heads\.0\.'
]


# ---------------------------------------------------------------- toy
class TinyDetector(nn.Module):
    """conv1 (group A) feeds conv2 (B) and conv3 (C); the head reads
    cat(B, C): layers between two groups, and a concatenation."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(8, 4, 1)
        self.bn3 = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(10, 2, 1)

    def forward(self, inputs, data_samples=None, mode='predict'):
        a = torch.relu(self.bn1(self.conv1(inputs)))
        b = torch.relu(self.bn2(self.conv2(a)))
        c = torch.relu(self.bn3(self.conv3(a)))
        return self.head(torch.cat([b, c], 1))


@register_channel_rule(TinyDetector)
def _tiny_rule(tracer, model):
    # torch.relu maps 0 to 0 and keeps channels: nothing to trace
    a = tracer.call(model.bn1, tracer.call(model.conv1, tracer.input(3)))
    b = tracer.call(model.bn2, tracer.call(model.conv2, a))
    c = tracer.call(model.bn3, tracer.call(model.conv3, a))
    return tracer.call(model.head, tracer.cat([b, c]))


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = TinyDetector().eval()
    randomize_norms(model, seed)
    generator = torch.Generator().manual_seed(seed)
    batches = [dict(inputs=torch.randn(1, 3, 12, 12, generator=generator),
                    data_samples=None) for _ in range(2)]
    return model, batches


def tiny_pruner(**kwargs):
    return RDChannelPruner(**{**dict(head_modules=['head'], num_levels=4,
                                     resolution=10**6), **kwargs})


def dense_costs(model, batches, budget_by):
    targets = find_targets(model)
    if budget_by == 'params':
        return {t.name: float(t.num_params) for t in targets}
    return measure_flops(model, targets, batches,
                         HeadOutputs(model, ['head']))


@pytest.mark.parametrize('budget_by', ['flops', 'params'])
@pytest.mark.parametrize('budget', [0.15, 0.3, 0.45, 0.6, 0.8, 0.95])
def test_tiny_exact_cost_meets_budget(budget, budget_by):
    model, batches = tiny_setup()
    groups = find_channel_groups(model)
    dense = dense_costs(model, batches, budget_by)
    result = tiny_pruner(budget=budget, budget_by=budget_by).prune(
        model, batches)
    counts = {name: int(keep.sum()) for name, keep in result.keeps.items()}
    exact = total_cost_after(groups, counts, dense)
    assert exact <= budget * sum(dense.values())
    assert result.achieved_budget == pytest.approx(
        exact / sum(dense.values()))
    assert result.achieved_budget <= budget
    # the search never ends below the plain allocation on the bound
    assert result.allocator_budget >= min(budget, result.separable_cost)


@pytest.mark.parametrize('budget_by', ['flops', 'params'])
def test_tiny_allocation_is_the_optimum_of_the_separable_costs(budget_by):
    model, batches = tiny_setup(1)
    groups = find_channel_groups(model)
    assert [g.num_channels for g in groups] == [8, 6, 4]
    dense = dense_costs(model, batches, budget_by)
    total = sum(dense.values())
    budget = 0.4
    pruner = tiny_pruner(budget=budget, budget_by=budget_by)
    result = pruner.prune(model, batches)
    counts = channel_counts(groups, 1 - pruner.sparsities)
    tables, fixed = separable_costs(groups, counts, dense)
    curves = [result.curves[g.name] for g in groups]
    chosen = tuple(g.level for g in result.groups)

    def brute_force(cost_of, limit):
        feasible = [
            levels for levels in itertools.product(
                *(range(len(c)) for c in curves))
            if cost_of(levels) <= limit * (1 + 1e-12)
        ]
        assert feasible
        return min(sum(c[k] for c, k in zip(curves, levels))
                   for levels in feasible)

    def separable(levels):
        return fixed + sum(t[k] for t, k in zip(tables, levels))

    def exact(levels):
        return total_cost_after(
            groups, {g.name: int(c[k])
                     for g, c, k in zip(groups, counts, levels)}, dense)

    every = list(itertools.product(*(range(len(c)) for c in curves)))
    assert all(exact(levels) <= separable(levels) * (1 + 1e-12)
               for levels in every)
    assert separable(chosen) == pytest.approx(result.separable_cost * total)
    assert separable(chosen) <= result.allocator_budget * total * (1 + 1e-9)
    # the DP's optimum at the budget it was given ...
    assert result.predicted_distortion == pytest.approx(
        brute_force(separable, result.allocator_budget * total))
    # ... is at least as good as the DP at the asked budget, and no better
    # than the true optimum of the exact (non-separable) costs
    assert result.predicted_distortion <= brute_force(
        separable, budget * total) + 1e-12
    assert result.predicted_distortion >= brute_force(
        exact, budget * total) - 1e-12
    assert exact(chosen) <= budget * total


def test_separable_costs_bound_the_exact_cost(centerpoint):
    model, _ = centerpoint
    groups = find_channel_groups(model)
    dense = {t.name: float(t.num_params) for t in find_targets(model)}
    shares = np.linspace(1, 0, 9)
    counts = channel_counts(groups, shares)
    tables, fixed = separable_costs(groups, counts, dense)
    assert fixed + sum(t[0] for t in tables) == pytest.approx(
        sum(dense.values()))
    # every group of CenterPoint has an even channel count: at the uniform
    # share 1/2 the bound is exact (the first layer and the prediction
    # convs, with groups on one side, are linear)
    half = 4
    assert all(c[half] * 2 == g.num_channels for g, c in zip(groups, counts))
    exact = total_cost_after(
        groups, {g.name: int(c[half]) for g, c in zip(groups, counts)},
        dense)
    assert fixed + sum(t[half] for t in tables) == pytest.approx(exact)
    generator = np.random.default_rng(0)
    for _ in range(20):
        levels = generator.integers(0, len(shares), len(groups))
        exact = total_cost_after(
            groups, {g.name: int(c[k])
                     for g, c, k in zip(groups, counts, levels)}, dense)
        bound = fixed + sum(t[k] for t, k in zip(tables, levels))
        assert exact <= bound * (1 + 1e-12)
    assert channel_counts(groups[:1], [0.0], min_keep=0.3)[0][0] == 5  # 16


def test_budget_one_keeps_every_channel():
    model, batches = tiny_setup()
    result = tiny_pruner(budget=1.0).prune(model, batches)
    assert all(g.channels_after == g.channels_before for g in result.groups)
    assert result.achieved_budget == pytest.approx(1.0)
    assert result.measured_distortion == 0


def test_bad_settings_refused():
    model, batches = tiny_setup()
    for kwargs, message in ((dict(budget=0), 'outside'),
                            (dict(ranking='taylor'), 'ranking'),
                            (dict(budget_by='bytes'), 'budget_by'),
                            (dict(num_levels=1), 'num_levels')):
        with pytest.raises(PruningInputError, match=message):
            tiny_pruner(**kwargs)
    with pytest.raises(PruningInputError, match='least that'):
        tiny_pruner(budget=0.01, min_keep=0.5).prune(model, batches)
    with pytest.raises(PruningInputError, match='RDWeightPruner only'):
        tiny_pruner().prune(model, batches, keep_within={'conv1': None})
    result = tiny_pruner(budget=0.5).prune(model, batches)
    with pytest.raises(PruningInputError, match='slim model'):
        result.masks  # RDPruneHook holds weight masks only


# ---------------------------------------------------------------- detectors
@pytest.fixture(scope='module')
def centerpoint():
    cfg = Config.fromfile(CHANNEL_CENTERPOINT)
    model, _ = build_detector(cfg)
    batches = calibration_batches(cfg, model, cfg.calibration)
    recalibrate_batchnorm(model, batches)
    return model, batches


def slim_costs(slim, batches, result):
    """FLOPs and weights of the result's layers, measured on the slim
    model; checked layer by layer against the result's exact costs."""
    targets = find_targets(slim)
    flops = measure_flops(slim, targets, batches, HeadOutputs(slim))
    params = {t.name: t.num_params for t in targets}
    for layer in result.layer_costs:
        assert flops[layer.name] == pytest.approx(layer.flops_after,
                                                  rel=1e-9), layer.name
        assert params[layer.name] == pytest.approx(layer.params_after)
    names = [layer.name for layer in result.layer_costs]
    return (sum(flops[n] for n in names), sum(params[n] for n in names))


@pytest.mark.parametrize('budget_by', ['flops', 'params'])
def test_centerpoint_budget_exact_and_masked_equals_slim(
        centerpoint, budget_by, tmp_path_factory):
    dense, batches = centerpoint
    model = copy.deepcopy(dense)
    pruner = PRUNERS.build(
        dict(type='RDChannelPruner', budget=0.5, budget_by=budget_by,
             num_levels=3, targets=dict(include=CENTERPOINT_GROUPS)))
    cache = str(tmp_path_factory.getbasetemp() / 'centerpoint_curves')
    result = pruner.prune(model, batches, cache_dir=cache)
    assert isinstance(result, ChannelPruningResult)
    assert len(result.groups) == 16
    assert {layer.kind for layer in result.layer_costs} >= {
        'spconv', 'conv', 'deconv'}
    assert any(g.channels_after < g.channels_before for g in result.groups)
    assert result.achieved_budget <= 0.5
    assert result.measured_distortion > 0

    masked = HeadOutputs(model)(batches[0])
    slim, structure = slim_copy(model, result.keeps)
    assert_close(HeadOutputs(slim)(batches[0]), masked)
    # the exact costs are those of the slim model, measured on it
    flops, params = slim_costs(slim, batches, result)
    kept = flops / result.flops_before if budget_by == 'flops' else \
        params / result.params_before
    assert kept <= 0.5
    assert sorted(structure['groups']) == sorted(
        g.name for g in result.groups
        if g.channels_after < g.channels_before)


def test_retinanet_small_image_masked_equals_slim():
    model, cfg = build_retinanet()
    batches = image_batches(cfg, model)
    recalibrate_batchnorm(model, batches)
    randomize_norms(model)
    pruner = RDChannelPruner(budget=0.5, num_levels=3)
    result = pruner.prune(model, batches)
    assert len(result.groups) == 47
    assert result.achieved_budget <= 0.5
    masked = HeadOutputs(model)(batches[0])
    slim, structure = slim_copy(model, result.keeps)
    assert_close(HeadOutputs(slim)(batches[0]), masked)
    assert sum(p.numel() for p in slim.parameters()) < sum(
        p.numel() for p in model.parameters())
    flops, _ = slim_costs(slim, batches, result)
    assert flops <= 0.5 * result.flops_before
    # the structure rebuilds the slim model from a fresh one of the config
    fresh = build_retinanet(seed=1)[0]
    init_default_scope('mmdet')
    rebuilt = MODELS.build(dict(type='SlimDetector', detector=cfg.model,
                                structure=json.loads(json.dumps(structure))))
    rebuilt.load_state_dict(slim.state_dict(), strict=True)
    assert_close(HeadOutputs(rebuilt.eval())(batches[0]), masked)
    assert type(rebuilt) is type(fresh)


# ---------------------------------------------------------------- the tool
@pytest.fixture(scope='module')
def tool_run(tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('channel_prune'))
    argv = [
        CHANNEL_CENTERPOINT, '--work-dir', work_dir, '--cfg-options',
        'pruner.num_levels=3',
        'pruner.targets.include=[pts_neck,shared_conv,task_heads.0.]'
    ]
    assert prune_tool.main(argv) == 0
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    return work_dir, report, argv


def test_tool_writes_masked_and_slim_models(tool_run):
    work_dir, report, _ = tool_run
    for name in ('pruned.pth', 'allocation.json', 'config.py', 'curves.png',
                 'allocation.png', 'slim.pth', 'structure.json',
                 'slim_config.py'):
        assert osp.isfile(osp.join(work_dir, name)), name
    assert report['pruning'] == 'channels'
    assert report['budget']['unit'] == 'flops'
    assert report['budget']['achieved'] <= 0.5
    groups = report['layers']
    assert len(groups) == 9
    for group in groups:
        assert group['kept_share'] == pytest.approx(
            group['channels_after'] / group['channels_before'])
        assert group['flops_after'] <= group['flops_before']
    totals = report['totals']
    assert totals['flops_after'] == pytest.approx(
        sum(layer['flops_after'] for layer in report['weight_layers']))
    assert totals['flops_kept'] == report['budget']['achieved']
    with open(osp.join(work_dir, 'structure.json')) as f:
        structure = json.load(f)
    for group in groups:
        entry = structure['groups'].get(group['name'])
        kept = group['channels_before'] if entry is None else len(
            entry['keep'])
        assert kept == group['channels_after']


def test_slim_config_builds_and_loads_slim_checkpoint(tool_run):
    work_dir, _, _ = tool_run
    cfg = Config.fromfile(osp.join(work_dir, 'slim_config.py'))
    assert cfg.model.type == 'SlimDetector'
    assert cfg.model.structure == osp.join(work_dir, 'structure.json')
    init_default_scope(cfg.default_scope)
    slim = MODELS.build(cfg.model)
    load_checkpoint(slim, osp.join(work_dir, 'slim.pth'), map_location='cpu',
                    strict=True)
    slim.eval()
    masked, meta = build_detector(Config.fromfile(CHANNEL_CENTERPOINT),
                                  osp.join(work_dir, 'pruned.pth'))
    assert meta['rdprune_mm']['budget'] == 0.5
    batches = calibration_batches(cfg, masked, cfg.calibration)
    with torch.no_grad():
        assert_close(HeadOutputs(slim)(batches[0]),
                     HeadOutputs(masked)(batches[0]))
        # the full predict path (decoding, NMS) too
        slim_boxes = slim(**batches[0], mode='predict')[0]
        masked_boxes = masked(**batches[0], mode='predict')[0]
    torch.testing.assert_close(slim_boxes.pred_instances_3d.scores_3d,
                               masked_boxes.pred_instances_3d.scores_3d)
    assert sum(p.numel() for p in slim.parameters()) < sum(
        p.numel() for p in masked.parameters())
    structure = torch.load(osp.join(work_dir, 'slim.pth'),
                           weights_only=False)['meta']['rdprune_mm'][
                               'channel_structure']
    assert structure['groups'] == channel_structure(slim)['groups']


def test_runner_builds_slim_config(tool_run, tmp_path):
    """What mmdet3d's tools/test.py does: Runner.from_cfg, load_from."""
    from mmengine.runner import Runner
    work_dir, _, _ = tool_run
    cfg = Config.fromfile(osp.join(work_dir, 'slim_config.py'))
    cfg.work_dir = str(tmp_path)
    cfg.load_from = osp.join(work_dir, 'slim.pth')
    runner = Runner.from_cfg(cfg)
    runner.load_checkpoint(cfg.load_from, strict=True)
    state = torch.load(cfg.load_from, weights_only=False)['state_dict']
    loaded = runner.model.state_dict()
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_tool_refuses_to_overwrite_slim_outputs(tool_run, capsys):
    work_dir, _, argv = tool_run
    stamp = osp.getmtime(osp.join(work_dir, 'slim.pth'))
    assert prune_tool.main(argv) == 2
    err = capsys.readouterr().err
    assert '--overwrite' in err and 'slim.pth' in err
    assert osp.getmtime(osp.join(work_dir, 'slim.pth')) == stamp


def test_tool_refuses_when_only_slim_outputs_exist(tool_run, tmp_path,
                                                   capsys):
    work_dir, _, argv = tool_run
    (tmp_path / 'structure.json').write_text('{}')
    other = [argv[0], '--work-dir', str(tmp_path), *argv[3:]]
    assert prune_tool.main(other) == 2
    assert 'structure.json' in capsys.readouterr().err
    assert not osp.exists(tmp_path / 'slim.pth')


def test_slim_detector_refuses_a_missing_structure(tmp_path):
    init_default_scope('mmdet')
    with pytest.raises(PruningInputError, match='does not exist'):
        MODELS.build(dict(type='SlimDetector', detector=dict(type='x'),
                          structure=str(tmp_path / 'nope.json')))


RETINANET_CONFIG = osp.join(REPO, 'configs', 'retinanet',
                            'rd-channel_retinanet_r50_fpn_kitti-frame.py')


def test_tool_slims_retinanet_r50_on_a_small_image(tmp_path):
    """The repo's RetinaNet R-50 channel config end to end: a rendered real
    KITTI scene resized to 256 x 77, the bottleneck stage 3 and the FPN."""
    image = str(tmp_path / 'scene.png')
    assert load_tool('render_lidar_image').main(['--out', image]) == 0
    work_dir = str(tmp_path / 'work')
    options = [
        f'calibration.frames=[{image}]',
        'test_dataloader.dataset.pipeline.1.scale=(256,128)'
    ]
    argv = [
        RETINANET_CONFIG, '--work-dir', work_dir, '--cfg-options',
        *options, 'pruner.num_levels=3',
        r'pruner.targets.include=[layer3\.,neck\.]'
    ]
    assert prune_tool.main(argv) == 0
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    assert {g['name'] for g in report['layers']} >= {
        'backbone.layer3.0.conv3', 'neck.lateral_convs.0.conv',
        'neck.fpn_convs.0.conv'}
    assert report['budget']['achieved'] <= 0.5

    cfg = Config.fromfile(osp.join(work_dir, 'slim_config.py'))
    cfg.merge_from_dict(dict(model=dict(detector=dict(
        backbone=dict(init_cfg=None)))))
    init_default_scope(cfg.default_scope)
    slim = MODELS.build(cfg.model)
    load_checkpoint(slim, osp.join(work_dir, 'slim.pth'), map_location='cpu',
                    strict=True)
    slim.eval()
    original = Config.fromfile(RETINANET_CONFIG)
    original.merge_from_dict(dict(zip(
        [o.split('=')[0] for o in options],
        [[image], (256, 128)])))
    masked, _ = build_detector(original, osp.join(work_dir, 'pruned.pth'))
    batches = calibration_batches(original, masked, original.calibration)
    assert tuple(batches[0]['inputs'].shape[-2:]) == (96, 256)  # padded
    with torch.no_grad():
        assert_close(HeadOutputs(slim)(batches[0]),
                     HeadOutputs(masked)(batches[0]))
    assert sum(p.numel() for p in slim.parameters()) < sum(
        p.numel() for p in masked.parameters())
