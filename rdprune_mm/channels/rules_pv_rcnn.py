"""Channel rules of PV-RCNN: the voxel set abstraction (keypoint features
from the sparse stages, the raw points and the BEV map), the RoI grid
pooling, the RoI head's semantic and box heads, and the
``PointVoxelRCNN`` detector.

Couplings:

* ``SparseEncoder`` (``return_middle_feats``): every sparse stage's output
  is read by the next stage and by its ``voxel_sa_layers[k]``;
* ``StackedSAModuleMSG``: each scale's MLP reads ``cat([xyz offsets,
  features])``, so feature channel ``c`` is its input channel ``3 + c``
  (the offsets are never pruned); max / mean pooling over the ball keeps
  zeros; the scales' last convs are concatenated;
* ``VoxelSetAbstraction``: the keypoint features are ``cat([BEV map
  (bilinear samples of the encoder's C * D BEV channels), raw-point SA,
  voxel SA of every stage])``: every part's group is read at its offset
  by ``point_feature_fusion_layer`` and, through ``keypoint_features``, by
  the semantic head's first layer;
* ``PVRCNNRoiHead``: the fused keypoint features, scaled per keypoint by
  the semantic scores (channels unchanged), are pooled on every RoI's grid
  of ``G ** 3`` points by ``Batch3DRoIGridExtractor``; ``PVRCNNBBoxHead``
  flattens ``(R, G, G, G, C)`` channel-major, so pooled channel ``c`` is
  read as ``c * G ** 3 .. c * G ** 3 + G ** 3 - 1`` by its first shared FC;
  the shared FC's output feeds the class and box branches, whose last
  convs (and the semantic head's last linear layer) are never pruned.
"""
from __future__ import annotations

from mmdet3d.models.detectors import PointVoxelRCNN
from mmdet3d.models.layers.pointnet_modules.stack_point_sa_module import \
    StackedSAModuleMSG
from mmdet3d.models.middle_encoders import VoxelSetAbstraction
from mmdet3d.models.roi_heads import PVRCNNRoiHead
from mmdet3d.models.roi_heads.bbox_heads import PVRCNNBBoxHead
from mmdet3d.models.roi_heads.mask_heads import ForegroundSegmentationHead
from mmdet3d.models.roi_heads.roi_extractors import Batch3DRoIGridExtractor

from .registry import register_channel_rule
from .tracer import Feature

#: Channels of the xyz offsets that a ball grouper puts before the features.
XYZ_CHANNELS = 3


@register_channel_rule(StackedSAModuleMSG)
def stacked_sa_module_msg(tracer, module, xyz=None, xyz_batch_cnt=None,
                          new_xyz=None, new_xyz_batch_cnt=None,
                          features=None):
    """Per scale: group ``[xyz offsets, features]``, MLP, pool; the
    scales' outputs concatenated. Returns ``(new_xyz, features)``."""
    outs = []
    for grouper, mlp in zip(module.groupers, module.mlps):
        parts = [] if features is None else [features]
        if grouper.use_xyz or features is None:
            parts.insert(0, tracer.input(XYZ_CHANNELS))
        grouped = tracer.cat(parts) if len(parts) > 1 else parts[0]
        outs.append(tracer.call(mlp, grouped))
    return Feature.unknown(), tracer.cat(outs)


@register_channel_rule(
    VoxelSetAbstraction,
    methods=('forward', 'interpolate_from_bev_features'))
def voxel_set_abstraction(tracer, vsa, batch_inputs_dict, feats_dict,
                          rpn_results_list=None):
    """Keypoint features from the BEV map, the raw points and every sparse
    stage, concatenated, then the fusion layer."""
    parts = []
    if vsa.bev_cfg is not None:
        parts.append(feats_dict['spatial_feats'])
    if vsa.rawpoints_sa_layer is not None:
        # the raw points' features (reflectance) are the model's input
        _, pooled = tracer.call(vsa.rawpoints_sa_layer,
                                features=Feature.unknown())
        parts.append(pooled)
    if vsa.voxel_sa_layers is not None:
        stages = feats_dict['multi_scale_3d_feats']
        for k, layer in enumerate(vsa.voxel_sa_layers):
            _, pooled = tracer.call(layer, features=stages[k])
            parts.append(pooled)
    point_features = tracer.cat(parts)
    fused = tracer.call(vsa.point_feature_fusion_layer, point_features)
    return dict(keypoint_features=point_features,
                fusion_keypoint_features=fused,
                keypoints=Feature.unknown())


@register_channel_rule(Batch3DRoIGridExtractor)
def roi_grid_extractor(tracer, extractor, feats, *args):
    """The SA layer pools keypoint features at every RoI grid point."""
    _, pooled = tracer.call(extractor.roi_grid_pool_layer, features=feats)
    return pooled


@register_channel_rule(PVRCNNBBoxHead)
def pv_rcnn_bbox_head(tracer, head, feats):
    """``(R, G, G, G, C)`` -> ``(R, C * G ** 3)`` -> shared FCs -> the
    class and box branches."""
    shared = tracer.call(head.shared_fc_layer,
                         feats.flatten_depth(head.grid_size**3))
    return (tracer.call(head.cls_layer, shared),
            tracer.call(head.reg_layer, shared))


@register_channel_rule(ForegroundSegmentationHead)
def foreground_segmentation_head(tracer, head, feats):
    """An MLP over the keypoint features."""
    return dict(seg_preds=tracer.call(head.seg_cls_layer, feats))


@register_channel_rule(PVRCNNRoiHead, methods=('predict', '_bbox_forward'))
def pv_rcnn_roi_head(tracer, head, feats_dict, *args):
    """Semantic head on the keypoint features; the fused features, scaled
    per keypoint by the semantic scores, pooled on the RoI grids and read
    by the box head."""
    semantic = tracer.call(head.semantic_head,
                           feats_dict['keypoint_features'])
    pooled = tracer.call(head.bbox_roi_extractor,
                         feats_dict['fusion_keypoint_features'])
    return semantic, tracer.call(head.bbox_head, pooled)


@register_channel_rule(
    PointVoxelRCNN,
    methods=('predict', 'extract_feat', 'extract_points_feat'))
def point_voxel_rcnn(tracer, detector):
    """Voxel encoder -> sparse encoder (BEV map and stage outputs) ->
    backbone -> neck -> RPN head; voxel set abstraction -> RoI head."""
    x = tracer.call(detector.voxel_encoder, tracer.input())
    spatial, stages = tracer.call(detector.middle_encoder, x)
    feats_dict = dict(spatial_feats=spatial, multi_scale_3d_feats=stages)
    x = tracer.call(detector.backbone, spatial)
    if detector.with_neck:
        x = tracer.call(detector.neck, x)
        feats_dict['neck_feats'] = x
    rpn = tracer.call(detector.rpn_head, x) if detector.with_rpn else ()
    points = tracer.call(detector.points_encoder, Feature.unknown(),
                         feats_dict)
    return rpn, tracer.call(detector.roi_head, points)
