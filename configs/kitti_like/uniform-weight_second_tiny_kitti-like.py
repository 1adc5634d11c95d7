# Baseline for rd-weight_second_tiny_kitti-like.py: the same budget,
# calibration, masks and fine-tuning; the allocation is by one kept share for
# every layer, with magnitude ranking inside each layer.
# benchmarks/bench_baselines.py compares them all.
_base_ = ['./rd-weight_second_tiny_kitti-like.py']

pruner = dict(type='MagnitudeWeightPruner', allocation='uniform')
