"""CPU kernels of mmcv's ``DynamicScatter`` (``dynamic_point_to_voxel_*``).

They follow ``scatter_points_cuda.cu`` exactly: points with any negative
coordinate are dropped (``point2voxel_map`` -1), voxels come out in
``torch.unique`` order (rows sorted lexicographically), ``max`` ignores NaN
features like CUDA's ``fmaxf`` and its backward sends each gradient to the
lowest-index point that reached the maximum.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .registry import cpu_kernel

REDUCE_TYPES = ('sum', 'mean', 'max')
# Row keys are built in int64; stay clear of its sign bit.
_MAX_KEY_SPACE = 2**62


def _check_reduce_type(reduce_type: str) -> str:
    if reduce_type not in REDUCE_TYPES:
        raise RuntimeError(f'do not support reduce type {reduce_type}')
    return reduce_type


def _row_keys(coors: Tensor) -> Optional[Tuple[Tensor, Tensor, List[int]]]:
    """Encode each row of ``coors`` as one int64 whose order is the rows'
    lexicographic order, or None when the coordinate ranges overflow it.

    Returns:
        tuple: Keys ``(N,)``, column minima ``(D,)`` and column radices.
    """
    mins = coors.amin(0).long()
    radices = (coors.amax(0).long() - mins + 1).tolist()
    key_space = 1
    for radix in radices:
        key_space *= radix
    if key_space >= _MAX_KEY_SPACE:
        return None
    shifted = coors.long() - mins
    keys = shifted[:, 0].clone()
    for col, radix in enumerate(radices[1:], start=1):
        keys.mul_(radix).add_(shifted[:, col])
    return keys, mins, radices


def _decode_row_keys(keys: Tensor, mins: Tensor, radices: List[int],
                     dtype: torch.dtype) -> Tensor:
    rows = keys.new_empty((keys.numel(), len(radices)))
    rest = keys.clone()
    for col in range(len(radices) - 1, -1, -1):
        rows[:, col] = rest % radices[col]
        rest.div_(radices[col], rounding_mode='floor')
    return (rows + mins).to(dtype)


def unique_rows(coors: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``torch.unique(coors, dim=0, sorted=True, return_inverse=True,
    return_counts=True)``, ~100x faster on CPU through 1-D int64 keys.

    Args:
        coors (Tensor): Integer coordinates ``(N, D)`` with ``N > 0``.

    Returns:
        tuple[Tensor]: Unique rows ``(M, D)`` (dtype of ``coors``), the row
        of each input ``(N,)`` and the count of each unique row ``(M,)``.
    """
    encodable = coors.size(1) > 0 and not coors.dtype.is_floating_point
    encoded = _row_keys(coors) if encodable else None
    if encoded is None:
        return torch.unique(
            coors, sorted=True, return_inverse=True, return_counts=True, dim=0)
    keys, mins, radices = encoded
    unique_keys, inverse, counts = torch.unique(
        keys, sorted=True, return_inverse=True, return_counts=True)
    rows = _decode_row_keys(unique_keys, mins, radices, coors.dtype)
    return rows, inverse, counts


def _reduce_max(feats: Tensor, coors_map: Tensor, num_voxels: int) -> Tensor:
    # CUDA's fmaxf-based atomic max skips NaN; an all-NaN voxel stays -inf.
    if feats.isnan().any():
        feats = feats.masked_fill(feats.isnan(), float('-inf'))
    reduced = feats.new_full((num_voxels, feats.size(1)), float('-inf'))
    index = coors_map.unsqueeze(1).expand_as(feats)
    return reduced.scatter_reduce_(0, index, feats, 'amax', include_self=True)


def _reduce_sum(feats: Tensor, coors_map: Tensor, num_voxels: int) -> Tensor:
    reduced = feats.new_zeros((num_voxels, feats.size(1)))
    return reduced.index_add_(0, coors_map, feats)


