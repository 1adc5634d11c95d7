"""CPU implementations of the mmcv ops that ship only CUDA kernels.

Importing :mod:`rdprune_mm.cpu` calls :func:`install_cpu_fallbacks`, after
which mmdet3d's LiDAR detectors run predict, loss and backward on CPU
tensors and KittiMetric evaluates without a CUDA driver. CUDA tensors still
reach mmcv's CUDA kernels unchanged.
"""
# Importing a kernel module registers its kernels and overrides.
from . import (grouping, iou3d, kitti_eval, neighbours,  # noqa: F401
               nms_rotated, points_in_boxes, sampling, voxels)
from .dispatch import install_dispatch
from .registry import CPU_KERNELS, CPU_OVERRIDES

__all__ = ['install_cpu_fallbacks', 'CPU_KERNELS', 'CPU_OVERRIDES']


def install_cpu_fallbacks() -> None:
    """Route CPU inputs of mmcv's CUDA-only ops to the kernels here and give
    mmdet3d's KITTI evaluation a CPU box-overlap routine. Idempotent."""
    install_dispatch()
    kitti_eval.patch_kitti_eval()
