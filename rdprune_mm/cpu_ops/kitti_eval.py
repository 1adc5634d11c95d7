"""CPU rotated IoU for mmdet3d's KITTI evaluation.

``mmdet3d/evaluation/functional/kitti_utils/eval.py`` computes BEV and 3D
overlaps with ``rotate_iou_gpu_eval``, which it imports from the sibling
module ``rotate_iou`` at call time. That module compiles a ``numba.cuda``
kernel on import, so without a CUDA driver the import itself raises
``CudaSupportError`` and KittiMetric cannot run.

:func:`patch_kitti_eval` installs an import hook for that one module name:
when numba cannot reach a CUDA GPU (``numba.cuda.is_available()`` is False)
the import yields a module whose ``rotate_iou_gpu_eval`` is
:func:`rotate_iou_cpu_eval`. With a CUDA GPU the hook steps aside and
mmdet3d's module is imported as usual.

:func:`rotate_iou_cpu_eval` keeps the kernel's conventions (clockwise
angles, the ``(N, K)`` layout, criterion 0 normalized by the *query* box,
float32 input and output) but computes the overlap polygon by
Sutherland-Hodgman clipping in float64 instead of porting the kernel's
vertex search. On generic boxes both agree to float32 rounding; where
corners or edges coincide, e.g. a box against itself, the kernel's strict
inside and crossing tests drop vertices at random and it returns 0 or 1/3
for identical boxes (the same code run in numba's CUDA simulator does; see
open-mmlab/OpenPCDet#972, traveller59/second.pytorch#157), while clipping
returns the true overlap, so ground truth scored against itself gets AP 100.

The test is numba's and not torch's because the kernel is numba's: a CPU
build of torch on a GPU host still has a working numba kernel, and
torch's view of CUDA says nothing about whether numba finds the driver.
The test runs when the evaluation first imports the module, not when
:mod:`rdprune_mm.cpu` is imported, so switching CPU support on never
initializes CUDA.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import math
import sys
import types
from typing import Optional, Sequence

import numba
import numpy as np

ROTATE_IOU_MODULE = 'mmdet3d.evaluation.functional.kitti_utils.rotate_iou'

# Clipping by a half-plane adds at most one vertex to a convex polygon, but
# rounding near an edge may flip vertex sides; 2n per clip bounds any case.
_MAX_VERTICES = 4 * 2**4


@numba.njit(error_model='numpy', inline='always')
def _box_corners(box: np.ndarray, corners: np.ndarray) -> None:
    """Corners ``(4, 2)`` of a ``(x, y, dx, dy, angle)`` box rotated
    clockwise by ``angle``, in the order of mmdet3d's ``rbbox_to_corners``."""
    a_cos = math.cos(box[4])
    a_sin = math.sin(box[4])
    half_x = box[2] / 2
    half_y = box[3] / 2
    local_x = (-half_x, -half_x, half_x, half_x)
    local_y = (-half_y, half_y, half_y, -half_y)
    for i in range(4):
        corners[i, 0] = a_cos * local_x[i] + a_sin * local_y[i] + box[0]
        corners[i, 1] = -a_sin * local_x[i] + a_cos * local_y[i] + box[1]


@numba.njit(error_model='numpy', inline='always')
def _all_corners(boxes: np.ndarray) -> np.ndarray:
    corners = np.empty((boxes.shape[0], 4, 2), dtype=np.float64)
    for n in range(boxes.shape[0]):
        _box_corners(boxes[n].astype(np.float64), corners[n])
    return corners


@numba.njit(error_model='numpy', inline='always')
def _signed_area(polygon: np.ndarray, num: int) -> float:
    """Shoelace area, positive for counter-clockwise vertices."""
    twice_area = 0.0
    for i in range(num):
        j = (i + 1) % num
        twice_area += (
            polygon[i, 0] * polygon[j, 1] - polygon[j, 0] * polygon[i, 1])
    return twice_area / 2