@cpu_kernel('dynamic_point_to_voxel_forward')
def dynamic_point_to_voxel_forward(feats: Tensor, coors: Tensor,
                                   reduce_type: str) -> List[Tensor]:
    """Reduce the features of the points that share voxel coordinates.

    Args:
        feats (Tensor): Point features ``(N, C)``.
        coors (Tensor): Integer voxel coordinates ``(N, D)``; a row with any
            negative entry drops its point.
        reduce_type (str): ``'sum'``, ``'mean'`` or ``'max'``.

    Returns:
        list[Tensor]: Voxel features ``(M, C)``, voxel coordinates
        ``(M, D)``, the voxel of each point ``(N,)`` (int32, -1 if dropped)
        and the point count of each voxel ``(M,)`` (int32).
    """
    reduce_type = _check_reduce_type(reduce_type)
    if feats.size(0) == 0:
        return [
            feats.clone().detach(),
            coors.clone().detach(),
            coors.new_empty(0, dtype=torch.int32),
            coors.new_empty(0, dtype=torch.int32)
        ]
    dropped = coors.lt(0).any(-1, keepdim=True)
    coors_clean = coors.masked_fill(dropped, -1)
    voxel_coors, coors_map, counts = unique_rows(coors_clean)
    has_dropped = bool(voxel_coors[0, 0] < 0)
    if has_dropped:
        # The first unique row is the (-1, ..., -1) of the dropped points.
        voxel_coors, counts = voxel_coors[1:], counts[1:]
        coors_map = coors_map - 1

    num_voxels = voxel_coors.size(0)
    kept_feats, kept_map = feats, coors_map
    if has_dropped:
        kept = coors_map >= 0
        kept_feats, kept_map = feats[kept], coors_map[kept]
    if reduce_type == 'max':
        voxel_feats = _reduce_max(kept_feats, kept_map, num_voxels)
    else:
        voxel_feats = _reduce_sum(kept_feats, kept_map, num_voxels)
        if reduce_type == 'mean':
            voxel_feats /= counts.unsqueeze(-1).to(voxel_feats.dtype)
    return [
        voxel_feats, voxel_coors,
        coors_map.to(torch.int32),
        counts.to(torch.int32)
    ]


def _max_winners(feats: Tensor, voxel_feats: Tensor, voxel_of_point: Tensor,
                 kept: Tensor) -> Tensor:
    """Mask ``(N, C)`` of the points that receive a voxel's max gradient:
    per voxel and channel, the lowest-index point equal to the maximum."""
    num_points = feats.size(0)
    hit = (feats == voxel_feats.index_select(0, voxel_of_point)) & kept
    point_ids = torch.arange(num_points, dtype=torch.int32).unsqueeze(1)
    candidates = torch.where(hit, point_ids, num_points)
    sources = torch.full(voxel_feats.shape, num_points, dtype=torch.int32)
    index = voxel_of_point.unsqueeze(1).expand_as(feats)
    sources.scatter_reduce_(0, index, candidates, 'amin', include_self=True)
    return sources.index_select(0, voxel_of_point) == point_ids


@cpu_kernel('dynamic_point_to_voxel_backward')
def dynamic_point_to_voxel_backward(grad_feats: Tensor,
                                    grad_reduced_feats: Tensor, feats: Tensor,
                                    reduced_feats: Tensor, coors_map: Tensor,
                                    reduce_count: Tensor,
                                    reduce_type: str) -> None:
    """Fill ``grad_feats`` in place from the voxel feature gradients.

    Args:
        grad_feats (Tensor): Output, point feature gradients ``(N, C)``.
        grad_reduced_feats (Tensor): Voxel feature gradients ``(M, C)``.
        feats (Tensor): Point features of the forward pass ``(N, C)``.
        reduced_feats (Tensor): Voxel features of the forward pass
            ``(M, C)``.
        coors_map (Tensor): The voxel of each point ``(N,)``, -1 if dropped.
        reduce_count (Tensor): The point count of each voxel ``(M,)``.
        reduce_type (str): ``'sum'``, ``'mean'`` or ``'max'``.
    """
    reduce_type = _check_reduce_type(reduce_type)
    grad_feats.fill_(0)
    num_points, num_voxels = feats.size(0), reduced_feats.size(0)
    if num_points == 0 or num_voxels == 0:
        return
    voxel_of_point = coors_map.long().clamp(min=0)
    kept = (coors_map >= 0).unsqueeze(1)
    grads = grad_reduced_feats.index_select(0, voxel_of_point)
    if reduce_type == 'mean':
        counts = reduce_count.index_select(0, voxel_of_point)
        grads /= counts.to(grads.dtype).unsqueeze(-1)
    if reduce_type == 'max':
        # No point wins an all-NaN voxel channel (CUDA writes out of bounds
        # there); its gradient is dropped.
        receives = _max_winners(feats, reduced_feats, voxel_of_point, kept)
    else:
        receives = kept
    grad_feats.copy_(grads.masked_fill_(~receives, 0))
