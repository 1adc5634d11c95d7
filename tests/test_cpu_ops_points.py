"""CPU kernels of mmcv's point ops against transcriptions of the CUDA
kernels (``mmcv/ops/csrc/common/cuda/*.cuh``)."""
import math
import os.path as osp
import sys

import numpy as np
import pytest
import torch

import rdprune_mm  # noqa: F401  (installs the CPU kernels)
from mmcv.ops import (ball_query, furthest_point_sample,
                      furthest_point_sample_with_dist, gather_points,
                      grouping_operation, knn, three_interpolate, three_nn)

KITTI_FRAME = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))), '..', 'shared', 'data',
    'lidar', '000008.bin')


def int_tensor(values):
    return torch.tensor(values, dtype=torch.int32)


def squared_distances(center, points):
    """d2 in the points' dtype, in the kernels' order of operations."""
    x, y, z = center
    return ((x - points[:, 0]) * (x - points[:, 0]) +
            (y - points[:, 1]) * (y - points[:, 1]) +
            (z - points[:, 2]) * (z - points[:, 2]))


# --------------------------------------------------------------------------
# reference transcriptions of the CUDA kernels
# --------------------------------------------------------------------------
def ref_fps(dist_rows, n, m):
    """One batch of ``furthest_point_sampling_*_forward_cuda_kernel``:
    ``dist_rows(old)`` gives every point's distance to point ``old``."""
    block = max(min(1 << int(math.log(n) / math.log(2.0)), 1024), 1)
    idx = np.zeros(m, dtype=np.int32)
    temp = np.full(n, 1e10, dtype=np.float32)
    old = 0
    for j in range(1, m):
        dist = dist_rows(old)
        dists, dists_i = [0.0] * block, [0] * block
        for tid in range(block):  # each thread
            best, besti = -1.0, 0
            for k in range(tid, n, block):
                d2 = min(dist[k], temp[k])
                temp[k] = d2
                besti = k if d2 > best else besti
                best = d2 if d2 > best else best
            dists[tid], dists_i[tid] = best, besti
        thres = 1024
        while thres >= 2:  # the block's tree reduction
            half = thres // 2
            if block >= thres:
                for tid in range(half):
                    v1, v2 = dists[tid], dists[tid + half]
                    i1, i2 = dists_i[tid], dists_i[tid + half]
                    dists[tid] = max(v1, v2)
                    dists_i[tid] = i2 if v2 > v1 else i1
            thres //= 2
        old = dists_i[0]
        idx[j] = old
    return idx, temp


def ref_fps_xyz(xyz, m):
    return ref_fps(lambda old: squared_distances(xyz[old], xyz), len(xyz), m)


def ref_ball(center, points, nsample, matches, row):
    """One center of the (stack) ball query kernels; returns the count."""
    d2 = squared_distances(center, points)
    cnt = 0
    for k in np.flatnonzero(matches(d2)):  # the other k do nothing
        if cnt == 0:
            row[:] = k
        row[cnt] = k
        cnt += 1
        if cnt >= nsample:
            break
    return cnt


def ref_ball_query(min_radius, max_radius, nsample, xyz, centers):
    min_r2 = np.float32(min_radius) * np.float32(min_radius)
    max_r2 = np.float32(max_radius) * np.float32(max_radius)

    def matches(d2):
        return (d2 == 0) | ((d2 >= min_r2) & (d2 < max_r2))

    idx = np.zeros(centers.shape[:2] + (nsample, ), dtype=np.int32)
    for b in range(len(centers)):
        for p, center in enumerate(centers[b]):
            ref_ball(center, xyz[b], nsample, matches, idx[b, p])
    return idx


def ref_stack_ball_query(radius, nsample, xyz, xyz_cnt, centers,
                         center_cnt):
    r2 = np.float32(radius) * np.float32(radius)
    idx = np.zeros((len(centers), nsample), dtype=np.int32)
    center_ends = np.cumsum(center_cnt)
    for p, center in enumerate(centers):
        bs = int(np.searchsorted(center_ends, p, side='right'))
        start = int(np.sum(xyz_cnt[:bs]))
        points = xyz[start:start + xyz_cnt[bs]]
        if ref_ball(center, points, nsample, lambda d2: d2 < r2,
                    idx[p]) == 0:
            idx[p, 0] = -1
    return idx


