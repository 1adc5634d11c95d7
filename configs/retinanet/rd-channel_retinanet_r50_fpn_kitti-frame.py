# RetinaNet (ResNet-50 + FPN) from mmdet, RD channel pruning of the backbone
# (bottleneck stages, stem), FPN and head to half of its FLOPs. Calibrates on
# a real KITTI scene rendered from its LiDAR frame (run
# `python tools/render_lidar_image.py` first); list your own images in
# calibration.frames, or drop `frames` to use val_dataloader.
_base_ = [
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    '../_base_/rd_channel_pruning.py'
]

calibration = dict(frames=['data/calibration/kitti_000008_lidar.png'])
