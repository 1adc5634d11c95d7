"""Channel groups: the couplings found in CenterPoint (SparseEncoder with
SparseBasicBlocks, SECOND, SECONDFPN, CenterHead), SECOND (SparseEncoder of
conv modules, Anchor3DHead) and mmdet's RetinaNet R-50 (Bottleneck stages,
FPN, RetinaHead), built from the shipped configs; and the rule registry's
refusals on toy models."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from torch import nn

import rdprune_mm  # noqa: F401  (CPU kernels)
from conftest import LIDAR, NUSCENES_FRAME, QUICK_CENTERPOINT
from rdprune_mm.apis import build_detector
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.channels import (cost_after, find_channel_groups,
                                 register_channel_rule,
                                 trace_channel_groups)
from rdprune_mm.errors import PruningInputError
from rdprune_mm.targets import find_targets

MMDET3D_CONFIGS = osp.join(
    osp.dirname(__import__('mmdet3d').__file__), '.mim', 'configs')
MMDET_CONFIGS = osp.join(
    osp.dirname(__import__('mmdet').__file__), '.mim', 'configs')
SECOND_CONFIG = osp.join(MMDET3D_CONFIGS, 'second',
                         'second_hv_secfpn_8xb6-80e_kitti-3d-car.py')
RETINANET_CONFIG = osp.join(MMDET_CONFIGS, 'retinanet',
                            'retinanet_r50_fpn_1x_coco.py')
KITTI_FRAME = osp.join(LIDAR, '000008.bin')
IMAGE_SHAPE = (128, 160)


# ---------------------------------------------------------------- builders
def build_centerpoint(seed=0):
    """CenterPoint voxel 0.1 (SECOND + SECFPN) on a 256 x 256 x 41 grid."""
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    return build_detector(cfg, seed=seed)[0], cfg


def build_second(seed=0):
    """SECOND for KITTI cars on a quarter of its BEV range (800 x 704)."""
    cfg = Config.fromfile(SECOND_CONFIG)
    cfg.model.data_preprocessor.voxel_layer.point_cloud_range = [
        0, -20, -3, 35.2, 20, 1
    ]
    cfg.model.middle_encoder.sparse_shape = [41, 800, 704]
    return build_detector(cfg, seed=seed)[0], cfg


def build_retinanet(seed=0):
    """mmdet's RetinaNet R-50 FPN (no pretrained weights)."""
    cfg = Config.fromfile(RETINANET_CONFIG)
    cfg.model.backbone.init_cfg = None
    return build_detector(cfg, seed=seed)[0], cfg


def lidar_batches(cfg, model, frame):
    return calibration_batches(cfg, model, dict(frames=[frame]))


def image_batches(cfg, model):
    """One random 128 x 160 image, preprocessed."""
    from mmdet.structures import DetDataSample
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(
        0, 256, (3, *IMAGE_SHAPE), generator=generator, dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(
        img_shape=IMAGE_SHAPE, ori_shape=IMAGE_SHAPE, pad_shape=IMAGE_SHAPE,
        batch_input_shape=IMAGE_SHAPE, scale_factor=(1.0, 1.0)))
    return [
        model.data_preprocessor(
            dict(inputs=[image], data_samples=[sample]), False)
    ]


MODELS = dict(
    centerpoint=(build_centerpoint,
                 lambda cfg, model: lidar_batches(cfg, model,
                                                  NUSCENES_FRAME)),
    second=(build_second,
            lambda cfg, model: lidar_batches(cfg, model, KITTI_FRAME)),
    retinanet=(build_retinanet, image_batches))

#: The heads' prediction convs (the model's outputs).
FINAL_CONVS = dict(
    centerpoint=r'task_heads\.\d+\.\w+\.1$',
    second=r'bbox_head\.conv_(cls|reg|dir_cls)$',
    retinanet=r'bbox_head\.retina_(cls|reg)$')
#: The layers that read the model's input.
FIRST_LAYERS = dict(
    centerpoint='pts_middle_encoder.conv_input.0',
    second='middle_encoder.conv_input.0',
    retinanet='backbone.conv1')


@pytest.fixture(scope='module')
def models():
    return {name: build()[0] for name, (build, _) in MODELS.items()}


def _by_name(groups):
    return {group.name: group for group in groups}


def _names(layers):
    return [layer.name for layer in layers]


