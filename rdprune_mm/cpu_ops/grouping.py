"""CPU kernels of mmcv's grouping ops, forward and backward:
``group_points`` (batched and stacked) and ``three_interpolate``.

They transcribe mmcv's CUDA kernels' indexing, including where the stacked
forward kernel leaves entries unwritten (:func:`_stacked_rows`); backward
kernels accumulate into the gradient tensors. The ``_ext`` contracts are
those described in :mod:`._common`.
"""
from __future__ import annotations

from typing import Tuple

import numba
import torch
from torch import Tensor

from ._common import (as_array, check_index_range, copy_back, float_array,
                      float_output)
from .registry import cpu_kernel


def _batch_of_rows(batch_cnt: Tensor, num_rows: int) -> Tensor:
    """Batch of every stacked row as the stacked CUDA kernels find it: the
    first batch whose cumulative count exceeds the row index."""
    ends = torch.cumsum(batch_cnt.long(), 0)
    rows = torch.arange(num_rows, dtype=torch.long)
    return torch.searchsorted(ends, rows, right=True)


def _batch_starts(batch_cnt: Tensor) -> Tensor:
    """First stacked row of every batch."""
    counts = batch_cnt.long()
    return torch.cumsum(counts, 0) - counts


def gather_channels(points: Tensor, idx: Tensor, out: Tensor, b: int,
                    c: int, n: int, width: int, op: str) -> None:
    """``out[b, c, j] = points[b, c, idx[b, j]]`` for ``j < width``."""
    check_index_range(idx, 0, n, op)
    index = idx.long().view(b, 1, width).expand(b, c, width)
    torch.gather(points.view(b, c, n), 2, index, out=out.view(b, c, width))


def scatter_channels(grad_out: Tensor, idx: Tensor, grad_points: Tensor,
                     b: int, c: int, n: int, width: int, op: str) -> None:
    """``grad_points[b, c, idx[b, j]] += grad_out[b, c, j]``: the backward
    of :func:`gather_channels`."""
    check_index_range(idx, 0, n, op)
    index = idx.long().view(b, 1, width).expand(b, c, width)
    grad_points.view(b, c, n).scatter_add_(2, index,
                                           grad_out.view(b, c, width))


@cpu_kernel('group_points_forward')
def group_points_forward(points_tensor: Tensor, idx_tensor: Tensor,
                         out_tensor: Tensor, b: int, c: int, n: int,
                         npoints: int, nsample: int) -> None:
    """``out[b, c, p, s] = points[b, c, idx[b, p, s]]``."""
    gather_channels(points_tensor, idx_tensor, out_tensor, b, c, n,
                    npoints * nsample, 'group_points')


@cpu_kernel('group_points_backward')
def group_points_backward(grad_out_tensor: Tensor, idx_tensor: Tensor,
                          grad_points_tensor: Tensor, b: int, c: int, n: int,
                          npoints: int, nsample: int) -> None:
    """Accumulate ``grad_out`` (B, C, npoints, nsample) into
    ``grad_points`` (B, C, N)."""
    scatter_channels(grad_out_tensor, idx_tensor, grad_points_tensor, b, c,
                     n, npoints * nsample, 'group_points')


def _stacked_rows(idx: Tensor, idx_batch_cnt: Tensor,
                  features_batch_cnt: Tensor,
                  b: int) -> Tuple[Tensor, Tensor]:
    """Feature rows addressed by stacked indices (M, nsample), and where
    the forward kernel writes.

    A center's batch is found as the stacked kernels find it, the last
    batch taking every center beyond the counts; its indices count from its
    batch's first feature row. The forward kernel writes only where the
    batch-local index is below the batch's *end row*.
    """
    if b <= 0:
        raise IndexError('stacked grouping needs at least one batch')
    batch = _batch_of_rows(idx_batch_cnt[:b], idx.shape[0]).clamp_(max=b - 1)
    starts = _batch_starts(features_batch_cnt[:b])
    ends = starts + features_batch_cnt[:b].long()
    idx = idx.long()
    rows = starts[batch].unsqueeze(1) + idx
    written = idx < ends[batch].unsqueeze(1)
    return rows, written


@numba.njit(cache=True)
def _stack_group_forward_kernel(features, rows, written, out):
    for p in range(rows.shape[0]):
        for c in range(features.shape[1]):
            for s in range(rows.shape[1]):
                if written[p, s]:
                    out[p, c, s] = features[rows[p, s], c]


@numba.njit(cache=True)
def _stack_group_backward_kernel(grad_out, rows, grad_features):
    for p in range(rows.shape[0]):
        for c in range(grad_features.shape[1]):
            for s in range(rows.shape[1]):
                grad_features[rows[p, s], c] += grad_out[p, c, s]