def ref_stack_group(features, features_cnt, idx, idx_cnt, b):
    """``stack_group_points_forward_cuda_kernel``, element by element."""
    m, nsample = idx.shape
    c = features.shape[1]
    flat = features.reshape(-1)
    out = np.zeros((m, c, nsample), dtype=features.dtype)
    for index in range(m * c * nsample):
        sample_idx = index % nsample
        c_idx = (index // nsample) % c
        pt_idx = index // nsample // c
        bs_idx, pt_cnt = 0, idx_cnt[0]
        for k in range(1, b):
            if pt_idx < pt_cnt:
                break
            pt_cnt += idx_cnt[k]
            bs_idx = k
        start, end = 0, features_cnt[0]
        for k in range(bs_idx):
            start += features_cnt[k]
            end = start + features_cnt[k + 1]
        in_idx = idx[pt_idx, sample_idx] * c + c_idx
        if in_idx < end * c:
            out[pt_idx, c_idx, sample_idx] = flat[start * c + in_idx]
    return out


def ref_three_nn(unknown, known):
    b, n, _ = unknown.shape
    dist2 = np.zeros((b, n, 3))
    idx = np.zeros((b, n, 3), dtype=np.int32)
    for bs in range(b):
        for p in range(n):
            d_all = squared_distances(unknown[bs, p], known[bs])
            best, besti = [1e40] * 3, [0] * 3
            for k, d in enumerate(d_all.tolist()):  # compared as double
                if d < best[0]:
                    best, besti = [d] + best[:2], [k] + besti[:2]
                elif d < best[1]:
                    best, besti = best[:1] + [d, best[1]], besti[:1] + [
                        k, besti[1]
                    ]
                elif d < best[2]:
                    best[2], besti[2] = d, k
            dist2[bs, p], idx[bs, p] = best, besti
    with np.errstate(over='ignore'):  # 1e40 is inf in float32
        return dist2.astype(unknown.dtype), idx


def ref_reheap(dist, idx, k):
    root, child = 0, 1
    while child < k:
        if child + 1 < k and dist[child + 1] > dist[child]:
            child += 1
        if dist[root] > dist[child]:
            return
        dist[root], dist[child] = dist[child], dist[root]
        idx[root], idx[child] = idx[child], idx[root]
        root, child = child, child * 2 + 1


def ref_knn(xyz, centers, k):
    """``knn_forward_cuda_kernel``: (B, M, k) indices and distances."""
    b, m, _ = centers.shape
    idx = np.zeros((b, m, k), dtype=np.int32)
    dist2 = np.zeros((b, m, k), dtype=np.float32)
    for bs in range(b):
        for p in range(m):
            best_dist = np.full(k, 1e10, dtype=np.float32)
            best_idx = [0] * k
            for i, d2 in enumerate(squared_distances(centers[bs, p],
                                                     xyz[bs])):
                if d2 < best_dist[0]:
                    best_dist[0], best_idx[0] = d2, i
                    ref_reheap(best_dist, best_idx, k)
            for i in range(k - 1, 0, -1):  # heap_sort
                best_dist[0], best_dist[i] = best_dist[i], best_dist[0]
                best_idx[0], best_idx[i] = best_idx[i], best_idx[0]
                ref_reheap(best_dist, best_idx, i)
            idx[bs, p], dist2[bs, p] = best_idx, best_dist
    return idx, dist2


# --------------------------------------------------------------------------
# point sets
# --------------------------------------------------------------------------
def lattice_points(rng, n, size=4, spacing=0.5):
    """Points on a coarse lattice: many duplicates and exact distance ties,
    many at exactly a multiple of ``spacing`` from each other."""
    return (rng.integers(0, size, (n, 3)) * spacing).astype(np.float32)


def random_points(rng, shape, scale=2.0):
    return (rng.random(shape) * scale).astype(np.float32)


# --------------------------------------------------------------------------
# furthest point sampling
# --------------------------------------------------------------------------
@pytest.mark.parametrize('n, m, kind', [(300, 40, 'random'),
                                        (1500, 30, 'random'),
                                        (1200, 50, 'lattice'),
                                        (100, 80, 'lattice'),
                                        (5, 12, 'random'), (1, 3, 'random')])
def test_fps_matches_cuda_kernel(n, m, kind):
    rng = np.random.default_rng(n + m)
    if kind == 'lattice':  # fewer distinct points than samples: ties
        xyz = np.stack([lattice_points(rng, n), lattice_points(rng, n)])
    else:
        xyz = np.stack([random_points(rng, (n, 3)) for _ in range(2)])
    idx = furthest_point_sample(torch.from_numpy(xyz), m)
    assert idx.dtype == torch.int32 and idx.shape == (2, m)
    for b in range(2):
        expected, _ = ref_fps_xyz(xyz[b], m)
        np.testing.assert_array_equal(idx[b].numpy(), expected)


def test_fps_tie_break_is_not_lowest_index():
    # points 1, 2 and 5 are equally far from point 0, the rest coincide with
    # it; thread 2 wins the block reduction (its bit-reversed id is lowest)
    xyz = np.zeros((512, 3), dtype=np.float32)
    xyz[1], xyz[2], xyz[5] = [1, 0, 0], [0, 1, 0], [0, 0, 1]
    idx = furthest_point_sample(torch.from_numpy(xyz[None]), 6)[0].numpy()
    expected, _ = ref_fps_xyz(xyz, 6)
    np.testing.assert_array_equal(idx, expected)
    assert expected[1] == 2


def test_fps_ext_fills_temp_in_place():
    rng = np.random.default_rng(2)
    xyz = random_points(rng, (1, 200, 3))
    temp = torch.full((1, 200), 1e10)
    idx = torch.full((1, 16), -7, dtype=torch.int32)
    ext = sys.modules['mmcv.ops.furthest_point_sample'].ext_module
    ext.furthest_point_sampling_forward(
        torch.from_numpy(xyz), temp, idx, b=1, n=200, m=16)
    expected_idx, expected_temp = ref_fps_xyz(xyz[0], 16)
    np.testing.assert_array_equal(idx[0].numpy(), expected_idx)
    np.testing.assert_array_equal(temp[0].numpy(), expected_temp)


def test_fps_with_dist_matches_cuda_kernel():
    rng = np.random.default_rng(3)
    xyz = lattice_points(rng, 300, size=6)
    dist = np.stack([
        ((xyz[:, None] - xyz[None])**2).sum(-1),
        random_points(rng, (300, 300)),
    ]).astype(np.float32)
    idx = furthest_point_sample_with_dist(torch.from_numpy(dist), 60)
    for b in range(2):
        expected, _ = ref_fps(lambda old: dist[b, old], 300, 60)
        np.testing.assert_array_equal(idx[b].numpy(), expected)


def test_fps_empty_inputs_and_dtype():
    assert furthest_point_sample(torch.zeros(2, 10, 3), 0).shape == (2, 0)
    assert furthest_point_sample(torch.zeros(0, 10, 3), 4).shape == (0, 4)
    no_points = furthest_point_sample(torch.zeros(2, 0, 3), 4)
    assert torch.equal(no_points, torch.zeros(2, 4, dtype=torch.int32))
    with pytest.raises(RuntimeError, match='Float'):
        furthest_point_sample(torch.zeros(1, 10, 3, dtype=torch.float64), 2)


# --------------------------------------------------------------------------
# gather points
# --------------------------------------------------------------------------
def test_gather_points_forward_and_grad():
    torch.manual_seed(0)
    features = torch.rand(2, 5, 30, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 30, (2, 40), dtype=torch.int32)  # with repeats
    out = gather_points(features, idx)
    expected = torch.stack([features[b][:, idx[b].long()] for b in range(2)])
    assert torch.equal(out, expected)
    assert torch.autograd.gradcheck(lambda f: gather_points(f, idx),
                                    (features, ))
    with pytest.raises(IndexError):
        gather_points(features, torch.full((2, 3), 30, dtype=torch.int32))


# --------------------------------------------------------------------------
# ball query
# --------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize('min_radius, max_radius, nsample',
                         [(0., 0.5, 8), (0.5, 1.0, 6), (0.2, 1.6, 40),
                          (0., 0.3, 1)])
