# PointPillars with dynamic voxelization (points scattered into pillars by
# mmcv's DynamicScatter, which runs on CPU with rdprune_mm imported) on
# KITTI cars, RD weight pruning. Calibrates on the real KITTI frame in
# ../shared/data/lidar.
_base_ = [
    'mmdet3d::dynamic_voxelization/pointpillars_dv_secfpn_8xb6-160e_kitti-3d-car.py',  # noqa: E501
    '../_base_/rd_weight_pruning.py'
]

calibration = dict(
    dataloader='val_dataloader',
    num_samples=1,
    dataset=dict(
        data_root='../shared/data/lidar/',
        ann_file='000008.pkl',
        data_prefix=dict(pts='', img='')))

pruner = dict(num_levels=11)
