"""Masked models equal slimmed models, for every coupling pattern.

Each detector (CenterPoint on the real nuScenes frame, SECOND on the real
KITTI frame, RetinaNet R-50 on a 128 x 160 image) gets BatchNorm statistics
from its frame and random BatchNorm scales and shifts (so that a masked
channel that BatchNorm turned into ``beta`` would show). Then, for each
coupling pattern, random channels of the pattern's groups are masked and,
on a copy, slimmed away: the head outputs (``HeadOutputs``, eval mode) must
agree. A slimmed model's structure rebuilds it from a fresh model of the
config, whose ``state_dict`` then loads with ``strict=True``.
"""
import copy
import json
import re

import pytest
import torch
from torch import nn

from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.channels import (apply_structure, channel_structure,
                                 check_channel_groups, cost_after,
                                 find_channel_groups, masked_channels,
                                 slim_model)
from rdprune_mm.channels.tracer import ChannelRuleError
from rdprune_mm.errors import PruningInputError
from rdprune_mm.flops import measure_flops
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.targets import find_targets
from test_channel_groups import FINAL_CONVS, MODELS

#: Coupling patterns: regular expressions over group names.
PATTERNS = dict(
    centerpoint=dict(
        sparse_residual_chain=r'conv_input\.0$|encoder_layer\d\.2\.0$',
        sparse_block_inner=r'encoder_layer\d\.\d\.conv1$',
        bev_reshape=r'conv_out\.0$',
        second_backbone=r'^pts_backbone\.',
        secondfpn_concat=r'^pts_neck\.deblocks',
        centerhead_shared_conv=r'shared_conv',
        separate_head_branches=r'task_heads',
        all=r'.'),
    second=dict(
        sparse_conv_chain=r'middle_encoder\.(conv_input|encoder_layers)',
        bev_reshape=r'conv_out\.0$',
        secondfpn_concat_to_anchor3d_head=r'^neck\.deblocks',
        all=r'.'),
    retinanet=dict(
        stem=r'^backbone\.conv1$',
        bottleneck_stage_residual=r'layer\d\.0\.conv3$',
        bottleneck_inner=r'layer\d\.\d+\.conv[12]$',
        fpn_laterals_top_down=r'lateral_convs',
        fpn_outputs_shared_head=r'fpn_convs',
        retina_head_stacked_convs=r'^bbox_head\.',
        all=r'.'))
CASES = [(model, pattern) for model, patterns in PATTERNS.items()
         for pattern in patterns]


def random_keeps(groups, seed=0, share=0.3):
    """Drop ``share`` of every group's channels (2 at least, 1 kept)."""
    generator = torch.Generator().manual_seed(seed)
    keeps = {}
    for group in groups:
        count = group.num_channels
        drop = min(max(2, int(share * count)), count - 1)
        keep = torch.ones(count, dtype=torch.bool)
        keep[torch.randperm(count, generator=generator)[:drop]] = False
        keeps[group.name] = keep
    return keeps


def randomize_norms(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.2, generator=generator)


def assert_outputs_close(actual, expected):
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        scale = float(tensor.abs().max()) or 1.0
        torch.testing.assert_close(
            actual[name], tensor, rtol=1e-4, atol=1e-5 * scale)


def run(model, batch):
    with torch.no_grad():
        return HeadOutputs(model)(batch)


@pytest.fixture(scope='module')
def setups():
    """Per model: the model, its config, one batch, reference outputs and
    its channel groups (built lazily, once)."""
    cache = {}

    def get(name):
        if name not in cache:
            build, make_batches = MODELS[name]
            model, cfg = build()
            batches = make_batches(cfg, model)
            recalibrate_batchnorm(model, batches)
            randomize_norms(model)
            groups = find_channel_groups(model)
            cache[name] = dict(
                model=model, cfg=cfg, batch=batches[0], groups=groups,
                reference=run(model, batches[0]))
        return cache[name]

    return get


@pytest.mark.parametrize('name,pattern', CASES,
                         ids=[f'{m}-{p}' for m, p in CASES])
def test_masked_equals_slimmed(setups, name, pattern):
    setup = setups(name)
    model, batch = setup['model'], setup['batch']
    selected = [
        g for g in setup['groups']
        if re.search(PATTERNS[name][pattern], g.name)
    ]
    assert selected
    keeps = random_keeps(selected)
    state = copy.deepcopy(model.state_dict())
    with masked_channels(selected, keeps):
        masked = run(model, batch)
    # the context restores every weight and buffer exactly
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert any(not torch.allclose(masked[k], setup['reference'][k])
               for k in masked), 'masking changed nothing'

    slim = copy.deepcopy(model)
    slim_groups = find_channel_groups(slim)
    slim_model(slim, slim_groups, keeps)
    params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in slim.parameters()) < params
    assert_outputs_close(run(slim, batch), masked)


@pytest.mark.parametrize('name', list(MODELS))
def test_structure_round_trip(setups, name):
    setup = setups(name)
    slim = copy.deepcopy(setup['model'])
    groups = find_channel_groups(slim)
    keeps = random_keeps(groups, seed=1)
    structure = json.loads(json.dumps(slim_model(slim, groups, keeps)))
    assert structure == channel_structure(slim)
    assert sorted(structure['groups']) == sorted(keeps)
    expected = run(slim, setup['batch'])

    fresh = MODELS[name][0](seed=1)[0]
    apply_structure(fresh, structure)
    fresh.load_state_dict(slim.state_dict(), strict=True)
    assert_outputs_close(run(fresh.eval(), setup['batch']), expected)
    with pytest.raises(PruningInputError, match='channels, the structure'):
        apply_structure(fresh, structure)  # already slimmed


