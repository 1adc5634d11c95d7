"""CPU implementations of the mmcv ops that ship only CUDA kernels.

Importing :mod:`rdprune_mm` calls :func:`install_cpu_fallbacks`, after which
mmdet3d's LiDAR detectors run predict, loss and backward on CPU tensors and
KittiMetric evaluates without a CUDA driver. CUDA tensors still reach mmcv's
CUDA kernels unchanged.
"""
from . import boxes, kitti_eval, points, voxels  # noqa: F401 (registers)
from .dispatch import install_dispatch
from .registry import CPU_KERNELS, CPU_OVERRIDES

__all__ = ['install_cpu_fallbacks', 'CPU_KERNELS', 'CPU_OVERRIDES']


def install_cpu_fallbacks() -> None:
    """Route CPU inputs of mmcv's CUDA-only ops to the kernels here and give
    mmdet3d's KITTI evaluation a CPU box-overlap routine. Idempotent."""
    install_dispatch()
    kitti_eval.patch_kitti_eval()
