"""CPU kernel of mmcv's ``nms_rotated`` on (x, y, w, h, angle) boxes.

``nms_rotated`` returns exactly what mmcv's own O(n^2) CPU kernel returns
(its IoU arithmetic from ``box_iou_rotated_utils.hpp`` down to the
``std::sort`` of the hull points, ``iou >= threshold``), but computes the
IoU only of pairs that are close along x and whose cheap upper bound
reaches the threshold. The one exception is geometry that float32 cannot
represent: mmcv's CPU IoU of a 1,462 m x 1e-5 m box against a 565 m x
92 m box reads 4.4e6 (cancellation in the polygon area), so mmcv drops
the thin box; the bound (IoU <= smaller area / larger area) skips the pair
and keeps it. Such boxes come only from untrained regression outputs.

Numba compiles the helpers on their first call and the greedy loop once
per box dtype (float32, float64) on first use.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np
import torch
from numba import njit
from torch import Tensor

from .registry import cpu_kernel

# Relative growth of the box extents in ``nms_rotated``'s pair rejection.
_ROTATED_PRUNE_SLACK = 1e-3


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
