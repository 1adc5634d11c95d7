"""Channel groups of PointPillars (hard and dynamic voxels) and PV-RCNN,
built from mmdet3d's shipped KITTI configs, against lists written by hand
from the architectures:

* PointPillars: the pillar encoder's linear layer and norm, read by the
  backbone through the BEV canvas (whose ``in_channels`` the group lowers),
  SECOND's conv chains, SECONDFPN's concatenation read by the head;
* PV-RCNN: the sparse stages, each also read by its voxel set abstraction
  after 3 xyz channels; the C * D BEV map read by the backbone, the keypoint
  fusion layer and the semantic head; the set-abstraction MLPs concatenated
  into the keypoint features; the fusion layer read by the RoI-grid
  pooling; the pooled grid read channel-major by the box head's first
  shared FC; the shared FC read by the class and box branches.
"""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from torch import nn

from rdprune_mm.apis import build_detector
from rdprune_mm.channels import find_channel_groups
from rdprune_mm.targets import find_targets
from test_channel_groups import MMDET3D_CONFIGS

POINTPILLARS_CONFIG = osp.join(
    MMDET3D_CONFIGS, 'pointpillars',
    'pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py')
DYNAMIC_POINTPILLARS_CONFIG = osp.join(
    MMDET3D_CONFIGS, 'dynamic_voxelization',
    'pointpillars_dv_secfpn_8xb6-160e_kitti-3d-car.py')
PV_RCNN_CONFIG = osp.join(MMDET3D_CONFIGS, 'pv_rcnn',
                          'pv_rcnn_8xb2-80e_kitti-3d-3class.py')
CONFIGS = dict(
    pointpillars=POINTPILLARS_CONFIG,
    pointpillars_dv=DYNAMIC_POINTPILLARS_CONFIG,
    pv_rcnn=PV_RCNN_CONFIG)
#: Variants with two pillar-encoder layers (the first read twice: its
#: point features and their pillar max, concatenated).
TWO_PFN_LAYERS = dict(model=dict(voxel_encoder=dict(feat_channels=[64, 64])))


def build(name, seed=0, options=None):
    """A detector of ``CONFIGS`` (``name`` may end in ``_2pfn``)."""
    two_layers = name.endswith('_2pfn')
    cfg = Config.fromfile(CONFIGS[name[:-len('_2pfn')] if two_layers
                                  else name])
    if two_layers:
        cfg.merge_from_dict(TWO_PFN_LAYERS)
    if options:
        cfg.merge_from_dict(options)
    return build_detector(cfg, seed=seed)[0], cfg


# ------------------------------------------------- hand-written groups
def group(channels, producers, norms, consumers, attributes=()):
    """Expected group: ``consumers`` are ``(name, offset, width)``: group
    channel ``c`` is read at ``(offset + c) * width + w``, ``w < width``."""
    return dict(channels=channels, producers=list(producers),
                norms=list(norms), consumers=list(consumers),
                attributes=list(attributes))


def second_groups(prefix, layer_nums, channels, neck):
    """SECOND: per block a conv (stride) then ``layer_nums[b]`` convs,
    ``Sequential`` indices 0, 3, 6, ... with the norm after each; a block's
    last conv feeds the next block and ``{neck}.deblocks.{b}.0``."""
    groups = {}
    for b, (num, width) in enumerate(zip(layer_nums, channels)):
        convs = [f'{prefix}.blocks.{b}.{3 * j}' for j in range(num + 1)]
        for j, conv in enumerate(convs):
            if j + 1 < len(convs):
                readers = [convs[j + 1]]
            else:
                readers = ([f'{prefix}.blocks.{b + 1}.0']
                           if b + 1 < len(layer_nums) else [])
                readers.append(f'{neck}.deblocks.{b}.0')
            groups[conv] = group(width, [conv],
                                 [f'{prefix}.blocks.{b}.{3 * j + 1}'],
                                 [(r, 0, 1) for r in readers])
    return groups