@numba.njit(error_model='numpy', inline='always')
def _is_flat(signed_area: float) -> bool:
    """Zero-size boxes (and NaN ones) overlap nothing."""
    return not (signed_area > 0 or signed_area < 0)


@numba.njit(error_model='numpy', inline='always')
def _clip_by_edge(src: np.ndarray, num: int, dst: np.ndarray,
                  start: np.ndarray, end: np.ndarray, side: float) -> int:
    """Sutherland-Hodgman step: keep the part of ``src[:num]`` on the inner
    side of the line ``start -> end`` (left if ``side`` is 1, right if -1).

    A crossing is placed by interpolating along the clipped edge, never by
    intersecting two lines, so near-parallel and coincident edges stay
    exact. Returns the number of vertices written to ``dst``.
    """
    edge_x = end[0] - start[0]
    edge_y = end[1] - start[1]
    out = 0
    for i in range(num):
        j = (i + 1) % num
        dist_i = side * (
            edge_x * (src[i, 1] - start[1]) - edge_y * (src[i, 0] - start[0]))
        dist_j = side * (
            edge_x * (src[j, 1] - start[1]) - edge_y * (src[j, 0] - start[0]))
        if dist_i >= 0:
            dst[out, 0] = src[i, 0]
            dst[out, 1] = src[i, 1]
            out += 1
        if (dist_i >= 0) != (dist_j >= 0):
            t = dist_i / (dist_i - dist_j)
            dst[out, 0] = src[i, 0] + t * (src[j, 0] - src[i, 0])
            dst[out, 1] = src[i, 1] + t * (src[j, 1] - src[i, 1])
            out += 1
    return out


@numba.njit(error_model='numpy', inline='always')
def _intersection_area(corners1: np.ndarray, corners2: np.ndarray,
                       buffer1: np.ndarray, buffer2: np.ndarray) -> float:
    """Area of the overlap of two convex quadrilaterals."""
    orientation = _signed_area(corners1, 4)
    if _is_flat(orientation) or _is_flat(_signed_area(corners2, 4)):
        return 0.0
    side = 1.0 if orientation > 0 else -1.0
    buffer1[:4] = corners2
    src, dst = buffer1, buffer2
    num = 4
    for i in range(4):
        num = _clip_by_edge(src, num, dst, corners1[i], corners1[(i + 1) % 4],
                            side)
        if num < 3:
            return 0.0
        src, dst = dst, src
    return abs(_signed_area(src, num))


@numba.njit(error_model='numpy', inline='always')
def _reach(boxes: np.ndarray) -> np.ndarray:
    """Circumradius of each box, padded far above rounding."""
    reach = np.empty(boxes.shape[0], dtype=np.float64)
    for n in range(boxes.shape[0]):
        dx, dy = float(boxes[n, 2]), float(boxes[n, 3])
        reach[n] = 0.5 * math.sqrt(dx * dx + dy * dy) * (1 + 1e-6) + 1e-6
    return reach


@numba.njit(error_model='numpy', inline='always')
def _normalize(area_inter: float, area1: float, area2: float,
               criterion: int) -> float:
    """``devRotateIoUEval``'s normalization; ``area1`` is the query box's."""
    if criterion == -1:
        return area_inter / (area1 + area2 - area_inter)
    if criterion == 0:
        return area_inter / area1
    if criterion == 1:
        return area_inter / area2
    return area_inter


@numba.njit(cache=True, error_model='numpy')
def _rotate_iou_kernel(boxes: np.ndarray, query_boxes: np.ndarray,
                       iou: np.ndarray, criterion: int) -> None:
    # Serial on purpose: eval.py calls this per part with small inputs,
    # where starting a parallel region costs more than the work.
    corners = _all_corners(boxes)
    qcorners = _all_corners(query_boxes)
    reach = _reach(boxes)
    qreach = _reach(query_boxes)
    buffer1 = np.empty((_MAX_VERTICES, 2), dtype=np.float64)
    buffer2 = np.empty((_MAX_VERTICES, 2), dtype=np.float64)
    for n in range(boxes.shape[0]):
        x, y = float(boxes[n, 0]), float(boxes[n, 1])
        area = boxes[n, 2] * boxes[n, 3]
        for k in range(query_boxes.shape[0]):
            dist_x = x - query_boxes[k, 0]
            dist_y = y - query_boxes[k, 1]
            limit = reach[n] + qreach[k]
            area_inter = 0.0
            # Boxes whose circumcircles are apart cannot overlap.
            if not dist_x * dist_x + dist_y * dist_y > limit * limit:
                area_inter = _intersection_area(qcorners[k], corners[n],
                                                buffer1, buffer2)
            qarea = query_boxes[k, 2] * query_boxes[k, 3]
            iou[n, k] = _normalize(area_inter, qarea, area, criterion)


