# PointPillars (KITTI cars, mmdet3d's shipped config) fine-tuned for a few
# iterations on the real KITTI frame with RDPruneHook: the tests' reduced
# training run. No ground-truth database here, so no ObjectSample.
_base_ = [
    'mmdet3d::pointpillars/pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py'
]
custom_imports = dict(
    imports=['rdprune_mm', 'rdprune_mm.cpu'], allow_failed_imports=False)

point_cloud_range = [0, -39.68, -3, 69.12, 39.68, 1]
train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4,
         use_dim=4),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True),
    dict(type='RandomFlip3D', flip_ratio_bev_horizontal=0.5),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='Pack3DDetInputs',
         keys=['points', 'gt_labels_3d', 'gt_bboxes_3d'])
]
train_dataloader = dict(
    _delete_=True,
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='KittiDataset',
        data_root='../shared/data/lidar/',
        ann_file='000008.pkl',
        data_prefix=dict(pts='', img=''),
        pipeline=train_pipeline,
        modality=dict(use_lidar=True, use_camera=False),
        metainfo=dict(classes=['Car']),
        box_type_3d='LiDAR'))
val_dataloader = None
val_cfg = None
val_evaluator = None
test_dataloader = None
test_cfg = None
test_evaluator = None

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4)
param_scheduler = []
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.01),
    accumulative_counts=2)
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)

custom_hooks = [
    dict(type='EMAHook', ema_type='mmdet.ExpMomentumEMA', momentum=0.1),
    dict(
        type='RDPruneHook',
        pruner=dict(
            type='RDWeightPruner',
            budget=0.5,
            num_levels=3,
            targets=dict(include=[
                r'backbone.blocks.0.0$', r'backbone.blocks.1.2$',
                r'neck.deblocks.0.0$', r'bbox_head.conv_reg'
            ])),
        calibration=dict(dataloader='train_dataloader', num_samples=1))
]
