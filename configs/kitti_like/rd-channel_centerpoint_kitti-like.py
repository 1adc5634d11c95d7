# RD channel pruning of the benchmark CenterPoint (centerpoint_kitti-like-3class.py,
# trained by tools/train_benchmark.py) to a share of its FLOPs, then fine-tuning
# of the slim model (tools/prune.py --finetune). The calibration frames and the
# fine-tuning schedule are rd-weight_centerpoint_kitti-like.py's, so weight and
# channel pruning are compared on the same footing (benchmarks/bench_quality.py).
_base_ = [
    './_base_/centerpoint_kitti-like-3class.py',
    '../_base_/rd_channel_pruning.py'
]

# CenterHeadNoVelocity registers with rdprune_mm.models
custom_imports = dict(
    imports=['rdprune_mm', 'rdprune_mm.models'], allow_failed_imports=False)

pruner = dict(budget=0.5,
              budget_by='flops',
              num_levels=11,
              distortion=dict(type='DecodedDistortion',
                              regression_energy='centered'))

# calibration: train frames through the test pipeline (no augmentation)
calibration = dict(
    dataloader='test_dataloader',
    num_samples=4,
    dataset=dict(ann_file='kitti_infos_train.pkl'))

# fine-tuning (tools/prune.py --finetune): a third of the dense schedule
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
