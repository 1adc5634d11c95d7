# A small SECOND for the built-in KITTI-layout LiDAR data (see
# _base_/second_tiny_kitti-like-3class.py), trained by tools/demo.py or by
# mmdet3d's own tools/train.py:
#   python tools/make_kitti_like_data.py --out-dir data/kitti_like \
#       --num-train 200 --num-val 50 --create-infos
#   python .venv/lib/python3.11/site-packages/mmdet3d/.mim/tools/train.py \
#       configs/kitti_like/second_tiny_kitti-like-3class.py
_base_ = ['./_base_/second_tiny_kitti-like-3class.py']
# rdprune_mm.cpu: CPU kernels for mmcv's CUDA-only ops, spconv's CPU
# backward, KittiMetric without CUDA
custom_imports = dict(
    imports=['rdprune_mm', 'rdprune_mm.cpu'], allow_failed_imports=False)
