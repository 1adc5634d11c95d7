# RD channel pruning of the small SECOND of second_tiny_kitti-like-3class.py
# (trained on the built-in KITTI-layout data by `make demo`) to a share of its
# FLOPs, or of its measured time per frame (pruner.budget_by='latency'):
#   python tools/prune.py configs/kitti_like/rd-channel_second_tiny_kitti-like.py \
#       --checkpoint work_dirs/kitti_like/dense/epoch_10.pth \
#       --work-dir work_dirs/kitti_like/rd-channel
# writes the masked model and the slim one (slim.pth, slim_config.py).
_base_ = [
    './_base_/second_tiny_kitti-like-3class.py',
    '../_base_/rd_channel_pruning.py'
]

# calibration: the first train frames through the test pipeline (no
# augmentation, so every pass sees the same points)
calibration = dict(
    dataloader='test_dataloader',
    num_samples=4,
    dataset=dict(ann_file='kitti_infos_train.pkl'))
