# Baseline for rd-weight_second_tiny_kitti-like.py: the same budget,
# calibration, masks and fine-tuning; the allocation is by keep shares from
# Evci et al.'s Erdos-Renyi-kernel rule (2020), with magnitude ranking inside
# each layer. benchmarks/bench_baselines.py compares them all.
_base_ = ['./rd-weight_second_tiny_kitti-like.py']

pruner = dict(type='MagnitudeWeightPruner', allocation='erk')
