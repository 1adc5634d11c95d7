# The model, data and schedule of configs/kitti_like/second_tiny_*.py, without
# custom_imports, so that the pruning configs can inherit it beside
# configs/_base_/rd_weight_pruning.py (mmengine forbids a key in two bases).
#
# A small SECOND (sparse 3D convolutions + BEV backbone, anchor head) for the
# built-in KITTI-layout LiDAR data (rdprune_mm.datasets, written by
# tools/make_kitti_like_data.py). mmdet3d's shipped 3-class SECOND config,
# on a reduced range (x 0..48 m, y -19.2..19.2 m: every moderate object of
# the simulated streets), with a slimmer encoder and BEV backbone and a short
# schedule so that it learns on 2 CPU cores in minutes.
_base_ = ['mmdet3d::second/second_hv_secfpn_8xb6-80e_kitti-3d-3class.py']

data_root = 'data/kitti_like/'
class_names = ['Pedestrian', 'Cyclist', 'Car']
metainfo = dict(classes=class_names)
point_cloud_range = [0, -19.2, -3, 48, 19.2, 1]
voxel_size = [0.1, 0.1, 0.2]
sparse_shape = [21, 384, 480]  # z, y, x cells (+1 in z, as mmdet3d)
input_modality = dict(use_lidar=True, use_camera=False)

model = dict(
    data_preprocessor=dict(
        voxel_layer=dict(
            point_cloud_range=point_cloud_range,
            voxel_size=voxel_size,
            max_voxels=(16000, 40000))),
    # three encoder stages instead of four: BEV stride 4 of 0.1 m voxels
    # (0.4 m, as the shipped config's stride 8 of 0.05 m); z 21 -> 11 -> 5,
    # conv_out -> 2 (2 x 64 = 128 BEV channels)
    middle_encoder=dict(
        sparse_shape=sparse_shape,
        encoder_channels=((16, ), (32, 32, 32), (64, 64, 64)),
        encoder_paddings=((1, ), (1, 1, 1), ((0, 1, 1), 1, 1)),
        output_channels=64),
    # BEV backbone and neck at a quarter of the shipped widths
    backbone=dict(
        in_channels=128, layer_nums=[3, 3], out_channels=[32, 64]),
    neck=dict(in_channels=[32, 64], out_channels=[64, 64]),
    bbox_head=dict(
        in_channels=128,
        feat_channels=128,
        anchor_generator=dict(ranges=[
            [0, -19.2, -0.6, 48, 19.2, -0.6],
            [0, -19.2, -0.6, 48, 19.2, -0.6],
            [0, -19.2, -1.78, 48, 19.2, -1.78],
        ])))

db_sampler = dict(
    data_root=data_root,
    info_path=data_root + 'kitti_dbinfos_train.pkl',
    rate=1.0,
    prepare=dict(
        filter_by_difficulty=[-1],
        filter_by_min_points=dict(Car=5, Pedestrian=10, Cyclist=10)),
    classes=class_names,
    sample_groups=dict(Car=8, Pedestrian=6, Cyclist=6),
    points_loader=dict(
        type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4,
        use_dim=4))

train_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4,
         use_dim=4),
    dict(type='LoadAnnotations3D', with_bbox_3d=True, with_label_3d=True),
    dict(type='ObjectSample', db_sampler=db_sampler),
    dict(
        type='ObjectNoise',
        num_try=100,
        translation_std=[1.0, 1.0, 0.5],
        global_rot_range=[0.0, 0.0],
        rot_range=[-0.78539816, 0.78539816]),
    dict(type='RandomFlip3D', flip_ratio_bev_horizontal=0.5),
    dict(
        type='GlobalRotScaleTrans',
        rot_range=[-0.2, 0.2],
        scale_ratio_range=[0.95, 1.05]),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='ObjectRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='PointShuffle'),
    dict(type='Pack3DDetInputs',
         keys=['points', 'gt_bboxes_3d', 'gt_labels_3d'])
]
test_pipeline = [
    dict(type='LoadPointsFromFile', coord_type='LIDAR', load_dim=4,
         use_dim=4),
    dict(type='PointsRangeFilter', point_cloud_range=point_cloud_range),
    dict(type='Pack3DDetInputs', keys=['points'])
]

train_dataloader = dict(
    _delete_=True,
    batch_size=4,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='KittiDataset',
        data_root=data_root,
        ann_file='kitti_infos_train.pkl',
        data_prefix=dict(pts='training/velodyne_reduced'),
        pipeline=train_pipeline,
        modality=input_modality,
        test_mode=False,
        metainfo=metainfo,
        box_type_3d='LiDAR'))
_eval_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='KittiDataset',
        data_root=data_root,
        data_prefix=dict(pts='training/velodyne_reduced'),
        ann_file='kitti_infos_val.pkl',
        pipeline=test_pipeline,
        modality=input_modality,
        test_mode=True,
        metainfo=metainfo,
        box_type_3d='LiDAR'))
val_dataloader = dict(_delete_=True, **_eval_dataloader)
test_dataloader = dict(_delete_=True, **_eval_dataloader)
val_evaluator = dict(
    type='KittiMetric', ann_file=data_root + 'kitti_infos_val.pkl',
    metric='bbox')
test_evaluator = val_evaluator

# short schedule: AdamW, linear warm-up, cosine decay, by iterations of
# epochs; no validation while training (the demo evaluates afterwards)
lr = 0.003
max_epochs = 10
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, betas=(0.95, 0.99), weight_decay=0.01),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=lr * 0.01,
         begin=0, end=max_epochs, by_epoch=True,
         convert_to_iter_based=True)
]
train_cfg = dict(
    _delete_=True, type='EpochBasedTrainLoop', max_epochs=max_epochs,
    val_interval=max_epochs + 1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
auto_scale_lr = dict(enable=False, base_batch_size=4)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1,
                    save_last=True),
    visualization=dict(type='Det3DVisualizationHook', draw=False))
log_processor = dict(window_size=10)
env_cfg = dict(cudnn_benchmark=False,
               mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0, deterministic=False)
