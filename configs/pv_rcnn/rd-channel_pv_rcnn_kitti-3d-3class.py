# PV-RCNN (3 classes, KITTI) from mmdet3d, RD channel pruning to half of its
# FLOPs: the sparse stages (each also read by its voxel set abstraction),
# the BEV backbone and neck, the set-abstraction MLPs of the raw points and
# of every sparse stage, the keypoint fusion layer, the RoI-grid pooling
# MLPs, the semantic head and the RoI box head's shared and branch FC
# layers. The RPN convs and the heads' last layers are kept whole.
# Distortion covers the RPN head and the RoI head (semantic and box heads,
# on the reference proposals). Calibrated on the real KITTI frame 000008 in
# ../shared/data/lidar through the config's own KittiDataset.
_base_ = [
    'mmdet3d::pv_rcnn/pv_rcnn_8xb2-80e_kitti-3d-3class.py',
    '../_base_/rd_channel_pruning_kitti_frame.py'
]