def test_ball_query_matches_cuda_kernel(dtype, min_radius, max_radius,
                                        nsample):
    rng = np.random.default_rng(int(max_radius * 10) + nsample)
    # lattice: duplicates (d2 == 0 matches despite min_radius) and points at
    # exactly max_radius (excluded) or min_radius (included)
    xyz = np.stack([lattice_points(rng, 400), lattice_points(rng, 400)])
    centers = np.concatenate(
        [xyz[:, :30], random_points(rng, (2, 30, 3), scale=3.),
         np.full((2, 2, 3), 50.)], axis=1).astype(dtype)  # last: empty
    xyz = xyz.astype(dtype)
    idx = ball_query(min_radius, max_radius, nsample, torch.from_numpy(xyz),
                     torch.from_numpy(centers))
    expected = ref_ball_query(min_radius, max_radius, nsample, xyz, centers)
    np.testing.assert_array_equal(idx.numpy(), expected)
    assert (expected[:, -2:] == 0).all()


def test_ball_query_leaves_empty_rows_alone():
    xyz = torch.tensor([[[0., 0., 0.], [1., 0., 0.]]])
    centers = torch.tensor([[[0.1, 0., 0.], [5., 5., 5.]]])
    idx = torch.full((1, 2, 3), 7, dtype=torch.int32)
    ext = sys.modules['mmcv.ops.ball_query'].ext_module
    ext.ball_query_forward(
        centers, xyz, idx, b=1, n=2, m=2, min_radius=0., max_radius=0.5,
        nsample=3)
    assert idx.tolist() == [[[0, 0, 0], [7, 7, 7]]]


