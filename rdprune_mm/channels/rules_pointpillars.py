"""Channel rules of PointPillars: the pillar encoders (hard and dynamic
voxels), the scatter to the BEV canvas and the ``DynamicVoxelNet``
detector.

Couplings:

* ``PFNLayer``: ``linear`` (no bias) -> ``norm`` -> ReLU -> max (or mean)
  over a pillar's points; a layer that is not the last one returns
  ``cat([x, max(x)])``, so the next layer reads each channel ``c`` twice,
  at ``c`` and ``units + c`` (one group, index width 2);
* ``DynamicPillarFeatureNet``: ``Linear`` -> ``BN1d`` -> ReLU per point,
  then ``DynamicScatter`` (max or mean per pillar, 0 -> 0); a layer that is
  not the last one is read as ``cat([point_feats, pillar_feats])``, again
  each channel twice;
* ``PointPillarsScatter``: the pillar features become the BEV canvas's
  channels unchanged, and its ``in_channels`` sizes the canvas: a group's
  :class:`~.groups.ChannelAttribute`, lowered when the group is slimmed.

The input point features (x, y, z, r and the cluster / pillar-centre
offsets) are the model's input and never pruned.
"""
from __future__ import annotations

from mmcv.ops import DynamicScatter
from mmdet3d.models.detectors import DynamicVoxelNet
from mmdet3d.models.middle_encoders import PointPillarsScatter
from mmdet3d.models.voxel_encoders import (DynamicPillarFeatureNet,
                                           PillarFeatureNet)
from mmdet3d.models.voxel_encoders.utils import PFNLayer

from .registry import register_channel_rule
from .tracer import Feature


@register_channel_rule(PFNLayer)
def pfn_layer(tracer, layer, x, *args, **kwargs):
    """linear -> norm -> ReLU -> pool; ``cat([x, pooled])`` unless last."""
    x = tracer.call(layer.norm, tracer.call(layer.linear, x))
    return x if layer.last_vfe else tracer.cat([x, x])


@register_channel_rule(PillarFeatureNet)
def pillar_feature_net(tracer, encoder, features, *args, **kwargs):
    """The decorated points (model input) through every ``PFNLayer``."""
    x = features
    for pfn in encoder.pfn_layers:
        x = tracer.call(pfn, x)
    return x


@register_channel_rule(DynamicScatter)
def dynamic_scatter(tracer, scatter, features, *args):
    """Max or mean of point features per voxel: channels unchanged."""
    return tracer.passthrough(scatter, features), Feature.unknown()


@register_channel_rule(
    DynamicPillarFeatureNet,
    methods=('forward', 'map_voxel_center_to_point'))
def dynamic_pillar_feature_net(tracer, encoder, features, *args):
    """Per-point MLPs, each scattered to pillars; a layer that is not the
    last one is read with its pillar features copied back to the points."""
    x = voxel_feats = features
    for i, pfn in enumerate(encoder.pfn_layers):
        point_feats = tracer.call(pfn, x)
        voxel_feats, _ = tracer.call(encoder.pfn_scatter, point_feats)
        if i != len(encoder.pfn_layers) - 1:
            x = tracer.cat([point_feats, voxel_feats])
    return voxel_feats, Feature.unknown()


@register_channel_rule(
    PointPillarsScatter,
    methods=('forward', 'forward_single', 'forward_batch'))
def pointpillars_scatter(tracer, scatter, voxel_features, *args):
    """Pillar features -> a BEV canvas of ``in_channels`` channels."""
    return tracer.channel_count(scatter, 'in_channels', voxel_features)


@register_channel_rule(DynamicVoxelNet, methods=('extract_feat', ))
def dynamic_voxelnet(tracer, detector):
    """Voxel encoder (features, coordinates) -> middle encoder -> backbone
    -> neck -> bbox_head."""
    x, _ = tracer.call(detector.voxel_encoder, tracer.input())
    x = tracer.call(detector.middle_encoder, x)
    x = tracer.call(detector.backbone, x)
    if detector.with_neck:
        x = tracer.call(detector.neck, x)
    return tracer.call(detector.bbox_head, x)