# ---------------------------------------------------------- every layer
@pytest.mark.parametrize('name', list(MODELS))
def test_every_layer_in_its_groups(models, name):
    model = models[name]
    groups = find_channel_groups(model)
    targets = {t.name for t in find_targets(model)}
    finals = {t for t in targets if re.search(FINAL_CONVS[name], t)}
    assert finals
    producers = [p.name for g in groups for p in g.producers]
    consumers = {c.name for g in groups for c in g.consumers}
    norms = [n.name for g in groups for n in g.norms]
    # every layer but the prediction convs produces exactly one group
    assert len(producers) == len(set(producers))
    assert set(producers) == targets - finals
    # every layer but the first reads a group
    assert consumers == targets - {FIRST_LAYERS[name]}
    # every BatchNorm normalizes exactly one group
    batch_norms = {
        n for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }
    assert sorted(norms) == sorted(batch_norms)
    for group in groups:
        for layer in group.layers:
            assert layer.index.shape[0] == group.num_channels
            assert int(layer.index.max()) < layer.axis_size


# ---------------------------------------------------------- CenterPoint
def test_centerpoint_sparse_residual_chains(models):
    groups = _by_name(find_channel_groups(models['centerpoint']))
    prefix = 'pts_middle_encoder.encoder_layers.encoder_layer'
    chain = groups['pts_middle_encoder.conv_input.0']
    assert _names(chain.producers) == [
        'pts_middle_encoder.conv_input.0', f'{prefix}1.0.conv2',
        f'{prefix}1.1.conv2'
    ]
    assert _names(chain.norms) == [
        'pts_middle_encoder.conv_input.1', f'{prefix}1.0.bn2',
        f'{prefix}1.1.bn2'
    ]
    assert _names(chain.consumers) == [
        f'{prefix}1.0.conv1', f'{prefix}1.1.conv1', f'{prefix}1.2.0'
    ]
    # each stage's down-sampling conv starts the next residual chain
    for stage, channels in ((2, 32), (3, 64), (4, 128)):
        group = groups[f'{prefix}{stage - 1}.2.0']
        assert group.num_channels == channels
        assert _names(group.producers)[1:] == [
            f'{prefix}{stage}.0.conv2', f'{prefix}{stage}.1.conv2'
        ]
    # inside a block: conv1 -> bn1 -> conv2
    inner = groups[f'{prefix}2.1.conv1']
    assert _names(inner.norms) == [f'{prefix}2.1.bn1']
    assert _names(inner.consumers) == [f'{prefix}2.1.conv2']
    assert chain.producers[0].kind == 'spconv'
    assert chain.consumers[0].axis == 4  # (out, k, k, k, in)


def test_centerpoint_bev_reshape_maps_c_to_c_times_depth(models):
    model = models['centerpoint']
    group = _by_name(find_channel_groups(model))[
        'pts_middle_encoder.conv_out.0']
    consumer, = group.consumers
    assert consumer.name == 'pts_backbone.blocks.0.0'
    channels = group.num_channels
    depth = model.pts_backbone.blocks[0][0].in_channels // channels
    assert depth == 2  # 41 -> 21 -> 11 -> 5 -> 2 depth cells
    expected = torch.arange(channels)[:, None] * depth + torch.arange(depth)
    assert torch.equal(consumer.index, expected)


def test_centerpoint_secondfpn_concat_offsets(models):
    groups = _by_name(find_channel_groups(models['centerpoint']))
    offset = 0
    # upsample strides 0.5 (a strided conv) and 1 (a deconv)
    for i, kind, out_axis in ((0, 'conv', 0), (1, 'deconv', 1)):
        group = groups[f'pts_neck.deblocks.{i}.0']
        producer, = group.producers
        assert (producer.kind, producer.axis) == (kind, out_axis)
        assert _names(group.norms) == [f'pts_neck.deblocks.{i}.1']
        consumer, = group.consumers
        assert consumer.name == 'pts_bbox_head.shared_conv.conv'
        expected = offset + torch.arange(group.num_channels)[:, None]
        assert torch.equal(consumer.index, expected)
        offset += group.num_channels
    # the backbone's first block feeds its second block and the neck
    assert _names(groups['pts_backbone.blocks.0.15'].consumers) == [
        'pts_backbone.blocks.1.0', 'pts_neck.deblocks.0.0'
    ]
    assert groups['pts_neck.deblocks.1.0'].consumers[0].index[0, 0] == 256


