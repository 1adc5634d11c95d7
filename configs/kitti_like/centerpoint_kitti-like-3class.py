# The benchmark CenterPoint for the built-in KITTI-layout data (see
# _base_/centerpoint_kitti-like-3class.py), trained by
# tools/train_benchmark.py or by mmdet3d's own tools/train.py.
_base_ = ['./_base_/centerpoint_kitti-like-3class.py']
custom_imports = dict(
    imports=['rdprune_mm', 'rdprune_mm.cpu'], allow_failed_imports=False)
