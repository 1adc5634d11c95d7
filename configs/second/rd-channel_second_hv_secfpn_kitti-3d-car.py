# SECOND (KITTI cars) from mmdet3d, RD channel pruning to half of its FLOPs;
# calibrated on the real KITTI frame 000008 in ../shared/data/lidar through
# the config's own KittiDataset.
_base_ = [
    'mmdet3d::second/second_hv_secfpn_8xb6-80e_kitti-3d-car.py',
    '../_base_/rd_channel_pruning_kitti_frame.py'
]