def test_centerpoint_shared_conv_feeds_every_task_head(models):
    model = models['centerpoint']
    groups = _by_name(find_channel_groups(model))
    shared = groups['pts_bbox_head.shared_conv.conv']
    assert _names(shared.norms) == ['pts_bbox_head.shared_conv.bn']
    first_convs = [
        f'pts_bbox_head.task_heads.{t}.{head}.0.conv'
        for t, task in enumerate(model.pts_bbox_head.task_heads)
        for head in task.heads
    ]
    assert len(first_convs) == 36
    assert _names(shared.consumers) == first_convs
    branch = groups['pts_bbox_head.task_heads.3.vel.0.conv']
    assert _names(branch.consumers) == ['pts_bbox_head.task_heads.3.vel.1']


def test_shipped_centerpoint_config_has_the_same_groups(models):
    cfg = Config.fromfile(
        osp.join(MMDET3D_CONFIGS, 'centerpoint',
                 'centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d'
                 '.py'))
    full = find_channel_groups(build_detector(cfg)[0])
    quick = find_channel_groups(models['centerpoint'])
    assert len(full) == len(quick) == 64
    for a, b in zip(full, quick):
        assert (a.name, a.num_channels) == (b.name, b.num_channels)
        for x, y in zip(a.layers, b.layers):
            assert (x.name, x.axis) == (y.name, y.axis)
            assert torch.equal(x.index, y.index)


# ---------------------------------------------------------- SECOND
def test_second_conv_module_chains_and_anchor_head(models):
    model = models['second']
    groups = _by_name(find_channel_groups(model))
    assert all(len(g.producers) == 1 for g in groups.values())
    stage2 = groups['middle_encoder.encoder_layers.encoder_layer2.0.0']
    assert _names(stage2.consumers) == [
        'middle_encoder.encoder_layers.encoder_layer2.1.0'
    ]
    reshape = groups['middle_encoder.conv_out.0']
    assert torch.equal(reshape.consumers[0].index,
                       torch.arange(128)[:, None] * 2 + torch.arange(2))
    for i, offset in ((0, 0), (1, 256)):
        group = groups[f'neck.deblocks.{i}.0']
        assert _names(group.consumers) == [
            'bbox_head.conv_cls', 'bbox_head.conv_reg',
            'bbox_head.conv_dir_cls'
        ]
        for consumer in group.consumers:
            assert torch.equal(consumer.index,
                               offset + torch.arange(256)[:, None])


# ---------------------------------------------------------- RetinaNet
@pytest.mark.parametrize('stage,blocks', [(1, 3), (2, 4), (3, 6), (4, 3)])
def test_resnet_stage_is_one_group(models, stage, blocks):
    groups = _by_name(find_channel_groups(models['retinanet']))
    group = groups[f'backbone.layer{stage}.0.conv3']
    layer = f'backbone.layer{stage}'
    assert group.num_channels == 256 * 2**(stage - 1)
    assert sorted(_names(group.producers)) == sorted(
        [f'{layer}.{b}.conv3' for b in range(blocks)] +
        [f'{layer}.0.downsample.0'])
    assert sorted(_names(group.norms)) == sorted(
        [f'{layer}.{b}.bn3' for b in range(blocks)] +
        [f'{layer}.0.downsample.1'])
    consumers = _names(group.consumers)
    assert [f'{layer}.{b}.conv1' for b in range(1, blocks)] == consumers[
        :blocks - 1]
    if stage < 4:
        assert consumers[blocks - 1:blocks + 1] == [
            f'backbone.layer{stage + 1}.0.conv1',
            f'backbone.layer{stage + 1}.0.downsample.0'
        ]
    if stage > 1:  # FPN's start_level is 1
        assert f'neck.lateral_convs.{stage - 2}.conv' in consumers
    if stage == 4:  # RetinaNet's first extra level is on the input
        assert consumers[-1] == 'neck.fpn_convs.3.conv'


def test_fpn_and_shared_retina_head(models):
    groups = _by_name(find_channel_groups(models['retinanet']))
    laterals = groups['neck.lateral_convs.0.conv']
    assert _names(laterals.producers) == [
        f'neck.lateral_convs.{i}.conv' for i in range(3)
    ]
    assert _names(laterals.consumers) == [
        f'neck.fpn_convs.{i}.conv' for i in range(3)
    ]
    outputs = groups['neck.fpn_convs.0.conv']
    assert _names(outputs.producers) == [
        f'neck.fpn_convs.{i}.conv' for i in range(5)
    ]
    assert _names(outputs.consumers) == [
        'neck.fpn_convs.4.conv', 'bbox_head.cls_convs.0.conv',
        'bbox_head.reg_convs.0.conv'
    ]
    last = groups['bbox_head.cls_convs.3.conv']
    assert _names(last.consumers) == ['bbox_head.retina_cls']


