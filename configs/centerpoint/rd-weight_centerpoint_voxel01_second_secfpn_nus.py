# CenterPoint (voxel 0.1, SECOND + SECFPN) on nuScenes, RD weight pruning.
# Calibrates on the real nuScenes frame shipped in ../shared/data/lidar;
# set calibration.dataset to your nuScenes infos to calibrate on more.
_base_ = [
    'mmdet3d::centerpoint/centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d.py',  # noqa: E501
    '../_base_/rd_weight_pruning.py'
]

calibration = dict(
    dataloader='val_dataloader',
    num_samples=1,
    dataset=dict(
        data_root='../shared/data/lidar/',
        ann_file='n015-2018-07-24-11-22-45+0800.pkl',
        data_prefix=dict(pts='', sweeps='')))