@pytest.mark.parametrize('radius, nsample', [(0.5, 5), (1.0, 16),
                                             (2.5, 32), (0.01, 4)])
def test_stack_ball_query_matches_cuda_kernel(radius, nsample):
    rng = np.random.default_rng(int(radius * 100) + nsample)
    xyz_cnt = [300, 0, 150, 80]
    center_cnt = [40, 7, 0, 25]
    xyz = np.concatenate([
        lattice_points(rng, xyz_cnt[0], size=6),
        np.zeros((0, 3), np.float32),
        random_points(rng, (xyz_cnt[2], 3), scale=4.),
        lattice_points(rng, xyz_cnt[3], size=3, spacing=1.0),
    ])
    centers = np.concatenate([
        xyz[:20], random_points(rng, (20, 3), scale=3.),
        random_points(rng, (7, 3)),
        random_points(rng, (24, 3), scale=3.),
        np.full((1, 3), 40., np.float32)
    ])
    idx = ball_query(0, radius, nsample, torch.from_numpy(xyz),
                     torch.from_numpy(centers), int_tensor(xyz_cnt),
                     int_tensor(center_cnt))
    expected = ref_stack_ball_query(radius, nsample, xyz, xyz_cnt, centers,
                                    center_cnt)
    np.testing.assert_array_equal(idx.numpy(), expected)
    empty = expected[:, 0] == -1
    assert empty[40:47].all() and empty[-1] and not empty[:20].any()
    assert (expected[empty, 1:] == 0).all()


def test_stack_ball_query_rejects_centers_beyond_counts():
    with pytest.raises(IndexError):
        ball_query(0, 1., 4, torch.zeros(5, 3), torch.zeros(3, 3),
                   int_tensor([5]), int_tensor([2]))


# --------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------
def test_grouping_operation_forward_and_grad():
    torch.manual_seed(1)
    features = torch.rand(2, 4, 20, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 20, (2, 6, 5), dtype=torch.int32)
    out = grouping_operation(features, idx)
    expected = torch.stack(
        [features[b][:, idx[b].long()] for b in range(2)])
    assert out.shape == (2, 4, 6, 5) and torch.equal(out, expected)
    assert torch.autograd.gradcheck(lambda f: grouping_operation(f, idx),
                                    (features, ))


