# RD channel pruning settings, calibrated on the real nuScenes frame in
# ../shared/data/lidar through the detector config's own val dataloader and
# NuScenesDataset. Point calibration.dataset at your nuScenes infos to calibrate
# on more frames.
_base_ = ['./rd_channel_pruning.py']

calibration = dict(
    dataset=dict(data_root='../shared/data/lidar/',
                 ann_file='n015-2018-07-24-11-22-45+0800.pkl',
                 data_prefix=dict(pts='', sweeps='')))
