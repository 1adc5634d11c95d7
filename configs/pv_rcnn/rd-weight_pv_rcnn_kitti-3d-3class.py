# PV-RCNN (3 classes) on KITTI, RD weight pruning of every layer: the sparse
# convs, the set-abstraction MLPs, the BEV backbone and neck, the RPN head
# and the RoI head. Distortion covers the RPN head's outputs and the RoI
# head's (semantic and box heads, measured on the reference proposals).
_base_ = [
    'mmdet3d::pv_rcnn/pv_rcnn_8xb2-80e_kitti-3d-3class.py',
    '../_base_/rd_weight_pruning_kitti_frame.py'
]

pruner = dict(num_levels=11)
