"""CPU kernels of mmcv's furthest point sampling and ``gather_points``.

Furthest point sampling (from coordinates or from a distance matrix)
transcribes mmcv's CUDA kernels, including which of several equally far
points wins (:func:`_fps_tie_priority`); like mmcv's bindings it accepts
float32 only. ``FurthestPointSampling.forward`` is overridden for CPU
inputs because mmcv allocates its outputs with ``torch.cuda``. The
``_ext`` contracts are those described in :mod:`._common`.
"""
from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from ._common import as_array
from .grouping import gather_channels, scatter_channels
from .registry import cpu_kernel, cpu_override


def _check_float32(*tensors: Tensor) -> None:
    """Reject what mmcv's FPS bindings reject: they read
    ``data_ptr<float>()``."""
    for tensor in tensors:
        if tensor.dtype != torch.float32:
            raise RuntimeError(
                f'expected scalar type Float but found {tensor.dtype}')


def _fps_block_size(n: int) -> int:
    """Threads per block of the FPS launchers (``opt_n_threads``)."""
    if n <= 0:
        return 1
    pow_2 = int(math.log(float(n)) / math.log(2.0))
    return max(min(1 << pow_2, 1024), 1)


def _fps_tie_priority(n: int) -> np.ndarray:
    """Which point the CUDA FPS kernel picks among equally far ones.

    Point ``k`` is scanned by thread ``k % block``, which keeps its first
    maximum. The block's tree reduction keeps the lower slot on ties and
    halves the stride at every level, so the thread whose index is smallest
    *bit-reversed* wins. Lower priority wins.
    """
    block = _fps_block_size(n)
    bits = block.bit_length() - 1
    point = np.arange(n, dtype=np.int64)
    lane = point % block
    reversed_lane = np.zeros(n, dtype=np.int64)
    for bit in range(bits):
        reversed_lane |= ((lane >> bit) & 1) << (bits - 1 - bit)
    return reversed_lane * max(n, 1) + point


@numba.njit(cache=True)
def _fminf(a, b):
    """CUDA's ``min`` on floats: a NaN operand yields the other one."""
    if a != a:
        return b
    if b != b:
        return a
    return a if a < b else b


@numba.njit(cache=True)
def _fps_update_and_pick(temp, dist, priority):
    """Lower ``temp`` to ``dist`` and return the furthest point's index."""
    best = np.float32(-1.0)
    best_index = 0
    best_priority = 1 << 62
    for k in range(temp.shape[0]):
        d2 = _fminf(dist[k], temp[k])
        temp[k] = d2
        if d2 > best or (d2 == best and priority[k] < best_priority):
            best = d2
            best_index = k
            best_priority = priority[k]
    return best_index


@numba.njit(cache=True)
def _fps_xyz_kernel(xyz, temp, idx, priority):
    batch, n = temp.shape
    m = idx.shape[1]
    if m <= 0:
        return
    dist = np.empty(n, dtype=np.float32)
    for b in range(batch):
        idx[b, :] = 0
        if n == 0:
            continue
        old = 0
        for j in range(1, m):
            x1 = xyz[b, old, 0]
            y1 = xyz[b, old, 1]
            z1 = xyz[b, old, 2]
            for k in range(n):
                dx = xyz[b, k, 0] - x1
                dy = xyz[b, k, 1] - y1
                dz = xyz[b, k, 2] - z1
                dist[k] = dx * dx + dy * dy + dz * dz
            old = _fps_update_and_pick(temp[b], dist, priority)
            idx[b, j] = old


@numba.njit(cache=True)
def _fps_dist_kernel(dist, temp, idx, priority):
    batch, n = temp.shape
    m = idx.shape[1]
    if m <= 0:
        return
    for b in range(batch):
        idx[b, :] = 0
        if n == 0:
            continue
        old = 0
        for j in range(1, m):
            old = _fps_update_and_pick(temp[b], dist[b, old], priority)
            idx[b, j] = old


@cpu_kernel('furthest_point_sampling_forward')
def furthest_point_sampling_forward(points_tensor: Tensor, temp_tensor: Tensor,
                                    idx_tensor: Tensor, b: int, n: int,
                                    m: int) -> None:
    """Iterative furthest point sampling over (B, N, 3) points.

    Fills ``idx_tensor`` (B, M) with the sampled indices, starting at point
    0, and lowers ``temp_tensor`` (B, N) to each point's squared distance to
    the samples, as the CUDA kernel leaves it.
    """
    _check_float32(points_tensor, temp_tensor)
    xyz = as_array(points_tensor).reshape(b, n, 3)
    temp = as_array(temp_tensor).reshape(b, n)
    idx = as_array(idx_tensor).reshape(b, m)
    _fps_xyz_kernel(xyz, temp, idx, _fps_tie_priority(n))


@cpu_kernel('furthest_point_sampling_with_dist_forward')
def furthest_point_sampling_with_dist_forward(points_tensor: Tensor,
                                              temp_tensor: Tensor,
                                              idx_tensor: Tensor, b: int,
                                              n: int, m: int) -> None:
    """Furthest point sampling from a (B, N, N) distance matrix; outputs as
    :func:`furthest_point_sampling_forward`."""
    _check_float32(points_tensor, temp_tensor)
    dist = as_array(points_tensor).reshape(b, n, n)
    temp = as_array(temp_tensor).reshape(b, n)
    idx = as_array(idx_tensor).reshape(b, m)
    _fps_dist_kernel(dist, temp, idx, _fps_tie_priority(n))


@cpu_override('mmcv.ops.furthest_point_sample',
              'FurthestPointSampling.forward')
def furthest_point_sampling_autograd_forward(ctx, points_xyz: Tensor,
                                             num_points: int) -> Tensor:
    """``FurthestPointSampling.forward`` without its ``torch.cuda``
    allocations."""
    assert points_xyz.is_contiguous()
    batch, n = points_xyz.size()[:2]
    output = points_xyz.new_zeros((batch, num_points), dtype=torch.int32)
    temp = points_xyz.new_full((batch, n), 1e10, dtype=torch.float32)
    furthest_point_sampling_forward(
        points_xyz, temp, output, b=batch, n=n, m=num_points)
    ctx.mark_non_differentiable(output)
    return output


@cpu_kernel('gather_points_forward')
def gather_points_forward(points_tensor: Tensor, idx_tensor: Tensor,
                          out_tensor: Tensor, b: int, c: int, n: int,
                          npoints: int) -> None:
    """``out[b, c, j] = points[b, c, idx[b, j]]``."""
    gather_channels(points_tensor, idx_tensor, out_tensor, b, c, n, npoints,
                    'gather_points')


@cpu_kernel('gather_points_backward')
def gather_points_backward(grad_out_tensor: Tensor, idx_tensor: Tensor,
                           grad_points_tensor: Tensor, b: int, c: int, n: int,
                           npoints: int) -> None:
    """Accumulate ``grad_out`` (B, C, M) into ``grad_points`` (B, C, N)."""
    scatter_channels(grad_out_tensor, idx_tensor, grad_points_tensor, b, c,
                     n, npoints, 'gather_points')
