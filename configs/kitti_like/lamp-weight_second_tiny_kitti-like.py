# Baseline for rd-weight_second_tiny_kitti-like.py: the same budget,
# calibration, masks and fine-tuning; the allocation is by one threshold on
# the LAMP score (Lee et al. 2021), with magnitude ranking inside each layer.
# benchmarks/bench_baselines.py compares them all.
_base_ = ['./rd-weight_second_tiny_kitti-like.py']

pruner = dict(type='MagnitudeWeightPruner', allocation='lamp')
