# RD weight pruning of the small SECOND of second_tiny_kitti-like-3class.py
# (trained on the built-in KITTI-layout data), then a short fine-tuning with
# the masks held (RDPruneHook). tools/demo.py runs it on the trained model:
#   python tools/prune.py configs/kitti_like/rd-weight_second_tiny_kitti-like.py \
#       --checkpoint work_dirs/kitti_like/dense/epoch_10.pth \
#       --work-dir work_dirs/kitti_like/rd [--finetune]
# Switch the allocation alone with --cfg-options pruner.type=
# MagnitudeWeightPruner pruner.allocation=lamp (uniform, global, erk).
_base_ = [
    './_base_/second_tiny_kitti-like-3class.py',
    '../_base_/rd_weight_pruning.py'
]

pruner = dict(
    # keep half of the prunable layers' FLOPs (2x fewer); 0.25 and 0.125 in
    # benchmarks/bench_baselines.py
    budget=0.5,
    budget_by='flops',
    # pruned shares 0, 0.1, ..., 1 of every layer: 22 layers x 10 passes of
    # the 4 calibration frames
    num_levels=11,
    # ignored by MagnitudeWeightPruner, so pruner.type can be switched alone
    curves='empirical')

# calibration: the first train frames through the test pipeline (no
# augmentation, so every pass sees the same points)
calibration = dict(
    dataloader='test_dataloader',
    num_samples=4,
    dataset=dict(ann_file='kitti_infos_train.pkl'))

# fine-tuning (tools/prune.py --finetune): short, lower learning rate
lr = 0.001
finetune_epochs = 2
optim_wrapper = dict(optimizer=dict(lr=lr))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.3, by_epoch=False, begin=0,
         end=10),
    dict(type='CosineAnnealingLR', T_max=finetune_epochs, eta_min=lr * 0.05,
         begin=0, end=finetune_epochs, by_epoch=True,
         convert_to_iter_based=True)
]
train_cfg = dict(
    max_epochs=finetune_epochs, val_interval=finetune_epochs + 1)
