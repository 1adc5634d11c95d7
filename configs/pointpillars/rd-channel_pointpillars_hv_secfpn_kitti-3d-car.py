# PointPillars (hard voxels, KITTI cars) from mmdet3d, RD channel pruning to
# half of its FLOPs: the pillar encoder's linear layer (with its BatchNorm
# and the BEV canvas of PointPillarsScatter), the SECOND backbone, the
# SECONDFPN deblocks; the head's prediction convs are kept whole.
# Calibrated on the real KITTI frame 000008 in ../shared/data/lidar through
# the config's own KittiDataset.
_base_ = [
    'mmdet3d::pointpillars/pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py',
    '../_base_/rd_channel_pruning_kitti_frame.py'
]
