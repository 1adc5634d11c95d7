"""CPU kernels of mmcv's neighbour searches: ball query (batched and
stacked), ``three_nn`` and kNN.

The semantics transcribe mmcv's CUDA kernels
(``mmcv/ops/csrc/common/cuda/*.cuh``): index order, fill rules, the ``-1``
and ``0`` conventions and tie breaking. Distances are computed in the input
dtype in the kernels' order of operations; nvcc may fuse multiply-adds, so a
point within one rounding error of a radius can fall on the other side of it
on a GPU. float16 inputs are computed in float32. Ball query looks the
points up in a grid of cells at least one radius wide instead of scanning
them all. ``KNN.forward`` is overridden for CPU inputs because mmcv's
version handles CUDA devices itself. The ``_ext`` contracts are those
described in :mod:`._common`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numba
import numpy as np
from torch import Tensor

from ._common import as_array, copy_back, float_array, float_output
from .registry import cpu_kernel, cpu_override

# Cells per axis of the ball-query grid at most, so cell keys fit in int64.
_MAX_CELLS_PER_AXIS = 2**20
# Ball-query cells are this much wider than the radius, so that rounding in
# the squared distance never puts a neighbour beyond the adjacent cells.
_CELL_MARGIN = 1 + 1e-5


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
    centers = float_array(new_xyz_tensor).reshape(b, m, 3)
    xyz = float_array(xyz_tensor).reshape(b, n, 3)
    idx = as_array(idx_tensor).reshape(b, m, nsample)
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
    centers = float_array(new_xyz_tensor).reshape(-1, 3)
    xyz = float_array(xyz_tensor).reshape(-1, 3)
    idx = as_array(idx_tensor).reshape(len(centers), nsample)
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
    unknown = float_array(unknown_tensor).reshape(b, n, 3)
    known = float_array(known_tensor).reshape(b, m, 3)
    dist2, stand_in = float_output(dist2_tensor)
    _three_nn_kernel(unknown, known, dist2.reshape(b, n, 3),
                     as_array(idx_tensor).reshape(b, n, 3))
    copy_back(dist2_tensor, stand_in)


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
    xyz = float_array(xyz_tensor).reshape(b, n, 3)
    new_xyz = float_array(new_xyz_tensor).reshape(b, m, 3)
    dist2, stand_in = float_output(dist2_tensor)
    _knn_kernel(xyz, new_xyz, as_array(idx_tensor).reshape(b, m, nsample),
                dist2.reshape(b, m, nsample))
    copy_back(dist2_tensor, stand_in)


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