def rotate_iou_cpu_eval(boxes: np.ndarray,
                        query_boxes: np.ndarray,
                        criterion: int = -1,
                        device_id: int = 0) -> np.ndarray:
    """CPU twin of mmdet3d's ``rotate_iou_gpu_eval``.

    Boxes are BEV boxes ``(x, y, dx, dy, angle)`` in the camera frame, the
    angle clockwise when positive. Like the CUDA kernel, the overlap of
    ``boxes[n]`` and ``query_boxes[k]`` is normalized by the area of the
    *query* box for ``criterion=0`` and of ``boxes[n]`` for ``criterion=1``.

    Args:
        boxes (np.ndarray): Boxes ``(N, 5)``.
        query_boxes (np.ndarray): Boxes ``(K, 5)``.
        criterion (int): -1: intersection over union; 0: intersection over
            the area of ``query_boxes[k]``; 1: intersection over the area of
            ``boxes[n]``; any other value: the intersection area.
            Defaults to -1.
        device_id (int): Unused; kept for the signature. Defaults to 0.

    Returns:
        np.ndarray: Overlaps ``(N, K)``, float32.
    """
    boxes = np.ascontiguousarray(boxes, dtype=np.float32)
    query_boxes = np.ascontiguousarray(query_boxes, dtype=np.float32)
    iou = np.zeros((boxes.shape[0], query_boxes.shape[0]), dtype=np.float32)
    if iou.size == 0:
        return iou
    for name, array in (('boxes', boxes), ('query_boxes', query_boxes)):
        if array.ndim != 2 or array.shape[1] != 5:
            raise ValueError(f'{name} must have shape (n, 5), got '
                             f'{array.shape}')
    _rotate_iou_kernel(boxes, query_boxes, iou, int(criterion))
    return iou


def numba_cuda_available() -> bool:
    """Whether numba reaches a CUDA GPU, which mmdet3d's ``rotate_iou``
    module needs to compile its kernel on import."""
    from numba import cuda
    return bool(cuda.is_available())


class _CpuRotateIouLoader(importlib.abc.Loader):
    """Fills the module with the CPU routine under mmdet3d's names."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__doc__ = ("CPU stand-in for mmdet3d's rotate_iou, installed "
                          'by rdprune_mm because numba has no CUDA GPU.')
        module.rotate_iou_gpu_eval = rotate_iou_cpu_eval
        module.rotate_iou_cpu_eval = rotate_iou_cpu_eval


class CpuRotateIouFinder(importlib.abc.MetaPathFinder):
    """Serves ``kitti_utils.rotate_iou`` from the CPU when numba has no
    CUDA GPU; defers to the regular import otherwise."""

    def find_spec(
        self,
        fullname: str,
        path: Optional[Sequence[str]],
        target: Optional[types.ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != ROTATE_IOU_MODULE or numba_cuda_available():
            return None
        return importlib.machinery.ModuleSpec(fullname, _CpuRotateIouLoader())


def patch_kitti_eval() -> None:
    """Let mmdet3d's KITTI evaluation run without CUDA. Idempotent.

    Works whatever was imported before: ``eval.py`` imports ``rotate_iou``
    inside the overlap functions, and without CUDA that import has never
    succeeded, so the next one goes through the hook.
    """
    if not any(isinstance(f, CpuRotateIouFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, CpuRotateIouFinder())