def secondfpn_groups(neck, channels, heads):
    """SECONDFPN: deblock outputs concatenated, read by every head conv."""
    return {
        f'{neck}.deblocks.{i}.0': group(
            width, [f'{neck}.deblocks.{i}.0'], [f'{neck}.deblocks.{i}.1'],
            [(h, sum(channels[:i]), 1) for h in heads])
        for i, width in enumerate(channels)
    }


def pointpillars_groups(dynamic):
    pfn, norm = (('voxel_encoder.pfn_layers.0.0',
                  'voxel_encoder.pfn_layers.0.1') if dynamic else
                 ('voxel_encoder.pfn_layers.0.linear',
                  'voxel_encoder.pfn_layers.0.norm'))
    groups = {
        pfn: group(64, [pfn], [norm], [('backbone.blocks.0.0', 0, 1)],
                   ['middle_encoder.in_channels'])
    }
    groups.update(second_groups('backbone', (3, 5, 5), (64, 128, 256),
                                'neck'))
    groups.update(secondfpn_groups(
        'neck', (128, 128, 128),
        ['bbox_head.conv_cls', 'bbox_head.conv_reg',
         'bbox_head.conv_dir_cls']))
    return groups


def sa_groups(prefix, widths, readers, offset):
    """A StackedSAModuleMSG's two-layer MLP per scale: layer0 -> layer1;
    layer1 of scale ``s`` is read by ``readers`` at ``offset`` plus the
    widths of the scales before."""
    groups = {}
    for s, width in enumerate(widths):
        mlp = f'{prefix}.mlps.{s}'
        groups[f'{mlp}.layer0.conv'] = group(
            width, [f'{mlp}.layer0.conv'], [f'{mlp}.layer0.bn'],
            [(f'{mlp}.layer1.conv', 0, 1)])
        groups[f'{mlp}.layer1.conv'] = group(
            width, [f'{mlp}.layer1.conv'], [f'{mlp}.layer1.bn'],
            [(name, offset + sum(widths[:s]), width_)
             for name, width_ in readers])
    return groups


