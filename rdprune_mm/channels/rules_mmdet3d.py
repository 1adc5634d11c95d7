"""Channel rules of mmdet3d modules: SparseEncoder and SparseBasicBlock,
SECOND, SECONDFPN, CenterHead / SeparateHead, Anchor3DHead, and the
VoxelNet and MVXTwoStageDetector (CenterPoint) detectors.

Couplings:

* ``SparseBasicBlock``: like mmdet's ``BasicBlock`` on the sparse features,
  so a stage's residual chain (the conv before it and every block's
  ``conv2``) is one group;
* ``SparseEncoder``: ``conv_out``'s ``C`` channels over the ``D`` depth
  cells left after it become ``C * D`` BEV channels
  (``out.dense().view(N, C * D, H, W)``): channel ``c`` is read as BEV
  channels ``c * D .. c * D + D - 1`` by the 2D backbone;
* ``SECONDFPN``: the deblocks' outputs are concatenated: deblock ``i``'s
  channel ``c`` is read at ``offset_i + c`` by the head;
* ``CenterHead``: ``shared_conv`` feeds the first conv of every task head;
  every ``SeparateHead`` branch is a chain that ends in its prediction conv
  (never pruned);
* ``Anchor3DHead``: ``conv_cls`` / ``conv_reg`` / ``conv_dir_cls`` read the
  neck's output and are the model's outputs.
"""
from __future__ import annotations

from mmdet3d.models.backbones import SECOND
from mmdet3d.models.dense_heads import Anchor3DHead, CenterHead
from mmdet3d.models.dense_heads.centerpoint_head import SeparateHead
from mmdet3d.models.detectors import MVXTwoStageDetector, VoxelNet
from mmdet3d.models.layers import SparseBasicBlock
from mmdet3d.models.middle_encoders import SparseEncoder
from mmdet3d.models.necks import SECONDFPN

from ..errors import PruningInputError
from ..targets import layer_kind
from .registry import register_channel_rule
from .rules_mmdet import basic_block

register_channel_rule(SparseBasicBlock)(basic_block)


def sparse_output_depth(encoder: SparseEncoder) -> int:
    """Depth cells left after the encoder's sparse convolutions.

    Follows ``sparse_shape[0]`` through every strided (non-submanifold)
    sparse convolution, in module order (the forward order of
    ``SparseEncoder``).
    """
    depth = int(encoder.sparse_shape[0])
    for name, module in encoder.named_modules():
        kind = layer_kind(module)
        if kind is None or kind[0] not in ('spconv', 'mmcv_spconv'):
            continue
        if getattr(module, 'subm', False):
            continue
        if getattr(module, 'transposed', False) or getattr(
                module, 'inverse', False):
            raise PruningInputError(
                f'SparseEncoder layer {name} is an inverse or transposed '
                'sparse convolution, whose output depth the channel rule '
                'cannot follow; exclude the encoder to keep its channels')
        k, s, p, d = (int(module.kernel_size[0]), int(module.stride[0]),
                      int(module.padding[0]), int(module.dilation[0]))
        depth = (depth + 2 * p - d * (k - 1) - 1) // s + 1
    return depth


@register_channel_rule(SparseEncoder)
def sparse_encoder(tracer, encoder, x, *args):
    """conv_input, the encoder stages, conv_out, then the BEV reshape."""
    x = tracer.call(encoder.conv_input, x)
    middle = []
    for stage in encoder.encoder_layers._modules.values():
        x = tracer.call(stage, x)
        middle.append(x)
    out = tracer.call(encoder.conv_out, x)
    bev = out.flatten_depth(sparse_output_depth(encoder))
    if encoder.return_middle_feats:
        # the detector's rule passes the stages' outputs to their readers
        # (PV-RCNN's voxel set abstraction)
        return bev, middle
    return bev


@register_channel_rule(SECOND)
def second(tracer, backbone, x):
    """Blocks in sequence; every block's output is an output."""
    outs = []
    for block in backbone.blocks:
        x = tracer.call(block, x)
        outs.append(x)
    return tuple(outs)


@register_channel_rule(SECONDFPN)
def second_fpn(tracer, neck, inputs):
    """One deblock per level, outputs concatenated along channels."""
    ups = [tracer.call(deblock, inputs[i])
           for i, deblock in enumerate(neck.deblocks)]
    return [tracer.cat(ups) if len(ups) > 1 else ups[0]]


@register_channel_rule(SeparateHead)
def separate_head(tracer, head, x):
    """Every branch (a conv chain ending in its prediction conv) reads x."""
    return {name: tracer.call(getattr(head, name), x) for name in head.heads}


@register_channel_rule(CenterHead, methods=('forward', 'forward_single'))
def center_head(tracer, head, feats):
    """``shared_conv`` then every task head, on every level."""
    outs = []
    for x in feats:
        x = tracer.call(head.shared_conv, x)
        outs.append([tracer.call(task, x) for task in head.task_heads])
    return outs


@register_channel_rule(Anchor3DHead, methods=('forward', 'forward_single'))
def anchor3d_head(tracer, head, feats):
    """``conv_cls``, ``conv_reg`` and ``conv_dir_cls`` on every level."""
    outs = []
    for x in feats:
        out = [tracer.call(head.conv_cls, x), tracer.call(head.conv_reg, x)]
        if head.use_direction_classifier:
            out.append(tracer.call(head.conv_dir_cls, x))
        outs.append(tuple(out))
    return outs


@register_channel_rule(VoxelNet, methods=('extract_feat', ))
def voxelnet(tracer, detector):
    """Voxel encoder -> middle encoder -> backbone -> neck -> bbox_head."""
    x = tracer.call(detector.voxel_encoder, tracer.input())
    x = tracer.call(detector.middle_encoder, x)
    x = tracer.call(detector.backbone, x)
    if detector.with_neck:
        x = tracer.call(detector.neck, x)
    return tracer.call(detector.bbox_head, x)


@register_channel_rule(
    MVXTwoStageDetector, methods=('extract_feat', 'extract_pts_feat'))
def mvx_two_stage(tracer, detector):
    """The point branch: pts_voxel_encoder -> pts_middle_encoder ->
    pts_backbone -> pts_neck -> pts_bbox_head. An image branch is not
    followed (its layers must be excluded)."""
    if not detector.with_pts_bbox:
        return ()
    x = tracer.call(detector.pts_voxel_encoder, tracer.input())
    x = tracer.call(detector.pts_middle_encoder, x)
    x = tracer.call(detector.pts_backbone, x)
    if detector.with_pts_neck:
        x = tracer.call(detector.pts_neck, x)
    return tracer.call(detector.pts_bbox_head, x)
