"""``points_in_boxes_part`` / ``points_in_boxes_all`` for CPU tensors.

They replace mmcv's Python functions (which call
``torch.cuda.current_device()``) and test bottom-center
(x, y, z, dx, dy, dz, rz) boxes as ``check_pt_in_box3d`` does, in chunks of
points so that the (batch, points, boxes) masks stay small.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .registry import cpu_override

# Elements of one (batch, points, boxes) mask in points_in_boxes_*.
_POINTS_IN_BOXES_CHUNK = 1 << 20


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


def _chunked(points: Tensor, boxes: Tensor,
             reduce: Callable[[Tensor], Tensor]) -> Tensor:
    """``reduce`` of the (B, m, T) inside-mask of every chunk of points,
    concatenated along the points."""
    boxes = boxes.detach()
    return torch.cat([
        reduce(_points_in_boxes_mask(chunk.detach(), boxes))
        for chunk in _point_chunks(points, boxes.shape[1])
    ], dim=1)


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
    return _chunked(points, boxes, _first_box)


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
    return _chunked(points, boxes, lambda inside: inside.int())