@pytest.mark.parametrize('name', list(MODELS))
def test_prediction_convs_untouched(setups, name):
    setup = setups(name)
    model = setup['model']
    slim = copy.deepcopy(model)
    groups = find_channel_groups(slim)
    keeps = random_keeps(groups, seed=2)
    slim_model(slim, groups, keeps)
    original = dict(model.named_modules())
    finals = [(n, m) for n, m in slim.named_modules()
              if re.search(FINAL_CONVS[name], n)]
    assert finals
    for layer_name, layer in finals:
        before = original[layer_name]
        assert layer.out_channels == before.out_channels
        assert torch.equal(layer.bias, before.bias)
        # only the input channels of the pruned groups are gone
        kept = torch.ones(before.in_channels, dtype=torch.bool)
        for group in groups:
            for consumer in group.consumers:
                if consumer.name == layer_name:
                    kept[consumer.entries(
                        (~keeps[group.name]).nonzero().flatten())] = False
        assert torch.equal(layer.weight, before.weight[:, kept])


@pytest.mark.parametrize('name', list(MODELS))
def test_masked_channels_reach_consumers_as_zeros(setups, name):
    setup = setups(name)
    calls = check_channel_groups(
        setup['groups'], lambda: run(setup['model'], setup['batch']))
    consumers = {c.name for g in setup['groups'] for c in g.consumers}
    assert set(calls) == consumers


def test_wrong_index_map_detected(setups):
    setup = setups('centerpoint')
    group = next(g for g in setup['groups']
                 if g.name == 'pts_middle_encoder.conv_out.0')
    wrong = copy.copy(group)
    consumer = copy.copy(group.consumers[0])
    # channel-major instead of c * D + d
    consumer.index = (torch.arange(2)[None, :] * 128 +
                      torch.arange(128)[:, None])
    wrong.consumers = [consumer]
    with pytest.raises(ChannelRuleError, match='pts_backbone.blocks.0.0'):
        check_channel_groups([wrong],
                             lambda: run(setup['model'], setup['batch']))


def test_slimming_twice_composes(setups):
    setup = setups('centerpoint')
    slim = copy.deepcopy(setup['model'])
    groups = find_channel_groups(slim)
    slim_model(slim, groups, random_keeps(groups, seed=3))
    again = find_channel_groups(slim)
    name = 'pts_backbone.blocks.0.0'
    second = {name: random_keeps(again, seed=4)[name]}
    structure = slim_model(slim, again, second)
    first_keep = random_keeps(groups, seed=3)[name].nonzero().flatten()
    assert structure['groups'][name]['keep'] == first_keep[
        second[name]].tolist()
    assert structure['groups'][name]['num_channels'] == 128

    fresh = MODELS['centerpoint'][0]()[0]
    apply_structure(fresh, structure)
    fresh.load_state_dict(slim.state_dict(), strict=True)
    assert_outputs_close(
        run(fresh.eval(), setup['batch']), run(slim, setup['batch']))


def test_cost_after_matches_slimmed_params_and_flops(setups):
    setup = setups('centerpoint')
    model, batch = setup['model'], setup['batch']
    targets = find_targets(model)
    groups = setup['groups']
    keeps = random_keeps(groups, seed=5)
    counts = {name: int(keep.sum()) for name, keep in keeps.items()}
    dense_flops = measure_flops(model, targets, [batch], HeadOutputs(model))
    predicted_params = cost_after(groups, counts,
                                  {t.name: t.num_params for t in targets})
    predicted_flops = cost_after(groups, counts, dense_flops)

    slim = copy.deepcopy(model)
    slim_model(slim, find_channel_groups(slim), keeps)
    slim_targets = find_targets(slim)
    slim_flops = measure_flops(slim, slim_targets, [batch], HeadOutputs(slim))
    for target in slim_targets:
        assert predicted_params[target.name] == pytest.approx(
            target.num_params)
        assert predicted_flops[target.name] == pytest.approx(
            slim_flops[target.name])
    assert sum(slim_flops.values()) < 0.8 * sum(dense_flops.values())


def test_bad_keeps_refused(setups):
    setup = setups('retinanet')
    groups = setup['groups']
    group = groups[0]
    slim = copy.deepcopy(setup['model'])
    slim_groups = find_channel_groups(slim)
    none_kept = torch.zeros(group.num_channels, dtype=torch.bool)
    with pytest.raises(PruningInputError, match='keeps no channel'):
        slim_model(slim, slim_groups, {group.name: none_kept})
    with pytest.raises(PruningInputError, match='must be a bool tensor'):
        slim_model(slim, slim_groups, {group.name: torch.ones(3).bool()})
    with pytest.raises(PruningInputError, match='unknown channel group'):
        slim_model(slim, slim_groups, {'nope': none_kept})
    with pytest.raises(PruningInputError, match='not a module of this'):
        slim_model(slim, groups, {group.name: group.keep_mask(1)})
    with pytest.raises(PruningInputError, match='not a channel structure'):
        apply_structure(slim, {'groups': {}})