# ---------------------------------------------------------- selection
def test_include_exclude(models):
    model = models['centerpoint']
    backbone = find_channel_groups(model, include=[r'^pts_backbone\.'])
    assert backbone and all(
        g.name.startswith('pts_backbone.') for g in backbone)
    no_heads = find_channel_groups(model, exclude=['task_heads'])
    assert not any('task_heads' in g.name for g in no_heads)
    # a group is dropped when any producer is excluded
    chains = find_channel_groups(
        model, exclude=[r'encoder_layer1\.1\.conv2$'])
    assert 'pts_middle_encoder.conv_input.0' not in _by_name(chains)
    with pytest.raises(PruningInputError, match='select no channel group'):
        find_channel_groups(model, include=['no_such_layer'])


# ---------------------------------------------------------- toy models
class Scale(nn.Module):
    """A module with a parameter and no channel rule."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.scale[:, None, None]


class OwnSequential(nn.Sequential):
    """Overrides ``forward``: the Sequential rule must not apply."""

    def forward(self, x):
        return super().forward(x) * 2


class Toy(nn.Module):

    def __init__(self, middle):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.middle = middle
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv2(self.middle(self.bn1(self.conv1(x))))


@register_channel_rule(Toy)
def _toy_rule(tracer, model):
    x = tracer.input(3)
    for layer in (model.conv1, model.bn1, model.middle, model.conv2):
        x = tracer.call(layer, x)
    return x


def test_toy_group_scores_and_costs():
    model = Toy(nn.ReLU())
    with pytest.raises(PruningInputError, match='do not reach'):
        find_channel_groups(model)
    group, = find_channel_groups(model, exclude=['unused'])
    assert (group.name, group.num_channels) == ('conv1', 8)
    assert _names(group.norms) == ['bn1']
    assert _names(group.consumers) == ['conv2']
    weight = model.conv1.weight.detach().double()
    assert torch.allclose(group.channel_scores('l2'),
                          weight.pow(2).sum((1, 2, 3)))
    assert torch.allclose(group.channel_scores('l1'),
                          weight.abs().sum((1, 2, 3)))
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([3., -1, 2, 8, 0.5, 4, 7, 6]))
    assert torch.equal(group.channel_scores('bn'),
                       model.bn1.weight.detach().abs().double())
    assert group.keep_mask(3, 'bn').nonzero().flatten().tolist() == [3, 6, 7]
    assert group.params_per_channel == 3 * 9 + 4
    costs = cost_after([group], {'conv1': 6}, {'conv1': 216, 'conv2': 32})
    assert costs == {'conv1': 216 * 6 / 8, 'conv2': 32 * 6 / 8}
    with pytest.raises(PruningInputError, match='cannot keep 9'):
        group.keep_mask(9)


@pytest.mark.parametrize('middle', [nn.Sigmoid(), nn.GroupNorm(2, 8)],
                         ids=['sigmoid', 'group_norm'])
def test_layers_that_need_the_channels_keep_them(middle):
    # Sigmoid(0) = 0.5: a masked channel would not read as zero; GroupNorm
    # normalizes over several channels
    assert trace_channel_groups(Toy(middle), exclude=['unused']) == []
    assert len(trace_channel_groups(Toy(nn.ReLU()), exclude=['unused'])) == 1


def test_module_without_rule_refused_or_black_box():
    model = Toy(Scale(8))
    with pytest.raises(PruningInputError,
                       match=r"no channel rule for Scale at 'middle'"):
        find_channel_groups(model, exclude=['unused'])
    # excluded: a black box whose input channels are kept
    assert trace_channel_groups(model, exclude=['unused', 'middle']) == []


def test_model_without_rule_refused():
    with pytest.raises(PruningInputError,
                       match='no channel rule for the model class Conv2d'):
        find_channel_groups(nn.Conv2d(3, 3, 1))


def test_subclass_overriding_forward_refused():
    model = Toy(OwnSequential(nn.Conv2d(8, 8, 1)))
    with pytest.raises(PruningInputError, match='overrides'):
        find_channel_groups(model, exclude=['unused'])
