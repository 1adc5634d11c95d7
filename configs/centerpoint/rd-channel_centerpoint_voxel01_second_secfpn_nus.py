# CenterPoint (voxel 0.1, SECOND + SECFPN) on nuScenes, RD channel pruning to
# half of its FLOPs; calibrated on the real nuScenes frame in
# ../shared/data/lidar through the config's own NuScenesDataset.
_base_ = [
    'mmdet3d::centerpoint/centerpoint_voxel01_second_secfpn_8xb4-cyclic-20e_nus-3d.py',  # noqa: E501
    '../_base_/rd_channel_pruning_nus_frame.py'
]
