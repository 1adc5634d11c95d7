# PointPillars with dynamic voxelization (points scattered into pillars by
# mmcv's DynamicScatter, which runs on CPU with rdprune_mm imported) on
# KITTI cars, RD weight pruning.
_base_ = [
    'mmdet3d::dynamic_voxelization/pointpillars_dv_secfpn_8xb6-160e_kitti-3d-car.py',  # noqa: E501
    '../_base_/rd_weight_pruning_kitti_frame.py'
]

pruner = dict(num_levels=11)
