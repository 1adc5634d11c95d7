# RD channel pruning settings, calibrated on the real KITTI frame 000008 in
# ../shared/data/lidar through the detector config's own val dataloader and
# KittiDataset. Point calibration.dataset at your KITTI infos to calibrate
# on more frames.
_base_ = ['./rd_channel_pruning.py']

calibration = dict(
    dataset=dict(data_root='../shared/data/lidar/',
                 ann_file='000008.pkl',
                 data_prefix=dict(pts='', img='')))