def test_stack_grouping_matches_cuda_kernel_and_grad():
    torch.manual_seed(2)
    features_cnt, idx_cnt = [6, 4, 5], [3, 2, 2]
    features = torch.rand(15, 3, dtype=torch.float64)
    idx = torch.randint(0, 4, (7, 5), dtype=torch.int32)
    # batch 1 (rows 6..9): -1 reads batch 0's last row, 7 reads row 13 of
    # batch 2; an index at or beyond the batch's end row, compared with the
    # local index (10 in batch 1, 15 in batch 2), is not written
    idx[3, 0], idx[4, 2], idx[4, 1], idx[6, 3] = -1, 7, 10, 15
    out = grouping_operation(features, idx, int_tensor(features_cnt),
                             int_tensor(idx_cnt))
    expected = ref_stack_group(features.numpy(), features_cnt, idx.numpy(),
                               idx_cnt, 3)
    np.testing.assert_array_equal(out.numpy(), expected)
    assert torch.equal(out[3, :, 0], features[5])
    assert torch.equal(out[4, :, 2], features[13])
    assert (out[4, :, 1] == 0).all() and (out[6, :, 3] == 0).all()
    assert torch.equal(out[6, :, 0], features[10 + idx[6, 0].long()])

    features.requires_grad_(True)
    idx[4, 1], idx[6, 3] = 8, 1  # the backward kernel has no end-row bound
    assert torch.autograd.gradcheck(
        lambda f: grouping_operation(f, idx, int_tensor(features_cnt),
                                     int_tensor(idx_cnt)), (features, ))


def test_stack_grouping_rejects_reads_outside_features():
    idx = torch.zeros(2, 3, dtype=torch.int32)
    idx[0, 0] = -1  # batch 0: before the first feature row
    with pytest.raises(IndexError):
        grouping_operation(torch.rand(5, 2), idx, int_tensor([5]),
                           int_tensor([2]))


# --------------------------------------------------------------------------
# three-NN interpolation
# --------------------------------------------------------------------------
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_three_nn_matches_cuda_kernel(dtype):
    rng = np.random.default_rng(4)
    unknown = random_points(rng, (2, 60, 3)).astype(dtype)
    known = np.stack([lattice_points(rng, 40, size=3),
                      random_points(rng, (40, 3))]).astype(dtype)
    dist, idx = three_nn(torch.from_numpy(unknown), torch.from_numpy(known))
    expected_d2, expected_idx = ref_three_nn(unknown, known)
    np.testing.assert_array_equal(idx.numpy(), expected_idx)
    assert torch.equal(dist, torch.sqrt(torch.from_numpy(expected_d2)))


def test_three_nn_with_fewer_than_three_known_points():
    dist, idx = three_nn(torch.rand(1, 4, 3), torch.rand(1, 2, 3))
    assert torch.isinf(dist[..., 2]).all() and (idx[..., 2] == 0).all()
    assert (dist[..., :2] < 2).all()