def pv_rcnn_groups():
    enc = 'middle_encoder'
    stage = f'{enc}.encoder_layers.encoder_layer'
    vsa = 'points_encoder'
    fusion = f'{vsa}.point_feature_fusion_layer.0'
    semantic = 'roi_head.semantic_head.seg_cls_layer'
    keypoint_readers = [(f'{fusion}.conv', 1), (f'{semantic}.0', 1)]

    def sa_readers(k):
        return [(f'{vsa}.voxel_sa_layers.{k}.mlps.{s}.layer0.conv', 3, 1)
                for s in range(2)]

    groups = {
        f'{enc}.conv_input.0': group(16, [f'{enc}.conv_input.0'],
                                     [f'{enc}.conv_input.1'],
                                     [(f'{stage}1.0.0', 0, 1)])
    }
    # stage outputs: 16 (one conv), 32, 64, 64 (three convs each)
    convs = [f'{stage}1.0'] + [f'{stage}{k}.{j}' for k in (2, 3, 4)
                                for j in range(3)]
    widths = [16] + [32] * 3 + [64] * 6
    for i, (conv, width) in enumerate(zip(convs, widths)):
        following = convs[i + 1] if i + 1 < len(convs) else f'{enc}.conv_out'
        readers = [(f'{following}.0', 0, 1)]
        if conv.endswith(('1.0', '.2')):  # a stage's output
            readers += sa_readers(int(conv[len(stage)]) - 1)
        groups[f'{conv}.0'] = group(width, [f'{conv}.0'], [f'{conv}.1'],
                                    readers)
    # conv_out: 128 channels over 2 depth cells -> 256 BEV channels
    groups[f'{enc}.conv_out.0'] = group(
        128, [f'{enc}.conv_out.0'], [f'{enc}.conv_out.1'],
        [('backbone.blocks.0.0', 0, 2), (f'{fusion}.conv', 0, 2),
         (f'{semantic}.0', 0, 2)])
    groups.update(second_groups('backbone', (5, 5), (128, 256), 'neck'))
    groups.update(secondfpn_groups(
        'neck', (256, 256),
        ['rpn_head.conv_cls', 'rpn_head.conv_reg', 'rpn_head.conv_dir_cls']))
    # keypoint features: [BEV 256, raw SA 16 + 16, voxel SA per stage]
    offset = 256
    for prefix, widths in [(f'{vsa}.rawpoints_sa_layer', (16, 16)),
                           (f'{vsa}.voxel_sa_layers.0', (16, 16)),
                           (f'{vsa}.voxel_sa_layers.1', (32, 32)),
                           (f'{vsa}.voxel_sa_layers.2', (64, 64)),
                           (f'{vsa}.voxel_sa_layers.3', (64, 64))]:
        groups.update(sa_groups(prefix, widths, keypoint_readers, offset))
        offset += sum(widths)
    assert offset == 640
    grid = 'roi_head.bbox_roi_extractor.roi_grid_pool_layer'
    groups[f'{fusion}.conv'] = group(
        128, [f'{fusion}.conv'], [f'{fusion}.bn'],
        [(f'{grid}.mlps.{s}.layer0.conv', 3, 1) for s in range(2)])
    for i, j in ((0, 3), (3, 6)):
        groups[f'{semantic}.{i}'] = group(256, [f'{semantic}.{i}'],
                                          [f'{semantic}.{i + 1}'],
                                          [(f'{semantic}.{j}', 0, 1)])
    box = 'roi_head.bbox_head'
    # (R, 6, 6, 6, C) read as C * 216 channels, channel-major
    groups.update(sa_groups(grid, (64, 64),
                            [(f'{box}.shared_fc_layer.0.conv', 216)], 0))
    chain = [(f'{box}.shared_fc_layer.0', [f'{box}.shared_fc_layer.2']),
             (f'{box}.shared_fc_layer.2',
              [f'{box}.cls_layer.0', f'{box}.reg_layer.0'])]
    for branch in ('cls_layer', 'reg_layer'):
        chain += [(f'{box}.{branch}.0', [f'{box}.{branch}.2']),
                  (f'{box}.{branch}.2', [f'{box}.{branch}.3'])]
    for layer, readers in chain:
        groups[f'{layer}.conv'] = group(
            256, [f'{layer}.conv'], [f'{layer}.bn'],
            [(r if r.endswith('.3') else f'{r}.conv', 0, 1)
             for r in readers])
    return groups


EXPECTED = dict(
    pointpillars=lambda: pointpillars_groups(dynamic=False),
    pointpillars_dv=lambda: pointpillars_groups(dynamic=True),
    pv_rcnn=pv_rcnn_groups)
#: The prediction layers (the model's outputs): never in a group.
FINAL_LAYERS = dict(
    pointpillars=r'^bbox_head\.conv_(cls|reg|dir_cls)$',
    pointpillars_dv=r'^bbox_head\.conv_(cls|reg|dir_cls)$',
    pv_rcnn=(r'^rpn_head\.conv_(cls|reg|dir_cls)$|'
             r'semantic_head\.seg_cls_layer\.6$|'
             r'bbox_head\.(cls|reg)_layer\.3$'))
#: The layers that read the model's input (points, voxels).
FIRST_LAYERS = dict(
    pointpillars={'voxel_encoder.pfn_layers.0.linear'},
    pointpillars_dv={'voxel_encoder.pfn_layers.0.0'},
    pv_rcnn={
        'middle_encoder.conv_input.0',
        'points_encoder.rawpoints_sa_layer.mlps.0.layer0.conv',
        'points_encoder.rawpoints_sa_layer.mlps.1.layer0.conv'
    })


def expected_index(channels, offset, width):
    return ((offset + torch.arange(channels))[:, None] * width +
            torch.arange(width))


@pytest.fixture(scope='module')
def models():
    return {name: build(name)[0] for name in CONFIGS}


