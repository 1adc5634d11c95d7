# Channel baseline for rd-channel_second_tiny_kitti-like.py: the same groups,
# budget, calibration and slim export; the allocation is one kept share for
# every group, with no curves
# (rdprune_mm.pruners.ChannelBaselinePruner).
_base_ = ['./rd-channel_second_tiny_kitti-like.py']

pruner = dict(type='ChannelBaselinePruner', allocation='uniform')
