# CenterPoint for the built-in KITTI-layout LiDAR data: the benchmark detector
# of the accuracy studies (docs/benchmark_detector.md).
#
# mmdet3d's shipped CenterPoint (``centerpoint_voxel01_second_secfpn``: 0.1 m
# voxels, a four-stage SparseEncoder of stride 8, SECOND backbone and SECFPN
# neck, CenterHead) at the shipped widths, on the main job's reduced range
# (x 0..48 m, y -19.2..19.2 m; z -5..3 m as shipped, so that the encoder's z
# strides end at 2 cells), with one CenterHead task per KITTI class and no
# velocity. Data, augmentation and evaluation are the small SECOND's
# (second_tiny_kitti-like-3class.py); the schedule is longer.
_base_ = ['./second_tiny_kitti-like-3class.py']

class_names = ['Pedestrian', 'Cyclist', 'Car']
point_cloud_range = [0, -19.2, -5, 48, 19.2, 3]
voxel_size = [0.1, 0.1, 0.2]
grid_size = [480, 384, 40]  # x, y, z cells
out_size_factor = 8

model = dict(
    _delete_=True,
    type='CenterPoint',
    data_preprocessor=dict(
        type='Det3DDataPreprocessor',
        voxel=True,
        voxel_layer=dict(
            max_num_points=10,
            point_cloud_range=point_cloud_range,
            voxel_size=voxel_size,
            max_voxels=(16000, 40000))),
    pts_voxel_encoder=dict(type='HardSimpleVFE', num_features=4),
    pts_middle_encoder=dict(
        type='SparseEncoder',
        in_channels=4,
        sparse_shape=[41, 384, 480],
        output_channels=128,
        order=('conv', 'norm', 'act'),
        encoder_channels=((16, 16, 32), (32, 32, 64), (64, 64, 128),
                          (128, 128)),
        encoder_paddings=((0, 0, 1), (0, 0, 1), (0, 0, [0, 1, 1]), (0, 0)),
        block_type='basicblock'),
    pts_backbone=dict(
        type='SECOND',
        in_channels=256,
        out_channels=[128, 256],
        layer_nums=[5, 5],
        layer_strides=[1, 2],
        norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01),
        conv_cfg=dict(type='Conv2d', bias=False)),
    pts_neck=dict(
        type='SECONDFPN',
        in_channels=[128, 256],
        out_channels=[256, 256],
        upsample_strides=[1, 2],
        norm_cfg=dict(type='BN', eps=1e-3, momentum=0.01),
        upsample_cfg=dict(type='deconv', bias=False),
        use_conv_for_no_stride=True),
    pts_bbox_head=dict(
        type='CenterHeadNoVelocity',
        in_channels=512,
        tasks=[
            dict(num_class=1, class_names=['Car']),
            dict(num_class=1, class_names=['Pedestrian']),
            dict(num_class=1, class_names=['Cyclist']),
        ],
        common_heads=dict(reg=(2, 2), height=(1, 2), dim=(3, 2), rot=(2, 2)),
        share_conv_channel=64,
        bbox_coder=dict(
            type='CenterPointBBoxCoder',
            pc_range=point_cloud_range[:2],
            post_center_range=[-5, -25, -10, 53, 25, 10],
            max_num=500,
            score_threshold=0.1,
            out_size_factor=out_size_factor,
            voxel_size=voxel_size[:2],
            code_size=7),
        separate_head=dict(
            type='SeparateHead', init_bias=-2.19, final_kernel=3),
        loss_cls=dict(type='mmdet.GaussianFocalLoss', reduction='mean'),
        loss_bbox=dict(
            type='mmdet.L1Loss', reduction='mean', loss_weight=0.25),
        norm_bbox=True),
    train_cfg=dict(
        pts=dict(
            grid_size=grid_size,
            voxel_size=voxel_size,
            out_size_factor=out_size_factor,
            point_cloud_range=point_cloud_range,
            dense_reg=1,
            gaussian_overlap=0.1,
            max_objs=500,
            min_radius=2,
            code_weights=[1.0] * 8)),
    test_cfg=dict(
        pts=dict(
            pc_range=point_cloud_range[:2],
            post_center_limit_range=[-5, -25, -10, 53, 25, 10],
            max_per_img=500,
            max_pool_nms=False,
            min_radius=[4, 0.175, 0.85],
            score_threshold=0.1,
            out_size_factor=out_size_factor,
            voxel_size=voxel_size[:2],
            nms_type='rotate',
            pre_max_size=1000,
            post_max_size=83,
            nms_thr=0.2)))