@pytest.mark.parametrize('name', list(CONFIGS))
def test_groups_match_the_hand_written_list(models, name):
    found = find_channel_groups(models[name])
    expected = EXPECTED[name]()
    assert len(found) == len(expected) == dict(
        pointpillars=20, pointpillars_dv=20, pv_rcnn=59)[name]
    # in forward order of their first producer
    assert [g.name for g in found] == list(expected)
    for actual in found:
        spec = expected[actual.name]
        assert actual.num_channels == spec['channels'], actual.name
        assert [p.name for p in actual.producers] == spec['producers']
        assert [n.name for n in actual.norms] == spec['norms']
        assert [(c.name, c.width) for c in actual.consumers] == [
            (c, w) for c, _, w in spec['consumers']], actual.name
        for consumer, (_, offset, width) in zip(actual.consumers,
                                                spec['consumers']):
            assert torch.equal(
                consumer.index,
                expected_index(actual.num_channels, offset, width)), (
                    actual.name, consumer.name)
        assert [f'{a.name}.{a.attr}' for a in actual.attributes
                ] == spec['attributes']
        for producer in actual.producers:
            assert torch.equal(producer.index,
                               expected_index(actual.num_channels, 0, 1))


@pytest.mark.parametrize('name', list(CONFIGS))
def test_every_layer_but_the_prediction_layers_is_pruned(models, name):
    model = models[name]
    groups = find_channel_groups(model)
    targets = {t.name for t in find_targets(model)}
    finals = {t for t in targets if re.search(FINAL_LAYERS[name], t)}
    assert len(finals) == dict(pv_rcnn=6).get(name, 3)
    producers = [p.name for g in groups for p in g.producers]
    assert len(producers) == len(set(producers))
    assert set(producers) == targets - finals
    consumers = {c.name for g in groups for c in g.consumers}
    assert consumers == targets - FIRST_LAYERS[name]
    norms = sorted(n.name for g in groups for n in g.norms)
    assert norms == sorted(
        n for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm))
    for g in groups:
        for layer in g.layers:
            assert layer.index.shape[0] == g.num_channels
            assert int(layer.index.max()) < layer.axis_size


@pytest.mark.parametrize('name,width', [('pointpillars_2pfn', 32),
                                        ('pointpillars_dv_2pfn', 64)])
def test_pfn_layer_read_twice_is_one_consumer_of_width_two(name, width):
    # a PFN layer that is not the last returns cat([x, pooled(x)]); the
    # dynamic encoder reads cat([point feats, pillar feats])
    model, _ = build(name)
    groups = {g.name: g for g in find_channel_groups(model)}
    dynamic = 'dv' in name
    first = 'voxel_encoder.pfn_layers.0.' + ('0' if dynamic else 'linear')
    second = 'voxel_encoder.pfn_layers.1.' + ('0' if dynamic else 'linear')
    consumer, = groups[first].consumers
    assert consumer.name == second
    assert groups[first].num_channels == width
    assert torch.equal(consumer.index,
                       torch.arange(width)[:, None] +
                       torch.tensor([0, width]))
    assert groups[first].attributes == []
    last = groups[second]
    assert [c.name for c in last.consumers] == ['backbone.blocks.0.0']
    assert [(a.name, a.attr) for a in last.attributes] == [
        ('middle_encoder', 'in_channels')]


def test_shipped_3class_pointpillars_has_the_same_encoder_groups(models):
    """The 3-class KITTI config differs only in its head's outputs."""
    cfg = Config.fromfile(
        osp.join(MMDET3D_CONFIGS, 'pointpillars',
                 'pointpillars_hv_secfpn_8xb6-160e_kitti-3d-3class.py'))
    three = find_channel_groups(build_detector(cfg)[0])
    car = find_channel_groups(models['pointpillars'])
    assert [(g.name, g.num_channels) for g in three] == [
        (g.name, g.num_channels) for g in car]
