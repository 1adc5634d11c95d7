"""Channel rules of mmdet modules: ResNet and its blocks, FPN, anchor heads
(RetinaHead) and single-stage detectors.

Couplings:

* ``BasicBlock`` / ``Bottleneck``: the last conv's output (after its norm)
  is added to the identity (or to ``downsample(x)``), so it is the block's
  input space; a stage's blocks chain their identities, and every block's
  ``conv2`` / ``conv3`` and the stage's ``downsample`` conv produce one
  group, read by every block's ``conv1`` and by the next stage;
* ``FPN``: lateral outputs are summed top-down, so every lateral conv
  produces one group; every output level feeds the same (shared) head, so
  every ``fpn_convs`` output, extra levels included, is one group;
* ``AnchorHead`` / ``RetinaHead``: the stacked convs run on every level
  (one group each); the final ``conv_cls`` / ``retina_cls`` / ``reg``
  outputs are the model's outputs and never pruned.
"""
from __future__ import annotations

from mmdet.models.backbones.resnet import BasicBlock, Bottleneck, ResNet
from mmdet.models.dense_heads import AnchorHead, RetinaHead
from mmdet.models.detectors import SingleStageDetector
from mmdet.models.necks import FPN

from .registry import register_channel_rule


@register_channel_rule(BasicBlock)
def basic_block(tracer, block, x):
    """conv1-norm1-relu-conv2-norm2, plus the identity or downsample."""
    if getattr(block, 'with_plugins', False):
        return tracer.black_box(block, x, reason='it has plugins')
    out = tracer.call(block.relu, tracer.call(
        block.norm1, tracer.call(block.conv1, x)))
    out = tracer.call(block.norm2, tracer.call(block.conv2, out))
    identity = x if block.downsample is None else tracer.call(
        block.downsample, x)
    return tracer.call(block.relu, tracer.add(out, identity))


@register_channel_rule(Bottleneck)
def bottleneck(tracer, block, x):
    """conv1-norm1-relu-conv2-norm2-relu-conv3-norm3, plus the identity."""
    if block.with_plugins:
        return tracer.black_box(block, x, reason='it has plugins')
    out = x
    for conv, norm in ((block.conv1, block.norm1), (block.conv2,
                                                    block.norm2)):
        out = tracer.call(block.relu,
                          tracer.call(norm, tracer.call(conv, out)))
    out = tracer.call(block.norm3, tracer.call(block.conv3, out))
    identity = x if block.downsample is None else tracer.call(
        block.downsample, x)
    return tracer.call(block.relu, tracer.add(out, identity))


@register_channel_rule(ResNet)
def resnet(tracer, net, x):
    """Stem, max-pool, residual stages; the ``out_indices`` stages out."""
    if net.deep_stem:
        x = tracer.call(net.stem, x)
    else:
        x = tracer.call(net.relu, tracer.call(
            net.norm1, tracer.call(net.conv1, x)))
    x = tracer.call(net.maxpool, x)
    outs = []
    for i, layer_name in enumerate(net.res_layers):
        x = tracer.call(getattr(net, layer_name), x)
        if i in net.out_indices:
            outs.append(x)
    return tuple(outs)


@register_channel_rule(FPN)
def fpn(tracer, neck, inputs):
    """Laterals summed top-down, output convs, extra levels."""
    laterals = [
        tracer.call(conv, inputs[i + neck.start_level])
        for i, conv in enumerate(neck.lateral_convs)
    ]
    used = len(laterals)
    for i in range(used - 1, 0, -1):
        laterals[i - 1] = tracer.add(laterals[i - 1], laterals[i])
    outs = [tracer.call(neck.fpn_convs[i], laterals[i]) for i in range(used)]
    if neck.num_outs > used:
        if not neck.add_extra_convs:  # max-pooled copies of the top level
            outs += [outs[-1]] * (neck.num_outs - used)
        else:
            source = dict(
                on_input=inputs[neck.backbone_end_level - 1],
                on_lateral=laterals[-1],
                on_output=outs[-1])[neck.add_extra_convs]
            outs.append(tracer.call(neck.fpn_convs[used], source))
            for i in range(used + 1, neck.num_outs):
                outs.append(tracer.call(neck.fpn_convs[i], outs[-1]))
    return tuple(outs)


@register_channel_rule(RetinaHead, methods=('forward', 'forward_single'))
def retina_head(tracer, head, feats):
    """Stacked cls / reg convs, then ``retina_cls`` / ``retina_reg``, on
    every level with the same layers."""
    outs = []
    for x in feats:
        cls_feat = reg_feat = x
        for conv in head.cls_convs:
            cls_feat = tracer.call(conv, cls_feat)
        for conv in head.reg_convs:
            reg_feat = tracer.call(conv, reg_feat)
        outs.append((tracer.call(head.retina_cls, cls_feat),
                     tracer.call(head.retina_reg, reg_feat)))
    return outs


@register_channel_rule(AnchorHead, methods=('forward', 'forward_single'))
def anchor_head(tracer, head, feats):
    """``conv_cls`` and ``conv_reg`` on every level."""
    return [(tracer.call(head.conv_cls, x), tracer.call(head.conv_reg, x))
            for x in feats]


@register_channel_rule(SingleStageDetector, methods=('extract_feat', ))
def single_stage_detector(tracer, detector):
    """Image -> backbone -> neck -> bbox_head."""
    x = tracer.input(getattr(detector.backbone, 'in_channels', None))
    x = tracer.call(detector.backbone, x)
    if detector.with_neck:
        x = tracer.call(detector.neck, x)
    return tracer.call(detector.bbox_head, x)
