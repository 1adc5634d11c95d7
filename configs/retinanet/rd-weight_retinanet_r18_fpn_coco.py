# RetinaNet (ResNet-18 + FPN) from mmdet, RD weight pruning of the backbone,
# neck and head. Calibrates on a real KITTI scene rendered from its LiDAR
# frame (run `python tools/render_lidar_image.py` first); list your own
# images in calibration.frames, or drop `frames` to use val_dataloader.
_base_ = [
    'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py',
    '../_base_/rd_weight_pruning.py'
]

calibration = dict(frames=['data/calibration/kitti_000008_lidar.png'])