@cpu_kernel('stack_group_points_forward')
def stack_group_points_forward(features_tensor: Tensor,
                               features_batch_cnt_tensor: Tensor,
                               idx_tensor: Tensor,
                               idx_batch_cnt_tensor: Tensor,
                               out_tensor: Tensor, b: int, c: int, m: int,
                               nsample: int) -> None:
    """``out[p, :, s] = features[start + idx[p, s], :]`` for ``start`` the
    first row of center ``p``'s batch.

    Like the CUDA kernel, an entry is written only where ``idx[p, s]`` is
    below the batch's *end row* (a bound it compares against the batch-local
    index), and is otherwise left unchanged.
    """
    features = float_array(features_tensor).reshape(
        features_tensor.shape[0], c)
    rows, written = _stacked_rows(
        idx_tensor.view(m, nsample), idx_batch_cnt_tensor,
        features_batch_cnt_tensor, b)
    check_index_range(rows[written], 0, features.shape[0],
                       'stack_group_points')
    out, stand_in = float_output(out_tensor)
    _stack_group_forward_kernel(features, rows.numpy(), written.numpy(),
                                out.reshape(m, c, nsample))
    copy_back(out_tensor, stand_in)


@cpu_kernel('stack_group_points_backward')
def stack_group_points_backward(grad_out_tensor: Tensor, idx_tensor: Tensor,
                                idx_batch_cnt_tensor: Tensor,
                                features_batch_cnt_tensor: Tensor,
                                grad_features_tensor: Tensor, b: int, c: int,
                                m: int, n: int, nsample: int) -> None:
    """Accumulate ``grad_out`` (M, C, nsample) into the feature rows
    addressed as in :func:`stack_group_points_forward`; the backward kernel
    applies no end-row bound."""
    rows, _ = _stacked_rows(
        idx_tensor.view(m, nsample), idx_batch_cnt_tensor,
        features_batch_cnt_tensor, b)
    check_index_range(rows, 0, n, 'stack_group_points')
    grad_features, stand_in = float_output(grad_features_tensor)
    _stack_group_backward_kernel(
        float_array(grad_out_tensor).reshape(m, c, nsample), rows.numpy(),
        grad_features.reshape(n, c))
    copy_back(grad_features_tensor, stand_in)


@numba.njit(cache=True)
def _three_interpolate_kernel(points, idx, weight, out):
    for b in range(out.shape[0]):
        for c in range(out.shape[1]):
            for i in range(out.shape[2]):
                out[b, c, i] = (
                    weight[b, i, 0] * points[b, c, idx[b, i, 0]] +
                    weight[b, i, 1] * points[b, c, idx[b, i, 1]] +
                    weight[b, i, 2] * points[b, c, idx[b, i, 2]])


@numba.njit(cache=True)
def _three_interpolate_backward_kernel(grad_out, idx, weight, grad_points):
    for b in range(grad_out.shape[0]):
        for c in range(grad_out.shape[1]):
            for i in range(grad_out.shape[2]):
                for k in range(3):
                    grad_points[b, c, idx[b, i, k]] += (
                        grad_out[b, c, i] * weight[b, i, k])


@cpu_kernel('three_interpolate_forward')
def three_interpolate_forward(points_tensor: Tensor, idx_tensor: Tensor,
                              weight_tensor: Tensor, out_tensor: Tensor,
                              b: int, c: int, m: int, n: int) -> None:
    """``out[b, c, i] = sum_k weight[b, i, k] * points[b, c, idx[b, i, k]]``
    with ``points`` (B, C, M), summed in order k = 0, 1, 2."""
    check_index_range(idx_tensor, 0, m, 'three_interpolate')
    out, stand_in = float_output(out_tensor)
    _three_interpolate_kernel(
        float_array(points_tensor).reshape(b, c, m),
        as_array(idx_tensor).reshape(b, n, 3),
        float_array(weight_tensor).reshape(b, n, 3), out.reshape(b, c, n))
    copy_back(out_tensor, stand_in)


@cpu_kernel('three_interpolate_backward')
def three_interpolate_backward(grad_out_tensor: Tensor, idx_tensor: Tensor,
                               weight_tensor: Tensor,
                               grad_points_tensor: Tensor, b: int, c: int,
                               n: int, m: int) -> None:
    """Accumulate ``grad_out * weight`` (B, C, N) into ``grad_points``
    (B, C, M) at the three neighbours."""
    check_index_range(idx_tensor, 0, m, 'three_interpolate')
    grad_points, stand_in = float_output(grad_points_tensor)
    _three_interpolate_backward_kernel(
        float_array(grad_out_tensor).reshape(b, c, n),
        as_array(idx_tensor).reshape(b, n, 3),
        float_array(weight_tensor).reshape(b, n, 3),
        grad_points.reshape(b, c, m))
    copy_back(grad_points_tensor, stand_in)
