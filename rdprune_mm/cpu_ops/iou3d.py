"""CPU kernels of mmcv's ``iou3d`` ops on (x, y, z, dx, dy, dz, heading) boxes.

``iou3d_boxes_overlap_bev_forward``, ``iou3d_nms3d_forward`` and
``iou3d_nms3d_normal_forward`` follow mmcv's CUDA kernels
(``iou3d_cuda_kernel.cuh``) in float32: the same polygon clipping with its
1e-2 corner margin, a strict ``iou > threshold`` and the greedy keep order.

Numba compiles the kernels on their first call.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit
from torch import Tensor

from .registry import cpu_kernel

# ``iou3d_cuda_kernel.cuh`` constants.
_IOU3D_EPS = np.float32(1e-8)
_IOU3D_MARGIN = np.float32(1e-2)
# Boxes whose axis-aligned extents are further apart than this, plus a
# float32 rounding allowance, have a BEV overlap of exactly 0 in
# ``box_overlap`` (its corner test accepts points up to 1e-2 outside).
_IOU3D_PRUNE_PAD = 0.05


@njit(cache=True)
def _iou3d_geometry(boxes: np.ndarray):
    """Corners, inverse rotation and padded extents of each box.

    Returns:
        tuple: corners (N, 5, 2) rotated as ``box_overlap`` rotates them,
        the fifth repeating the first; ``cos``/``sin`` of ``-heading``
        (N, 2) as ``check_in_box2d`` uses them; axis-aligned extents
        (N, 4) ``(x_min, y_min, x_max, y_max)`` grown by the prune pad.
    """
    num = boxes.shape[0]
    corners = np.empty((num, 5, 2), np.float32)
    inv_rot = np.empty((num, 2), np.float32)
    extents = np.empty((num, 4), np.float64)
    two = np.float32(2)
    for b in range(num):
        cx, cy = boxes[b, 0], boxes[b, 1]
        dx_half, dy_half = boxes[b, 3] / two, boxes[b, 4] / two
        xs = (cx - dx_half, cx + dx_half, cx + dx_half, cx - dx_half)
        ys = (cy - dy_half, cy - dy_half, cy + dy_half, cy + dy_half)
        cos_a, sin_a = math.cos(boxes[b, 6]), math.sin(boxes[b, 6])
        for k in range(4):
            corners[b, k, 0] = (xs[k] - cx) * cos_a - (ys[k] - cy) * sin_a + cx
            corners[b, k, 1] = (xs[k] - cx) * sin_a + (ys[k] - cy) * cos_a + cy
        corners[b, 4, 0], corners[b, 4, 1] = corners[b, 0, 0], corners[b, 0, 1]
        inv_rot[b, 0] = math.cos(-boxes[b, 6])
        inv_rot[b, 1] = math.sin(-boxes[b, 6])
        pad = _IOU3D_PRUNE_PAD + 1e-5 * (abs(cx) + abs(cy))
        extents[b, 0] = min(corners[b, 0, 0], corners[b, 1, 0],
                            corners[b, 2, 0], corners[b, 3, 0]) - pad
        extents[b, 1] = min(corners[b, 0, 1], corners[b, 1, 1],
                            corners[b, 2, 1], corners[b, 3, 1]) - pad
        extents[b, 2] = max(corners[b, 0, 0], corners[b, 1, 0],
                            corners[b, 2, 0], corners[b, 3, 0]) + pad
        extents[b, 3] = max(corners[b, 0, 1], corners[b, 1, 1],
                            corners[b, 2, 1], corners[b, 3, 1]) + pad
    return corners, inv_rot, extents


@njit(cache=True)
def _extents_apart(ext_a: np.ndarray, ext_b: np.ndarray) -> bool:
    """Whether two (x_min, y_min, x_max, y_max) extents are disjoint; False
    for NaN so that such boxes reach the exact computation."""
    return (ext_a[0] > ext_b[2] or ext_b[0] > ext_a[2] or ext_a[1] > ext_b[3]
            or ext_b[1] > ext_a[3])


@njit(cache=True)
def _iou3d_in_box(box: np.ndarray, inv_rot: np.ndarray, px: np.float32,
                  py: np.float32) -> bool:
    """``check_in_box2d``: the point within the box grown by 1e-2."""
    two = np.float32(2)
    rot_x = (px - box[0]) * inv_rot[0] + (py - box[1]) * (-inv_rot[1])
    rot_y = (px - box[0]) * inv_rot[1] + (py - box[1]) * inv_rot[0]
    return (abs(rot_x) < box[3] / two + _IOU3D_MARGIN
            and abs(rot_y) < box[4] / two + _IOU3D_MARGIN)


@njit(cache=True)
def _iou3d_cross(p1x, p1y, p2x, p2y, p0x, p0y):
    return (p1x - p0x) * (p2y - p0y) - (p2x - p0x) * (p1y - p0y)


@njit(cache=True)
def _iou3d_segment_intersection(p1x, p1y, p0x, p0y, q1x, q1y, q0x, q0y):
    """``intersection``: whether segments p0-p1 and q0-q1 cross, and where."""
    zero = np.float32(0)
    if not (min(p0x, p1x) <= max(q0x, q1x) and min(q0x, q1x) <= max(p0x, p1x)
            and min(p0y, p1y) <= max(q0y, q1y)
            and min(q0y, q1y) <= max(p0y, p1y)):
        return False, zero, zero
    s1 = _iou3d_cross(q0x, q0y, p1x, p1y, p0x, p0y)
    s2 = _iou3d_cross(p1x, p1y, q1x, q1y, p0x, p0y)
    s3 = _iou3d_cross(p0x, p0y, q1x, q1y, q0x, q0y)
    s4 = _iou3d_cross(q1x, q1y, p1x, p1y, q0x, q0y)
    if not (s1 * s2 > 0 and s3 * s4 > 0):
        return False, zero, zero
    s5 = _iou3d_cross(q1x, q1y, p1x, p1y, p0x, p0y)
    if abs(s5 - s1) > _IOU3D_EPS:
        return (True, (s5 * q0x - s1 * q1x) / (s5 - s1),
                (s5 * q0y - s1 * q1y) / (s5 - s1))
    a0, b0 = p0y - p1y, p1x - p0x
    c0 = p0x * p1y - p1x * p0y
    a1, b1 = q0y - q1y, q1x - q0x
    c1 = q0x * q1y - q1x * q0y
    det = a0 * b1 - a1 * b0
    return True, (b0 * c1 - b1 * c0) / det, (a1 * c0 - a0 * c1) / det


@njit(cache=True)
def _iou3d_box_overlap(box_a, corners_a, inv_rot_a, box_b, corners_b,
                       inv_rot_b, scratch) -> np.float32:
    """``box_overlap``: BEV intersection area of two boxes.

    ``scratch`` is a (3, 24) float32 buffer: at most 16 crossings and 8
    corners.
    """
    xs, ys, angles = scratch[0], scratch[1], scratch[2]
    cnt = 0
    sum_x, sum_y = np.float32(0), np.float32(0)
    for i in range(4):
        for j in range(4):
            hit, x, y = _iou3d_segment_intersection(
                corners_a[i + 1, 0], corners_a[i + 1, 1], corners_a[i, 0],
                corners_a[i, 1], corners_b[j + 1, 0], corners_b[j + 1, 1],
                corners_b[j, 0], corners_b[j, 1])
            if hit:
                xs[cnt], ys[cnt] = x, y
                sum_x += x
                sum_y += y
                cnt += 1
    for k in range(4):
        if _iou3d_in_box(box_a, inv_rot_a, corners_b[k, 0], corners_b[k, 1]):
            xs[cnt], ys[cnt] = corners_b[k, 0], corners_b[k, 1]
            sum_x += xs[cnt]
            sum_y += ys[cnt]
            cnt += 1
        if _iou3d_in_box(box_b, inv_rot_b, corners_a[k, 0], corners_a[k, 1]):
            xs[cnt], ys[cnt] = corners_a[k, 0], corners_a[k, 1]
            sum_x += xs[cnt]
            sum_y += ys[cnt]
            cnt += 1
    if cnt == 0:
        return np.float32(0)
    center_x, center_y = sum_x / np.float32(cnt), sum_y / np.float32(cnt)
    for k in range(cnt):
        angles[k] = math.atan2(ys[k] - center_y, xs[k] - center_x)
    for j in range(cnt - 1):  # the kernel's bubble sort, by angle
        for i in range(cnt - j - 1):
            if angles[i] > angles[i + 1]:
                angles[i], angles[i + 1] = angles[i + 1], angles[i]
                xs[i], xs[i + 1] = xs[i + 1], xs[i]
                ys[i], ys[i + 1] = ys[i + 1], ys[i]
    area = np.float32(0)
    for k in range(cnt - 1):
        area += ((xs[k] - xs[0]) * (ys[k + 1] - ys[0]) -
                 (ys[k] - ys[0]) * (xs[k + 1] - xs[0]))
    return abs(area) / np.float32(2)


@njit(cache=True)
def _iou3d_overlap_bev(boxes_a: np.ndarray,
                       boxes_b: np.ndarray) -> np.ndarray:
    """BEV overlap areas (M, N) of float32 boxes (M, 7) and (N, 7)."""
    corners_a, inv_rot_a, ext_a = _iou3d_geometry(boxes_a)
    corners_b, inv_rot_b, ext_b = _iou3d_geometry(boxes_b)
    overlap = np.zeros((boxes_a.shape[0], boxes_b.shape[0]), np.float32)
    scratch = np.empty((3, 24), np.float32)
    for a in range(boxes_a.shape[0]):
        for b in range(boxes_b.shape[0]):
            if _extents_apart(ext_a[a], ext_b[b]):
                continue
            overlap[a, b] = _iou3d_box_overlap(boxes_a[a], corners_a[a],
                                               inv_rot_a[a], boxes_b[b],
                                               corners_b[b], inv_rot_b[b],
                                               scratch)
    return overlap


@njit(cache=True)
def _fmaxf(a: np.float32, b: np.float32) -> np.float32:
    """C ``fmaxf``: a NaN argument loses."""
    return b if (a < b or a != a) else a


@njit(cache=True)
def _fminf(a: np.float32, b: np.float32) -> np.float32:
    """C ``fminf``: a NaN argument loses."""
    return b if (a > b or a != a) else a


@njit(cache=True)
def _iou_normal(a: np.ndarray, b: np.ndarray) -> np.float32:
    """``iou_normal``: BEV IoU with both headings taken as 0."""
    two, zero = np.float32(2), np.float32(0)
    left = _fmaxf(a[0] - a[3] / two, b[0] - b[3] / two)
    right = _fminf(a[0] + a[3] / two, b[0] + b[3] / two)
    top = _fmaxf(a[1] - a[4] / two, b[1] - b[4] / two)
    bottom = _fminf(a[1] + a[4] / two, b[1] + b[4] / two)
    inter = _fmaxf(right - left, zero) * _fmaxf(bottom - top, zero)
    return inter / _fmaxf(a[3] * a[4] + b[3] * b[4] - inter, _IOU3D_EPS)


@njit(cache=True)
def _iou3d_nms(boxes: np.ndarray, thresh: np.float32,
               normal: bool) -> np.ndarray:
    """Greedy NMS of score-sorted boxes; kept positions.

    Boxes overlap by ``iou_bev`` (rotated), or by ``iou_normal`` (headings
    taken as 0) when ``normal``.
    """
    num = boxes.shape[0]
    corners, inv_rot, extents = _iou3d_geometry(boxes)
    # A pair too far apart to overlap has an iou of 0, which exceeds only a
    # negative threshold.
    may_prune = not (thresh < 0) and not normal
    scratch = np.empty((3, 24), np.float32)
    removed = np.zeros(num, np.bool_)
    keep = np.empty(num, np.int64)
    num_keep = 0
    for i in range(num):
        if removed[i]:
            continue
        keep[num_keep] = i
        num_keep += 1
        area_i = boxes[i, 3] * boxes[i, 4]
        for j in range(i + 1, num):
            if removed[j] or (may_prune
                              and _extents_apart(extents[i], extents[j])):
                continue
            if normal:
                iou = _iou_normal(boxes[i], boxes[j])
            else:
                overlap = _iou3d_box_overlap(boxes[i], corners[i],
                                             inv_rot[i], boxes[j], corners[j],
                                             inv_rot[j], scratch)
                iou = overlap / _fmaxf(
                    area_i + boxes[j, 3] * boxes[j, 4] - overlap, _IOU3D_EPS)
            if iou > thresh:
                removed[j] = True
    return keep[:num_keep]


def _float32_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).contiguous().numpy()


def _fill_keep(kept: np.ndarray, keep: Tensor, keep_num: Tensor) -> None:
    """Write kept positions the way the CUDA launchers do."""
    keep[:len(kept)] = torch.from_numpy(kept).to(keep.dtype)
    keep_num.fill_(len(kept))


@cpu_kernel('iou3d_boxes_overlap_bev_forward')
def iou3d_boxes_overlap_bev_forward(boxes_a: Tensor, boxes_b: Tensor,
                                    ans_overlap: Tensor) -> None:
    """Fill ``ans_overlap`` (M, N) with the BEV overlap areas of
    (x, y, z, dx, dy, dz, heading) boxes ``boxes_a`` (M, 7), ``boxes_b``
    (N, 7)."""
    overlap = _iou3d_overlap_bev(
        _float32_numpy(boxes_a), _float32_numpy(boxes_b))
    ans_overlap.copy_(torch.from_numpy(overlap))


@cpu_kernel('iou3d_nms3d_forward')
def iou3d_nms3d_forward(boxes: Tensor, keep: Tensor, keep_num: Tensor,
                        nms_overlap_thresh: float) -> None:
    """Greedy rotated BEV NMS of score-sorted boxes (N, 7).

    Writes the kept positions to ``keep[:k]`` and ``k`` to ``keep_num``.
    """
    kept = _iou3d_nms(
        _float32_numpy(boxes), np.float32(nms_overlap_thresh), False)
    _fill_keep(kept, keep, keep_num)


@cpu_kernel('iou3d_nms3d_normal_forward')
def iou3d_nms3d_normal_forward(boxes: Tensor, keep: Tensor, keep_num: Tensor,
                               nms_overlap_thresh: float) -> None:
    """Like :func:`iou3d_nms3d_forward` with the headings taken as 0."""
    kept = _iou3d_nms(
        _float32_numpy(boxes), np.float32(nms_overlap_thresh), True)
    _fill_keep(kept, keep, keep_num)
