# The CenterPoint channel-pruning config above on a 51.2 m x 51.2 m range
# with 0.2 m voxels (a 256 x 256 x 41 grid instead of 1024 x 1024 x 41), as
# rd-weight_centerpoint_voxel02-quick_nus.py, and 6 levels per curve (64
# groups x 5 passes). For tests and a first try.
_base_ = ['./rd-channel_centerpoint_voxel01_second_secfpn_nus.py']

point_cloud_range = [-25.6, -25.6, -5.0, 25.6, 25.6, 3.0]
voxel_size = [0.2, 0.2, 0.2]
model = dict(
    data_preprocessor=dict(
        voxel_layer=dict(
            point_cloud_range=point_cloud_range,
            voxel_size=voxel_size,
            max_voxels=(30000, 40000))),
    pts_middle_encoder=dict(sparse_shape=[41, 256, 256]),
    pts_bbox_head=dict(
        bbox_coder=dict(
            pc_range=point_cloud_range[:2], voxel_size=voxel_size[:2])),
    train_cfg=dict(
        pts=dict(
            point_cloud_range=point_cloud_range,
            grid_size=[256, 256, 40],
            voxel_size=voxel_size)),
    test_cfg=dict(
        pts=dict(pc_range=point_cloud_range[:2], voxel_size=voxel_size[:2])))

pruner = dict(num_levels=6)
