"""CPU kernels of mmcv's rotated-box ops.

* ``iou3d_boxes_overlap_bev_forward``, ``iou3d_nms3d_forward`` and
  ``iou3d_nms3d_normal_forward`` follow mmcv's CUDA kernels
  (``iou3d_cuda_kernel.cuh``) in float32: the same polygon clipping with its
  1e-2 corner margin, a strict ``iou > threshold`` and the greedy keep order.
* ``nms_rotated`` returns exactly what mmcv's own O(n^2) CPU kernel returns
  (its IoU arithmetic from ``box_iou_rotated_utils.hpp`` down to the
  ``std::sort`` of the hull points, ``iou >= threshold``), but computes the
  IoU only of pairs that are close along x and whose cheap upper bound
  reaches the threshold. The one exception is geometry that float32 cannot
  represent: mmcv's CPU IoU of a 1,462 m x 1e-5 m box against a 565 m x
  92 m box reads 4.4e6 (cancellation in the polygon area), so mmcv drops
  the thin box; the bound (IoU <= smaller area / larger area) skips the pair
  and keeps it. Such boxes come only from untrained regression outputs.
* ``points_in_boxes_part`` / ``points_in_boxes_all`` replace mmcv's Python
  functions (which call ``torch.cuda.current_device()``) for CPU tensors.

Numba compiles the kernels on their first call: a few seconds in all.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np
import torch
from numba import njit
from torch import Tensor

from .registry import cpu_kernel, cpu_override

# ``iou3d_cuda_kernel.cuh`` constants.
_IOU3D_EPS = np.float32(1e-8)
_IOU3D_MARGIN = np.float32(1e-2)
# Boxes whose axis-aligned extents are further apart than this, plus a
# float32 rounding allowance, have a BEV overlap of exactly 0 in
# ``box_overlap`` (its corner test accepts points up to 1e-2 outside).
_IOU3D_PRUNE_PAD = 0.05
# Relative growth of the box extents in ``nms_rotated``'s pair rejection.
_ROTATED_PRUNE_SLACK = 1e-3
# Elements of one (batch, points, boxes) mask in points_in_boxes_*.
_POINTS_IN_BOXES_CHUNK = 1 << 20

# --------------------------------------------------------------------------
# iou3d: BEV overlap of (x, y, z, dx, dy, dz, heading) boxes, CUDA semantics
# --------------------------------------------------------------------------


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
def _iou3d_nms(boxes: np.ndarray, thresh: np.float32) -> np.ndarray:
    """Greedy NMS of score-sorted boxes with ``iou_bev``; kept positions."""
    num = boxes.shape[0]
    corners, inv_rot, extents = _iou3d_geometry(boxes)
    # A pair too far apart to overlap has an iou of 0, which exceeds only a
    # negative threshold.
    may_prune = not (thresh < 0)
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
            overlap = _iou3d_box_overlap(boxes[i], corners[i], inv_rot[i],
                                         boxes[j], corners[j], inv_rot[j],
                                         scratch)
            union = _fmaxf(area_i + boxes[j, 3] * boxes[j, 4] - overlap,
                           _IOU3D_EPS)
            if overlap / union > thresh:
                removed[j] = True
    return keep[:num_keep]


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
def _iou3d_nms_normal(boxes: np.ndarray, thresh: np.float32) -> np.ndarray:
    """Greedy NMS of score-sorted boxes with ``iou_normal``; kept positions."""
    num = boxes.shape[0]
    removed = np.zeros(num, np.bool_)
    keep = np.empty(num, np.int64)
    num_keep = 0
    for i in range(num):
        if removed[i]:
            continue
        keep[num_keep] = i
        num_keep += 1
        for j in range(i + 1, num):
            if not removed[j] and _iou_normal(boxes[i], boxes[j]) > thresh:
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
    kept = _iou3d_nms(_float32_numpy(boxes), np.float32(nms_overlap_thresh))
    _fill_keep(kept, keep, keep_num)


@cpu_kernel('iou3d_nms3d_normal_forward')
def iou3d_nms3d_normal_forward(boxes: Tensor, keep: Tensor, keep_num: Tensor,
                               nms_overlap_thresh: float) -> None:
    """Like :func:`iou3d_nms3d_forward` with the headings taken as 0."""
    kept = _iou3d_nms_normal(
        _float32_numpy(boxes), np.float32(nms_overlap_thresh))
    _fill_keep(kept, keep, keep_num)


# --------------------------------------------------------------------------
# nms_rotated: (x, y, w, h, angle) boxes, mmcv's CPU kernel semantics
# --------------------------------------------------------------------------

# libstdc++'s std::sort switches from quicksort to insertion sort here.
_STL_SORT_THRESHOLD = 16


@njit(cache=True)
def _hull_less(ax, ay, bx, by) -> bool:
    """``convex_hull_graham``'s sort order: by angle, then by distance."""
    cross = ax * by - bx * ay
    if abs(cross) < 1e-6:
        return ax * ax + ay * ay < bx * bx + by * by
    return cross > 0