def test_three_interpolate_forward_and_grad():
    torch.manual_seed(3)
    features = torch.rand(2, 4, 10, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 10, (2, 12, 3), dtype=torch.int32)
    weight = torch.rand(2, 12, 3, dtype=torch.float64)
    out = three_interpolate(features, idx, weight)
    expected = sum(weight[:, None, :, k] * torch.stack(
        [features[b][:, idx[b, :, k].long()] for b in range(2)])
                   for k in range(3))
    assert torch.allclose(out, expected, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(
        lambda f: three_interpolate(f, idx, weight), (features, ))


# --------------------------------------------------------------------------
# kNN
# --------------------------------------------------------------------------
@pytest.mark.parametrize('k, n', [(8, 200), (5, 3), (1, 50)])
def test_knn_matches_cuda_kernel(k, n):
    rng = np.random.default_rng(k + n)
    xyz = np.stack([lattice_points(rng, n, size=3), random_points(rng,
                                                                  (n, 3))])
    centers = random_points(rng, (2, 25, 3))
    idx = knn(k, torch.from_numpy(xyz), torch.from_numpy(centers))
    expected, _ = ref_knn(xyz, centers, k)
    np.testing.assert_array_equal(idx.numpy(), expected.transpose(0, 2, 1))

    ext = sys.modules['mmcv.ops.knn'].ext_module
    idx_out = torch.zeros(2, 25, k, dtype=torch.int32)
    dist2 = torch.zeros(2, 25, k)
    ext.knn_forward(torch.from_numpy(xyz), torch.from_numpy(centers),
                    idx_out, dist2, b=2, n=n, m=25, nsample=k)
    np.testing.assert_array_equal(dist2.numpy(), ref_knn(xyz, centers, k)[1])


def test_knn_self_and_transposed():
    rng = np.random.default_rng(5)
    xyz = torch.from_numpy(random_points(rng, (1, 30, 3)))
    idx = knn(4, xyz)
    assert torch.equal(idx[0, 0], torch.arange(30, dtype=torch.int32))
    assert torch.equal(knn(4, xyz.transpose(1, 2).contiguous(), None, True),
                       idx)


def test_empty_inputs():
    no_points = ball_query(0, 1., 4, torch.zeros(2, 0, 3), torch.rand(2, 3, 3))
    assert torch.equal(no_points, torch.zeros(2, 3, 4, dtype=torch.int32))
    assert ball_query(0, 1., 4, torch.rand(2, 5, 3),
                      torch.zeros(2, 0, 3)).shape == (2, 0, 4)
    stacked = ball_query(0, 1., 2, torch.zeros(0, 3), torch.rand(3, 3),
                         int_tensor([0]), int_tensor([3]))
    assert stacked.tolist() == [[-1, 0]] * 3
    assert grouping_operation(
        torch.rand(5, 4), torch.zeros(0, 3, dtype=torch.int32),
        int_tensor([5]), int_tensor([0])).shape == (0, 4, 3)
    assert grouping_operation(torch.rand(2, 4, 5),
                              torch.zeros(2, 0, 3, dtype=torch.int32)).shape \
        == (2, 4, 0, 3)
    dist, idx = three_nn(torch.rand(1, 2, 3), torch.zeros(1, 0, 3))
    assert torch.isinf(dist).all() and (idx == 0).all()
    assert (knn(3, torch.zeros(1, 0, 3), torch.rand(1, 2, 3)) == 0).all()


# --------------------------------------------------------------------------
# a real KITTI frame
# --------------------------------------------------------------------------
@pytest.mark.skipif(not osp.exists(KITTI_FRAME), reason='no KITTI frame')
def test_real_frame_sampling_and_pooling_queries():
    frame = np.fromfile(KITTI_FRAME, dtype=np.float32).reshape(-1, 4)
    xyz = np.ascontiguousarray(frame[:, :3])
    rng = np.random.default_rng(6)

    subset = xyz[rng.choice(len(xyz), 1500, replace=False)]
    idx = furthest_point_sample(torch.from_numpy(subset[None]), 48)
    np.testing.assert_array_equal(idx[0].numpy(),
                                  ref_fps_xyz(subset, 48)[0])

    # keypoints as VoxelSetAbstraction samples them, then its raw-point
    # ball query and RoI-grid pooling's query of grid points
    keypoint_idx = furthest_point_sample(torch.from_numpy(xyz[None]), 2048)
    assert len(np.unique(keypoint_idx.numpy())) == 2048
    keypoints = xyz[keypoint_idx[0].long().numpy()]
    idx = ball_query(0, 0.8, 16, torch.from_numpy(xyz),
                     torch.from_numpy(keypoints), int_tensor([len(xyz)]),
                     int_tensor([2048]))
    expected = ref_stack_ball_query(0.8, 16, xyz, [len(xyz)], keypoints,
                                    [2048])
    np.testing.assert_array_equal(idx.numpy(), expected)

    rois = keypoints[rng.choice(2048, 10, replace=False)]
    offsets = np.stack(np.meshgrid(*[np.linspace(-1.5, 1.5, 6)] * 3),
                       -1).reshape(-1, 3)
    grid = (rois[:, None] + offsets).reshape(-1, 3).astype(np.float32)
    idx = ball_query(0, 1.6, 16, torch.from_numpy(keypoints),
                     torch.from_numpy(grid), int_tensor([2048]),
                     int_tensor([len(grid)]))
    expected = ref_stack_ball_query(1.6, 16, keypoints, [2048], grid,
                                    [len(grid)])
    np.testing.assert_array_equal(idx.numpy(), expected)
    assert (expected[:, 0] == -1).any() and (expected[:, 0] != -1).any()
