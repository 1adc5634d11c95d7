# PointPillars with dynamic voxelization (KITTI cars) from mmdet3d, RD
# channel pruning to half of its FLOPs: the per-point linear layer and its
# BatchNorm (pillar features by mmcv's DynamicScatter, which runs on CPU with
# rdprune_mm imported), the BEV canvas, the SECOND backbone and the
# SECONDFPN deblocks; the head's prediction convs are kept whole.
# Calibrated on the real KITTI frame 000008 in ../shared/data/lidar.
_base_ = [
    'mmdet3d::dynamic_voxelization/pointpillars_dv_secfpn_8xb6-160e_kitti-3d-car.py',  # noqa: E501
    '../_base_/rd_channel_pruning_kitti_frame.py'
]
