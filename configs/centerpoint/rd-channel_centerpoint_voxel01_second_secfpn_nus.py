# CenterPoint (voxel 0.1, SECOND + SECFPN) on nuScenes, RD channel pruning to
# half of its FLOPs; calibrated on the real nuScenes frame in
# ../shared/data/lidar through the config's own NuScenesDataset.
_base_ = [
    'mmdet3d::centerpoint/centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d.py',  # noqa: E501
    '../_base_/rd_channel_pruning.py'
]

calibration = dict(
    dataloader='val_dataloader',
    num_samples=1,
    dataset=dict(
        data_root='../shared/data/lidar/',
        ann_file='n015-2018-07-24-11-22-45+0800.pkl',
        data_prefix=dict(pts='', sweeps='')))
