"""CPU kernels of mmcv's point-cloud ops: furthest point sampling, ball
query, grouping, gathering, three-NN interpolation and kNN.

Every ``@cpu_kernel`` function keeps the contract of the compiled ``_ext``
function of the same name: same arguments, output tensors filled in place,
``None`` returned. The semantics transcribe mmcv's CUDA kernels
(``mmcv/ops/csrc/common/cuda/*.cuh``): index order, fill rules, the ``-1``
and ``0`` conventions and tie breaking. Distances are computed in the input
dtype in the kernels' order of operations; nvcc may fuse multiply-adds, so a
point within one rounding error of a radius can fall on the other side of it
on a GPU. float16 inputs of the distance-based ops are computed in float32.

Indices that would make a CUDA kernel read or write outside its tensors
(undefined behaviour there) raise :class:`IndexError` here.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import numba
import numpy as np
import torch
from torch import Tensor

from .registry import cpu_kernel, cpu_override

# Cells per axis of the ball-query grid at most, so cell keys fit in int64.
_MAX_CELLS_PER_AXIS = 2**20
# Ball-query cells are this much wider than the radius, so that rounding in
# the squared distance never puts a neighbour beyond the adjacent cells.
_CELL_MARGIN = 1 + 1e-5


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _array(tensor: Tensor) -> np.ndarray:
    """Zero-copy numpy view of a contiguous CPU tensor."""
    if not tensor.is_contiguous():
        raise ValueError('mmcv point ops expect contiguous tensors')
    return tensor.detach().numpy()


def _float_array(tensor: Tensor) -> np.ndarray:
    """Floating input of a numba kernel: float32/64 as it is, other
    floating types as float32."""
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return _array(tensor.contiguous())


def _check_float32(*tensors: Tensor) -> None:
    """Reject what mmcv's FPS bindings reject: they read
    ``data_ptr<float>()``."""
    for tensor in tensors:
        if tensor.dtype != torch.float32:
            raise RuntimeError(
                f'expected scalar type Float but found {tensor.dtype}')


def _check_index_range(index: Tensor, low: int, high: int, op: str) -> None:
    """Raise where the CUDA kernel would access memory outside a tensor."""
    if index.numel() == 0:
        return
    smallest, largest = int(index.min()), int(index.max())
    if smallest < low or largest >= high:
        raise IndexError(f'{op}: index range [{smallest}, {largest}] lies '
                         f'outside [{low}, {high})')


def _float_output(tensor: Tensor) -> Tuple[np.ndarray, Optional[Tensor]]:
    """Floating output of a numba kernel, and for tensors other than
    float32/64 the float32 stand-in the kernel fills, to be copied back with
    :func:`_copy_back`."""
    if tensor.dtype in (torch.float32, torch.float64):
        return _array(tensor), None
    stand_in = tensor.float().contiguous()
    return stand_in.numpy(), stand_in


def _copy_back(tensor: Tensor, stand_in: Optional[Tensor]) -> None:
    if stand_in is not None:
        tensor.copy_(stand_in)


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


# --------------------------------------------------------------------------
# furthest point sampling
# --------------------------------------------------------------------------
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
    xyz = _array(points_tensor).reshape(b, n, 3)
    temp = _array(temp_tensor).reshape(b, n)
    idx = _array(idx_tensor).reshape(b, m)
    _fps_xyz_kernel(xyz, temp, idx, _fps_tie_priority(n))


@cpu_kernel('furthest_point_sampling_with_dist_forward')
def furthest_point_sampling_with_dist_forward(points_tensor: Tensor,
                                              temp_tensor: Tensor,
                                              idx_tensor: Tensor, b: int,
                                              n: int, m: int) -> None:
    """Furthest point sampling from a (B, N, N) distance matrix; outputs as
    :func:`furthest_point_sampling_forward`."""
    _check_float32(points_tensor, temp_tensor)
    dist = _array(points_tensor).reshape(b, n, n)
    temp = _array(temp_tensor).reshape(b, n)
    idx = _array(idx_tensor).reshape(b, m)
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


# --------------------------------------------------------------------------
# gather points
# --------------------------------------------------------------------------
@cpu_kernel('gather_points_forward')
def gather_points_forward(points_tensor: Tensor, idx_tensor: Tensor,
                          out_tensor: Tensor, b: int, c: int, n: int,
                          npoints: int) -> None:
    """``out[b, c, j] = points[b, c, idx[b, j]]``."""
    _check_index_range(idx_tensor, 0, n, 'gather_points')
    index = idx_tensor.long().view(b, 1, npoints).expand(b, c, npoints)
    torch.gather(points_tensor.view(b, c, n), 2, index,
                 out=out_tensor.view(b, c, npoints))


@cpu_kernel('gather_points_backward')
def gather_points_backward(grad_out_tensor: Tensor, idx_tensor: Tensor,
                           grad_points_tensor: Tensor, b: int, c: int, n: int,
                           npoints: int) -> None:
    """Accumulate ``grad_out`` (B, C, M) into ``grad_points`` (B, C, N)."""
    _check_index_range(idx_tensor, 0, n, 'gather_points')
    index = idx_tensor.long().view(b, 1, npoints).expand(b, c, npoints)
    grad_points_tensor.view(b, c, n).scatter_add_(
        2, index, grad_out_tensor.view(b, c, npoints))


# --------------------------------------------------------------------------
# ball query
# --------------------------------------------------------------------------
class _CellGrid(NamedTuple):
    """Points sorted by the key of the cubic cell they lie in.

    Attributes:
        xyz: (P, 3) finite points in cell order, input dtype.
        index: (P,) their indices in the queried point set.
        keys: (P,) their ascending cell keys.
        origin: (3,) float64 corner of cell (0, 0, 0).
        cell: Cell edge length.
        dims: (3,) int64 number of cells along x, y and z.
    """
    xyz: np.ndarray
    index: np.ndarray
    keys: np.ndarray
    origin: np.ndarray
    cell: float
    dims: np.ndarray


def _build_cell_grid(xyz: np.ndarray, radius: float) -> _CellGrid:
    """Hash ``xyz`` (N, 3) into cells at least ``radius`` wide.

    Points with a non-finite coordinate are left out: their squared distance
    to any center is NaN or infinite and never matches.
    """
    index = np.flatnonzero(np.isfinite(xyz).all(axis=1))
    finite = xyz[index].astype(np.float64)
    if len(finite):
        origin = finite.min(axis=0)
        extent = float((finite.max(axis=0) - origin).max())
    else:
        origin, extent = np.zeros(3), 0.0
    cell = max(radius * _CELL_MARGIN, extent / _MAX_CELLS_PER_AXIS, 1e-15)
    coords = np.floor((finite - origin) / cell).astype(np.int64)
    dims = coords.max(axis=0) + 1 if len(coords) else np.ones(3, np.int64)
    keys = (coords[:, 0] * dims[1] + coords[:, 1]) * dims[2] + coords[:, 2]
    order = np.argsort(keys, kind='stable')
    return _CellGrid(
        xyz=np.ascontiguousarray(xyz[index[order]]),
        index=index[order].astype(np.int64),
        keys=keys[order],
        origin=origin,
        cell=cell,
        dims=dims.astype(np.int64))


@numba.njit(cache=True)
def _cell_coordinate(value, origin, cell, size):
    """Cell of a center coordinate, clamped just outside the grid."""
    position = math.floor((np.float64(value) - origin) / cell)
    return int(min(max(position, -2.0), size + 1.0))


@numba.njit(cache=True)
def _insert_sorted(found, count, value):
    """Keep ``found[:count]`` the smallest indices seen, in order; return
    the new count."""
    nsample = found.shape[0]
    if count == nsample:
        if value >= found[nsample - 1]:
            return count
        position = nsample - 1
    else:
        position = count
        count += 1
    while position > 0 and found[position - 1] > value:
        found[position] = found[position - 1]
        position -= 1
    found[position] = value
    return count


@numba.njit(cache=True)
def _first_matches(center, grid_xyz, grid_index, grid_keys, origin, cell,
                   dims, min_radius2, max_radius2, match_coincident, found):
    """Fill ``found`` with the smallest indices of points matching
    ``center``'s ball, ascending, and return how many there are.

    A point matches when ``min_radius2 <= d2 < max_radius2``, or when
    ``d2 == 0`` and ``match_coincident``.
    """
    cx, cy, cz = center[0], center[1], center[2]
    if not (np.isfinite(cx) and np.isfinite(cy) and np.isfinite(cz)):
        return 0
    nsample = found.shape[0]
    gx = _cell_coordinate(cx, origin[0], cell, dims[0])
    gy = _cell_coordinate(cy, origin[1], cell, dims[1])
    gz = _cell_coordinate(cz, origin[2], cell, dims[2])
    z_lo, z_hi = max(gz - 1, 0), min(gz + 1, dims[2] - 1)
    if z_lo > z_hi:
        return 0
    count = 0
    for ix in range(max(gx - 1, 0), min(gx + 2, dims[0])):
        for iy in range(max(gy - 1, 0), min(gy + 2, dims[1])):
            # the three z-neighbour cells are consecutive keys
            column = (ix * dims[1] + iy) * dims[2]
            lo = np.searchsorted(grid_keys, column + z_lo)
            hi = np.searchsorted(grid_keys, column + z_hi, side='right')
            for s in range(lo, hi):
                k = grid_index[s]
                if count == nsample and k > found[nsample - 1]:
                    continue
                dx = cx - grid_xyz[s, 0]
                dy = cy - grid_xyz[s, 1]
                dz = cz - grid_xyz[s, 2]
                d2 = dx * dx + dy * dy + dz * dz
                if ((match_coincident and d2 == 0)
                        or (d2 >= min_radius2 and d2 < max_radius2)):
                    count = _insert_sorted(found, count, k)
    return count


@numba.njit(cache=True)
def _ball_query_kernel(centers, grid_xyz, grid_index, grid_keys, origin,
                       cell, dims, min_radius2, max_radius2, match_coincident,
                       mark_empty, idx):
    """Rows of ``idx`` as the CUDA kernels fill them: the first matches in
    index order, padded with the first one; rows of empty balls are left
    alone, or get ``-1`` in their first slot when ``mark_empty``."""
    nsample = idx.shape[1]
    if nsample == 0:
        return
    found = np.empty(nsample, dtype=np.int64)
    for c in range(centers.shape[0]):
        count = _first_matches(centers[c], grid_xyz, grid_index, grid_keys,
                               origin, cell, dims, min_radius2, max_radius2,
                               match_coincident, found)
        if count == 0:
            if mark_empty:
                idx[c, 0] = -1
            continue
        for slot in range(nsample):
            idx[c, slot] = found[slot] if slot < count else found[0]


def _query_balls(centers: np.ndarray, xyz: np.ndarray, min_radius2: float,
                 max_radius2: float, match_coincident: bool,
                 mark_empty: bool, idx: np.ndarray) -> None:
    """Ball query of ``centers`` (M, 3) against ``xyz`` (N, 3) into ``idx``
    (M, nsample); radii squared as the kernels square them, in float32."""
    if len(centers) == 0 or idx.shape[1] == 0:
        return
    grid = _build_cell_grid(xyz, math.sqrt(max(float(max_radius2), 0.0)))
    _ball_query_kernel(centers, grid.xyz, grid.index, grid.keys, grid.origin,
                       grid.cell, grid.dims, np.float32(min_radius2),
                       np.float32(max_radius2), match_coincident, mark_empty,
                       idx)


def _squared_radius(radius: float) -> np.float32:
    """``float r2 = r * r`` with ``r`` passed to the kernel as a float."""
    radius = np.float32(radius)
    return np.float32(radius * radius)


@cpu_kernel('ball_query_forward')
def ball_query_forward(new_xyz_tensor: Tensor, xyz_tensor: Tensor,
                       idx_tensor: Tensor, b: int, n: int, m: int,
                       min_radius: float, max_radius: float,
                       nsample: int) -> None:
    """Batched ball query: ``idx`` (B, M, nsample) gets the first
    ``nsample`` points in index order with ``d2 == 0`` or
    ``min_radius**2 <= d2 < max_radius**2``, padded with the first one;
    rows of empty balls are left unchanged."""
    centers = _float_array(new_xyz_tensor).reshape(b, m, 3)
    xyz = _float_array(xyz_tensor).reshape(b, n, 3)
    idx = _array(idx_tensor).reshape(b, m, nsample)
    for batch in range(b):
        _query_balls(centers[batch], xyz[batch], _squared_radius(min_radius),
                     _squared_radius(max_radius), True, False, idx[batch])


@cpu_kernel('stack_ball_query_forward')
def stack_ball_query_forward(new_xyz_tensor: Tensor,
                             new_xyz_batch_cnt: Tensor, xyz_tensor: Tensor,
                             xyz_batch_cnt: Tensor, idx_tensor: Tensor,
                             max_radius: float, nsample: int) -> None:
    """Stacked ball query: ``idx`` (M, nsample) gets, per center, the first
    ``nsample`` points of its own batch (batch-local indices) with
    ``d2 < max_radius**2``, padded with the first one; empty balls get
    ``-1`` in their first slot and the rest of the row is left unchanged."""
    centers = _float_array(new_xyz_tensor).reshape(-1, 3)
    xyz = _float_array(xyz_tensor).reshape(-1, 3)
    idx = _array(idx_tensor).reshape(len(centers), nsample)
    center_counts = new_xyz_batch_cnt.long().tolist()
    point_counts = xyz_batch_cnt.long().tolist()
    if len(centers) > sum(center_counts):
        raise IndexError('stack_ball_query: more centers than '
                         'new_xyz_batch_cnt counts')
    if sum(point_counts[:len(center_counts)]) > len(xyz):
        raise IndexError('stack_ball_query: xyz_batch_cnt counts more '
                         'points than xyz holds')
    radius2 = _squared_radius(max_radius)
    center_start = point_start = 0
    for center_count, point_count in zip(center_counts, point_counts):
        center_end = min(center_start + center_count, len(centers))
        _query_balls(centers[center_start:center_end],
                     xyz[point_start:point_start + point_count], -1.0,
                     radius2, False, True, idx[center_start:center_end])
        center_start += center_count
        point_start += point_count


# --------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------
@cpu_kernel('group_points_forward')
def group_points_forward(points_tensor: Tensor, idx_tensor: Tensor,
                         out_tensor: Tensor, b: int, c: int, n: int,
                         npoints: int, nsample: int) -> None:
    """``out[b, c, p, s] = points[b, c, idx[b, p, s]]``."""
    _check_index_range(idx_tensor, 0, n, 'group_points')
    width = npoints * nsample
    index = idx_tensor.long().view(b, 1, width).expand(b, c, width)
    torch.gather(points_tensor.view(b, c, n), 2, index,
                 out=out_tensor.view(b, c, width))


@cpu_kernel('group_points_backward')
def group_points_backward(grad_out_tensor: Tensor, idx_tensor: Tensor,
                          grad_points_tensor: Tensor, b: int, c: int, n: int,
                          npoints: int, nsample: int) -> None:
    """Accumulate ``grad_out`` (B, C, npoints, nsample) into
    ``grad_points`` (B, C, N)."""
    _check_index_range(idx_tensor, 0, n, 'group_points')
    width = npoints * nsample
    index = idx_tensor.long().view(b, 1, width).expand(b, c, width)
    grad_points_tensor.view(b, c, n).scatter_add_(
        2, index, grad_out_tensor.view(b, c, width))


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
    features = _float_array(features_tensor).reshape(
        features_tensor.shape[0], c)
    rows, written = _stacked_rows(
        idx_tensor.view(m, nsample), idx_batch_cnt_tensor,
        features_batch_cnt_tensor, b)
    _check_index_range(rows[written], 0, features.shape[0],
                       'stack_group_points')
    out, stand_in = _float_output(out_tensor)
    _stack_group_forward_kernel(features, rows.numpy(), written.numpy(),
                                out.reshape(m, c, nsample))
    _copy_back(out_tensor, stand_in)


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
    _check_index_range(rows, 0, n, 'stack_group_points')
    grad_features, stand_in = _float_output(grad_features_tensor)
    _stack_group_backward_kernel(
        _float_array(grad_out_tensor).reshape(m, c, nsample), rows.numpy(),
        grad_features.reshape(n, c))
    _copy_back(grad_features_tensor, stand_in)


# --------------------------------------------------------------------------
# three-NN interpolation
# --------------------------------------------------------------------------
@numba.njit(cache=True)
def _three_nn_kernel(unknown, known, dist2, idx):
    for b in range(unknown.shape[0]):
        for p in range(unknown.shape[1]):
            ux = unknown[b, p, 0]
            uy = unknown[b, p, 1]
            uz = unknown[b, p, 2]
            best1 = best2 = best3 = 1e40
            besti1 = besti2 = besti3 = 0
            for k in range(known.shape[1]):
                dx = ux - known[b, k, 0]
                dy = uy - known[b, k, 1]
                dz = uz - known[b, k, 2]
                d = dx * dx + dy * dy + dz * dz
                if d < best1:
                    best3, besti3 = best2, besti2
                    best2, besti2 = best1, besti1
                    best1, besti1 = d, k
                elif d < best2:
                    best3, besti3 = best2, besti2
                    best2, besti2 = d, k
                elif d < best3:
                    best3, besti3 = d, k
            dist2[b, p, 0] = best1
            dist2[b, p, 1] = best2
            dist2[b, p, 2] = best3
            idx[b, p, 0] = besti1
            idx[b, p, 1] = besti2
            idx[b, p, 2] = besti3


@cpu_kernel('three_nn_forward')
def three_nn_forward(unknown_tensor: Tensor, known_tensor: Tensor,
                     dist2_tensor: Tensor, idx_tensor: Tensor, b: int, n: int,
                     m: int) -> None:
    """Three nearest ``known`` (B, M, 3) points of every ``unknown``
    (B, N, 3) point: squared distances and indices (B, N, 3), nearest
    first, earlier index first on ties; missing neighbours get index 0 and
    distance 1e40 (``inf`` in float32)."""
    unknown = _float_array(unknown_tensor).reshape(b, n, 3)
    known = _float_array(known_tensor).reshape(b, m, 3)
    dist2, stand_in = _float_output(dist2_tensor)
    _three_nn_kernel(unknown, known, dist2.reshape(b, n, 3),
                     _array(idx_tensor).reshape(b, n, 3))
    _copy_back(dist2_tensor, stand_in)


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
    _check_index_range(idx_tensor, 0, m, 'three_interpolate')
    out, stand_in = _float_output(out_tensor)
    _three_interpolate_kernel(
        _float_array(points_tensor).reshape(b, c, m),
        _array(idx_tensor).reshape(b, n, 3),
        _float_array(weight_tensor).reshape(b, n, 3), out.reshape(b, c, n))
    _copy_back(out_tensor, stand_in)


@cpu_kernel('three_interpolate_backward')
def three_interpolate_backward(grad_out_tensor: Tensor, idx_tensor: Tensor,
                               weight_tensor: Tensor,
                               grad_points_tensor: Tensor, b: int, c: int,
                               n: int, m: int) -> None:
    """Accumulate ``grad_out * weight`` (B, C, N) into ``grad_points``
    (B, C, M) at the three neighbours."""
    _check_index_range(idx_tensor, 0, m, 'three_interpolate')
    grad_points, stand_in = _float_output(grad_points_tensor)
    _three_interpolate_backward_kernel(
        _float_array(grad_out_tensor).reshape(b, c, n),
        _array(idx_tensor).reshape(b, n, 3),
        _float_array(weight_tensor).reshape(b, n, 3),
        grad_points.reshape(b, c, m))
    _copy_back(grad_points_tensor, stand_in)


# --------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------
@numba.njit(cache=True)
def _reheap(dist, idx, k):
    """Sift the root of the max-heap ``dist[:k]`` down (CUDA ``reheap``)."""
    root = 0
    child = 1
    while child < k:
        if child + 1 < k and dist[child + 1] > dist[child]:
            child += 1
        if dist[root] > dist[child]:
            return
        dist[root], dist[child] = dist[child], dist[root]
        idx[root], idx[child] = idx[child], idx[root]
        root = child
        child = root * 2 + 1


@numba.njit(cache=True)
def _heap_sort(dist, idx, k):
    for i in range(k - 1, 0, -1):
        dist[0], dist[i] = dist[i], dist[0]
        idx[0], idx[i] = idx[i], idx[0]
        _reheap(dist, idx, i)


@numba.njit(cache=True)
def _knn_kernel(xyz, new_xyz, idx, dist2):
    nsample = idx.shape[2]
    best_dist = np.empty(nsample, dtype=np.float32)
    best_idx = np.empty(nsample, dtype=np.int32)
    for b in range(new_xyz.shape[0]):
        for p in range(new_xyz.shape[1]):
            new_x = new_xyz[b, p, 0]
            new_y = new_xyz[b, p, 1]
            new_z = new_xyz[b, p, 2]
            best_dist[:] = 1e10
            best_idx[:] = 0
            for i in range(xyz.shape[1]):
                dx = new_x - xyz[b, i, 0]
                dy = new_y - xyz[b, i, 1]
                dz = new_z - xyz[b, i, 2]
                d2 = dx * dx + dy * dy + dz * dz
                if d2 < best_dist[0]:
                    best_dist[0] = d2
                    best_idx[0] = i
                    _reheap(best_dist, best_idx, nsample)
            _heap_sort(best_dist, best_idx, nsample)
            idx[b, p, :] = best_idx
            dist2[b, p, :] = best_dist


@cpu_kernel('knn_forward')
def knn_forward(xyz_tensor: Tensor, new_xyz_tensor: Tensor,
                idx_tensor: Tensor, dist2_tensor: Tensor, b: int, n: int,
                m: int, nsample: int) -> None:
    """``nsample`` nearest ``xyz`` (B, N, 3) points of every ``new_xyz``
    (B, M, 3) center: indices and squared distances (B, M, nsample) in the
    order of the CUDA kernel's heap sort (nearest first); missing neighbours
    get index 0 and distance 1e10."""
    if dist2_tensor.dtype != new_xyz_tensor.dtype:
        # the launcher writes dist2 through data_ptr<scalar_t>()
        raise RuntimeError(f'expected scalar type {new_xyz_tensor.dtype} '
                           f'but found {dist2_tensor.dtype}')
    xyz = _float_array(xyz_tensor).reshape(b, n, 3)
    new_xyz = _float_array(new_xyz_tensor).reshape(b, m, 3)
    dist2, stand_in = _float_output(dist2_tensor)
    _knn_kernel(xyz, new_xyz, _array(idx_tensor).reshape(b, m, nsample),
                dist2.reshape(b, m, nsample))
    _copy_back(dist2_tensor, stand_in)


@cpu_override('mmcv.ops.knn', 'KNN.forward')
def knn_autograd_forward(ctx,
                         k: int,
                         xyz: Tensor,
                         center_xyz: Optional[Tensor] = None,
                         transposed: bool = False) -> Tensor:
    """``KNN.forward`` without its ``torch.cuda`` device handling."""
    assert (k > 0) & (k < 100), 'k should be in range(0, 100)'
    if center_xyz is None:
        center_xyz = xyz
    if transposed:
        xyz = xyz.transpose(2, 1).contiguous()
        center_xyz = center_xyz.transpose(2, 1).contiguous()
    assert xyz.is_contiguous()
    assert center_xyz.is_contiguous()
    assert center_xyz.device == xyz.device, \
        'center_xyz and xyz should be put on the same device'

    batch, npoint, _ = center_xyz.shape
    n = xyz.shape[1]
    idx = center_xyz.new_zeros((batch, npoint, k)).int()
    dist2 = center_xyz.new_zeros((batch, npoint, k)).float()
    knn_forward(xyz, center_xyz, idx, dist2, b=batch, n=n, m=npoint, nsample=k)
    idx = idx.transpose(2, 1).contiguous()
    ctx.mark_non_differentiable(idx)
    return idx