@njit(cache=True)
def _partition_pivot(xs, ys, first: int, last: int) -> int:
    """libstdc++ ``__unguarded_partition_pivot``: median of three to
    ``first``, then partition ``[first + 1, last)`` around it."""
    a, b, c = first + 1, first + (last - first) // 2, last - 1
    if _hull_less(xs[a], ys[a], xs[b], ys[b]):
        if _hull_less(xs[b], ys[b], xs[c], ys[c]):
            median = b
        elif _hull_less(xs[a], ys[a], xs[c], ys[c]):
            median = c
        else:
            median = a
    elif _hull_less(xs[a], ys[a], xs[c], ys[c]):
        median = a
    elif _hull_less(xs[b], ys[b], xs[c], ys[c]):
        median = c
    else:
        median = b
    xs[first], xs[median] = xs[median], xs[first]
    ys[first], ys[median] = ys[median], ys[first]
    lo, hi = first + 1, last
    while True:
        while lo < last and _hull_less(xs[lo], ys[lo], xs[first], ys[first]):
            lo += 1
        hi -= 1
        while _hull_less(xs[first], ys[first], xs[hi], ys[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        xs[lo], xs[hi] = xs[hi], xs[lo]
        ys[lo], ys[hi] = ys[hi], ys[lo]
        lo += 1


@njit(cache=True)
def _stl_sort(xs, ys, first: int, last: int) -> None:
    """libstdc++ ``std::sort`` of points ``[first, last)`` by
    :func:`_hull_less`, step by step, because the tolerance in that order
    makes the result depend on the algorithm.

    ``first`` is at least 1 and slot 0 holds the origin, which never
    compares less, so the unguarded insertions stop there as in C++.
    """
    if last - first > _STL_SORT_THRESHOLD:
        # __introsort_loop; its sub-ranges are independent, so a stack
        # stands in for the recursion. 23 points never reach its
        # heap-sort fallback.
        stack = np.empty(48, np.int64)
        stack[0], stack[1] = first, last
        depth = 1
        while depth > 0:
            depth -= 1
            lo, hi = stack[2 * depth], stack[2 * depth + 1]
            while hi - lo > _STL_SORT_THRESHOLD:
                cut = _partition_pivot(xs, ys, lo, hi)
                stack[2 * depth], stack[2 * depth + 1] = cut, hi
                depth += 1
                hi = cut
    # __final_insertion_sort: the first 16 slots by __insertion_sort, the
    # rest by __unguarded_linear_insert.
    guarded_end = min(last, first + _STL_SORT_THRESHOLD)
    for i in range(first + 1, last):
        vx, vy = xs[i], ys[i]
        if i < guarded_end and _hull_less(vx, vy, xs[first], ys[first]):
            for k in range(i, first, -1):
                xs[k], ys[k] = xs[k - 1], ys[k - 1]
            xs[first], ys[first] = vx, vy
            continue
        k = i
        while k > 0 and _hull_less(vx, vy, xs[k - 1], ys[k - 1]):
            xs[k], ys[k] = xs[k - 1], ys[k - 1]
            k -= 1
        xs[k], ys[k] = vx, vy


@njit(cache=True)
def _frame_overlap(frame_i: np.ndarray, frame_j: np.ndarray) -> float:
    """Area of box ``i`` clipped to the bounding rectangle of box ``j`` in
    the frame of box ``i``: at least their intersection."""
    cos_i, sin_i = frame_i[2], frame_i[3]
    half_w, half_h = frame_i[4], frame_i[5]
    dx, dy = frame_j[0] - frame_i[0], frame_j[1] - frame_i[1]
    cos_d = abs(cos_i * frame_j[2] + sin_i * frame_j[3])
    sin_d = abs(cos_i * frame_j[3] - sin_i * frame_j[2])
    ext_x = frame_j[4] * cos_d + frame_j[5] * sin_d
    ext_y = frame_j[4] * sin_d + frame_j[5] * cos_d
    center_x = abs(dx * cos_i + dy * sin_i)
    center_y = abs(dy * cos_i - dx * sin_i)
    side_x = min(half_w, center_x + ext_x) - max(-half_w, center_x - ext_x)
    side_y = min(half_h, center_y + ext_y) - max(-half_h, center_y - ext_y)
    return max(side_x, 0.0) * max(side_y, 0.0)


@njit(cache=True)
def _iou_surely_below(frame_i: np.ndarray, frame_j: np.ndarray,
                      thresh: float) -> bool:
    """Whether mmcv's IoU of two finite boxes is below ``thresh`` > 0.

    A frame is ``(x, y, cos, sin, w / 2, h / 2, reach_x, reach_y)``, the
    reaches being slightly grown half extents along x and y. Boxes whose
    reaches are apart do not intersect (IoU exactly 0 there); else the
    intersection is bounded by :func:`_frame_overlap` both ways, plus a
    margin above the float32 rounding and the 1e-6 collinearity tolerance
    of the C++ hull.
    """
    if (abs(frame_i[0] - frame_j[0]) > frame_i[6] + frame_j[6]
            or abs(frame_i[1] - frame_j[1]) > frame_i[7] + frame_j[7]):
        return True
    area_i = 4 * frame_i[4] * frame_i[5]
    area_j = 4 * frame_j[4] * frame_j[5]
    inter = min(
        _frame_overlap(frame_i, frame_j), _frame_overlap(frame_j, frame_i),
        area_i, area_j) + 1e-4 + 1e-5 * (area_i + area_j)
    return inter < thresh * (area_i + area_j - inter)


def _make_rotated_nms(ftype: type) -> Callable:
    """Compile the ``nms_rotated`` greedy loop for boxes of dtype ``ftype``.

    Every arithmetic step keeps the C++ kernel's types for
    ``scalar_t = ftype`` so that IoUs at the threshold decide alike.
    """

    @njit(cache=False)
    def rotated_vertices(box, shift_x: float, shift_y: float, trig, vx,
                         vy) -> None:
        """``get_rotated_vertices`` of ``box`` moved by ``-shift``;
        ``trig`` holds ``(T)cos(angle) * 0.5f`` and the sine alike."""
        x = ftype(np.float64(box[0]) - shift_x)
        y = ftype(np.float64(box[1]) - shift_y)
        w, h, cos_half, sin_half = box[2], box[3], trig[0], trig[1]
        vx[0] = x - sin_half * h - cos_half * w
        vy[0] = y + cos_half * h - sin_half * w
        vx[1] = x + sin_half * h - cos_half * w
        vy[1] = y - cos_half * h - sin_half * w
        vx[2] = ftype(2) * x - vx[0]
        vy[2] = ftype(2) * y - vy[0]
        vx[3] = ftype(2) * x - vx[1]
        vy[3] = ftype(2) * y - vy[1]

    @njit(cache=False)
    def intersection_points(p1x, p1y, p2x, p2y, e1x, e1y, e2x, e2y, xs,
                            ys) -> int:
        """``get_intersection_points``: edge crossings, then the vertices of
        each rectangle inside (or on) the other; ``e`` are edge buffers."""
        for i in range(4):
            k = (i + 1) % 4
            e1x[i], e1y[i] = p1x[k] - p1x[i], p1y[k] - p1y[i]
            e2x[i], e2y[i] = p2x[k] - p2x[i], p2y[k] - p2y[i]
        num = 0
        for i in range(4):
            for j in range(4):
                det = e2x[j] * e1y[i] - e1x[i] * e2y[j]
                if abs(det) <= 1e-14:
                    continue
                dx, dy = p2x[j] - p1x[i], p2y[j] - p1y[i]
                t1 = (e2x[j] * dy - dx * e2y[j]) / det
                t2 = (e1x[i] * dy - dx * e1y[i]) / det
                if t1 >= 0 and t1 <= 1 and t2 >= 0 and t2 <= 1:
                    xs[num] = p1x[i] + e1x[i] * t1
                    ys[num] = p1y[i] + e1y[i] * t1
                    num += 1
        for side in range(2):
            if side == 0:
                px, py, rx, ry, ex, ey = p1x, p1y, p2x, p2y, e2x, e2y
            else:
                px, py, rx, ry, ex, ey = p2x, p2y, p1x, p1y, e1x, e1y
            ab_ab = ex[0] * ex[0] + ey[0] * ey[0]
            ad_ad = ex[3] * ex[3] + ey[3] * ey[3]
            for i in range(4):
                apx, apy = px[i] - rx[0], py[i] - ry[0]
                ap_ab = apx * ex[0] + apy * ey[0]
                ap_ad = -(apx * ex[3] + apy * ey[3])
                if (ap_ab >= 0 and ap_ad >= 0 and ap_ab <= ab_ab
                        and ap_ad <= ad_ad):
                    xs[num], ys[num] = px[i], py[i]
                    num += 1
        return num

    @njit(cache=False)
    def hull_area(xs, ys, num: int, qx, qy):
        """``convex_hull_graham`` (shifted to the lowest point) followed by
        ``polygon_area``."""
        t = 0
        for i in range(1, num):
            if ys[i] < ys[t] or (ys[i] == ys[t] and xs[i] < xs[t]):
                t = i
        for i in range(num):
            qx[i], qy[i] = xs[i] - xs[t], ys[i] - ys[t]
        qx[0], qx[t] = qx[t], qx[0]
        qy[0], qy[t] = qy[t], qy[0]
        _stl_sort(qx, qy, 1, num)
        k = 1
        while k < num and not qx[k] * qx[k] + qy[k] * qy[k] > 1e-8:
            k += 1
        if k == num:
            return ftype(0)
        qx[1], qy[1] = qx[k], qy[k]
        m = 2
        for i in range(k + 1, num):
            while m > 1 and ((qx[i] - qx[m - 2]) * (qy[m - 1] - qy[m - 2]) -
                             (qx[m - 1] - qx[m - 2]) *
                             (qy[i] - qy[m - 2])) >= 0:
                m -= 1
            qx[m], qy[m] = qx[i], qy[i]
            m += 1
        area = ftype(0)
        for i in range(1, m - 1):
            area += abs((qx[i] - qx[0]) * (qy[i + 1] - qy[0]) -
                        (qx[i + 1] - qx[0]) * (qy[i] - qy[0]))
        return ftype(np.float64(area) / 2.0)

    @njit(cache=False)
    def box_iou(box1, box2, trig1, trig2, scratch):
        """``single_box_iou_rotated(box1, box2, 0)``; ``scratch`` is
        (12, 24) of the boxes' dtype."""
        area1, area2 = box1[2] * box1[3], box2[2] * box2[3]
        if area1 < 1e-14 or area2 < 1e-14:
            return ftype(0)
        # The C++ kernel moves both boxes by their mean center, in double.
        shift_x = np.float64(box1[0] + box2[0]) / 2.0
        shift_y = np.float64(box1[1] + box2[1]) / 2.0
        rotated_vertices(box1, shift_x, shift_y, trig1, scratch[0],
                         scratch[1])
        rotated_vertices(box2, shift_x, shift_y, trig2, scratch[2],
                         scratch[3])
        num = intersection_points(scratch[0], scratch[1], scratch[2],
                                  scratch[3], scratch[4], scratch[5],
                                  scratch[6], scratch[7], scratch[8],
                                  scratch[9])
        if num <= 2:
            return ftype(0)
        inter = hull_area(scratch[8], scratch[9], num, scratch[10],
                          scratch[11])
        return inter / (area1 + area2 - inter)

    @njit(cache=False)
    def greedy_nms(boxes, thresh: float, prune: bool, by_x, lo, hi,
                   frames) -> np.ndarray:
        """Greedy NMS of score-sorted boxes (N, 5), suppressing at
        ``iou >= thresh``; kept positions.

        Box ``i`` meets the boxes ``by_x[lo[i]:hi[i]]`` after it, and with
        ``prune`` only those :func:`_iou_surely_below` cannot rule out.
        """
        num = boxes.shape[0]
        trig = np.empty((num, 2), boxes.dtype)
        for b in range(num):
            theta = np.float64(boxes[b, 4])
            trig[b, 0] = ftype(math.cos(theta)) * ftype(0.5)
            trig[b, 1] = ftype(math.sin(theta)) * ftype(0.5)
        scratch = np.empty((12, 24), boxes.dtype)
        suppressed = np.zeros(num, np.bool_)
        keep = np.empty(num, np.int64)
        num_keep = 0
        for i in range(num):
            if suppressed[i]:
                continue
            keep[num_keep] = i
            num_keep += 1
            for pos in range(lo[i], hi[i]):
                j = by_x[pos]
                if j <= i or suppressed[j] or (
                        prune
                        and _iou_surely_below(frames[i], frames[j], thresh)):
                    continue
                if box_iou(boxes[i], boxes[j], trig[i], trig[j],
                           scratch) >= thresh:
                    suppressed[j] = True
        return keep[:num_keep]

    return greedy_nms


_ROTATED_NMS: Dict[torch.dtype, Callable] = {}


def _rotated_nms_layout(boxes: np.ndarray, thresh: float) -> tuple:
    """Which later boxes the greedy loop meets for each box.

    Without pruning (a threshold <= 0, which an IoU of 0 reaches, or
    non-finite boxes) every box meets all later ones. Otherwise box ``i``
    meets the boxes ``by_x[lo[i]:hi[i]]`` within reach along x.

    Returns:
        tuple: ``prune`` (bool), ``by_x``, ``lo``, ``hi`` (N,) int64 and
        the :func:`_iou_surely_below` frames (N, 8) float64.
    """
    num = boxes.shape[0]
    box64 = boxes.astype(np.float64)
    cos_a, sin_a = np.cos(box64[:, 4]), np.sin(box64[:, 4])
    half_w, half_h = np.abs(box64[:, 2]) / 2, np.abs(box64[:, 3]) / 2
    reach_x = (half_w * np.abs(cos_a) + half_h * np.abs(sin_a)) * (
        1 + _ROTATED_PRUNE_SLACK)
    reach_y = (half_w * np.abs(sin_a) + half_h * np.abs(cos_a)) * (
        1 + _ROTATED_PRUNE_SLACK)
    frames = np.stack((box64[:, 0], box64[:, 1], cos_a, sin_a, half_w,
                       half_h, reach_x, reach_y), axis=1)
    if not (thresh > 0 and np.isfinite(frames).all()):
        return (False, np.arange(num), np.arange(1, num + 1),
                np.full(num, num), frames)
    by_x = np.argsort(box64[:, 0], kind='stable')
    x_sorted = box64[by_x, 0]
    window = reach_x + reach_x.max()
    lo = np.searchsorted(x_sorted, box64[:, 0] - window, 'left')
    hi = np.searchsorted(x_sorted, box64[:, 0] + window, 'right')
    return True, by_x, lo, hi, frames


def _rotated_nms_for(dtype: torch.dtype) -> Callable:
    """The greedy loop for boxes of ``dtype``, compiled on first use."""
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f'nms_rotated supports float32 and float64 boxes, '
                        f'got {dtype}')
    if dtype not in _ROTATED_NMS:
        ftype = np.float32 if dtype == torch.float32 else np.float64
        _ROTATED_NMS[dtype] = _make_rotated_nms(ftype)
    return _ROTATED_NMS[dtype]


@cpu_kernel('nms_rotated')
def nms_rotated(dets: Tensor,
                scores: Tensor,
                order: Tensor,
                dets_sorted: Tensor,
                labels: Tensor,
                iou_threshold: float,
                multi_label: int = 0) -> Tensor:
    """Rotated NMS with the result of mmcv's CPU kernel.

    Like that kernel, it sorts ``scores`` itself, reads the first five
    columns of ``dets`` (x, y, w, h, angle) and ignores ``order``,
    ``dets_sorted``, ``labels`` and ``multi_label``: in mmcv 2.1.0 boxes of
    different labels suppress each other on CPU and CUDA alike.

    Returns:
        Tensor: Indices into ``dets`` of the kept boxes (int64), by
        descending score.
    """
    if dets.dtype != scores.dtype:
        raise TypeError('dets should have the same type as scores')
    if dets.numel() == 0:
        return dets.new_empty(0, dtype=torch.long)
    greedy_nms = _rotated_nms_for(dets.dtype)
    order = scores.detach().contiguous().sort(0, descending=True)[1]
    boxes = dets.detach().index_select(0, order)[:, :5].contiguous()
    threshold = float(np.float32(iou_threshold))  # the C++ float argument
    boxes = boxes.numpy()
    kept = greedy_nms(boxes, threshold,
                      *_rotated_nms_layout(boxes, threshold))
    return order[torch.from_numpy(kept)]


# --------------------------------------------------------------------------
# points_in_boxes: bottom-center (x, y, z, dx, dy, dz, rz) boxes
# --------------------------------------------------------------------------


def _check_points_boxes(points: Tensor, boxes: Tensor) -> None:
    assert points.shape[0] == boxes.shape[0], \
        'Points and boxes should have the same batch size, ' \
        f'but got {points.shape[0]} and {boxes.shape[0]}'
    assert boxes.shape[2] == 7, \
        'boxes dimension should be 7, ' \
        f'but got unexpected shape {boxes.shape[2]}'
    assert points.shape[2] == 3, \
        'points dimension should be 3, ' \
        f'but got unexpected shape {points.shape[2]}'


def _points_in_boxes_mask(points: Tensor, boxes: Tensor) -> Tensor:
    """``check_pt_in_box3d`` for every point and box of a batch.

    Args:
        points (Tensor): (B, M, 3) points.
        boxes (Tensor): (B, T, 7) boxes, (x, y, z) the bottom center.

    Returns:
        Tensor: (B, M, T) bool, strictly inside in x and y, inside or on
        the top/bottom face in z.
    """
    cx, cy, cz, x_size, y_size, z_size, rz = (
        v.unsqueeze(1) for v in boxes.unbind(-1))
    cz = cz + z_size / 2
    cos_a, sin_a = torch.cos(-rz), torch.sin(-rz)
    x, y, z = (v.unsqueeze(2) for v in points.unbind(-1))
    shift_x, shift_y = x - cx, y - cy
    local_x = shift_x * cos_a + shift_y * (-sin_a)
    local_y = shift_x * sin_a + shift_y * cos_a
    return (~((z - cz).abs() > z_size / 2) & (local_x > -x_size / 2)
            & (local_x < x_size / 2) & (local_y > -y_size / 2)
            & (local_y < y_size / 2))


def _point_chunks(points: Tensor, num_boxes: int):
    """Split (B, M, 3) points so one mask chunk stays small."""
    per_point = max(points.shape[0] * num_boxes, 1)
    size = max(_POINTS_IN_BOXES_CHUNK // per_point, 1)
    return points.split(size, dim=1)


def _first_box(inside: Tensor) -> Tensor:
    """(B, m, T) bool -> (B, m) int32 index of the first True, -1 if none."""
    if inside.shape[-1] == 0:
        return inside.new_full(inside.shape[:2], -1, dtype=torch.int)
    first = inside.to(torch.uint8).argmax(dim=-1).int()
    return torch.where(inside.any(dim=-1), first, first.new_tensor(-1))


@cpu_override('mmcv.ops.points_in_boxes', 'points_in_boxes_part')
def points_in_boxes_part(points: Tensor, boxes: Tensor) -> Tensor:
    """Index of the first box each point is in.

    Args:
        points (Tensor): (B, M, 3) points.
        boxes (Tensor): (B, T, 7) boxes, (x, y, z) the bottom center.

    Returns:
        Tensor: (B, M) int32 box indices, -1 where a point is in no box.
    """
    _check_points_boxes(points, boxes)
    if points.shape[1] == 0:
        return points.new_full(points.shape[:2], -1, dtype=torch.int)
    boxes = boxes.detach()
    return torch.cat([
        _first_box(_points_in_boxes_mask(chunk.detach(), boxes))
        for chunk in _point_chunks(points, boxes.shape[1])
    ], dim=1)


@cpu_override('mmcv.ops.points_in_boxes', 'points_in_boxes_all')
def points_in_boxes_all(points: Tensor, boxes: Tensor) -> Tensor:
    """Which boxes each point is in.

    Args:
        points (Tensor): (B, M, 3) points.
        boxes (Tensor): (B, T, 7) boxes, (x, y, z) the bottom center.

    Returns:
        Tensor: (B, M, T) int32, 1 where the point is in the box.
    """
    _check_points_boxes(points, boxes)
    if points.shape[1] == 0:
        return points.new_zeros((points.shape[0], 0, boxes.shape[1]),
                                dtype=torch.int)
    boxes = boxes.detach()
    return torch.cat([
        _points_in_boxes_mask(chunk.detach(), boxes).int()
        for chunk in _point_chunks(points, boxes.shape[1])
    ], dim=1)
