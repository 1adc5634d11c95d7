"""CPU kernels of mmcv's rotated-box ops (``rdprune_mm.cpu_ops.iou3d``,
``nms_rotated`` and ``points_in_boxes``) through mmcv's public API: against
mmcv's own CPU kernels where they exist, else against the CUDA kernels'
arithmetic written out in Python."""
import importlib
import math

import numpy as np
import pytest
import torch
from mmcv.ops import (box_iou_rotated, boxes_iou3d, boxes_overlap_bev, nms3d,
                      nms3d_normal, nms_rotated, points_in_boxes_all,
                      points_in_boxes_part)
from mmcv.utils import ext_loader

import rdprune_mm  # noqa: F401  (installs the CPU kernels)

# mmcv's compiled module itself, not the dispatching proxy.
MMCV_EXT = ext_loader.load_ext(
    '_ext', ['nms_rotated', 'points_in_boxes_cpu_forward'])


def lidar_boxes(num, seed, num_objects=6, region=12.0):
    """(num, 7) float32 boxes (x, y, z, dx, dy, dz, heading), clustered
    around a few objects like detector proposals, headings over [-pi, pi]
    including both ends."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_objects, 3, generator=gen) * region
    yaw = (torch.rand(num_objects, generator=gen) * 2 - 1) * math.pi
    idx = torch.randint(0, num_objects, (num, ), generator=gen)
    xyz = centers[idx] + torch.randn(num, 3, generator=gen) * 0.6
    size = torch.tensor([3.9, 1.6, 1.5]) * (
        1 + 0.15 * torch.randn(num, 3, generator=gen)).abs()
    heading = yaw[idx] + torch.randn(num, generator=gen) * 0.3
    heading[::7] = math.pi * torch.sign(heading[::7])
    heading[1::7] = math.pi - 1e-6
    heading[2::7] = -math.pi + 1e-6
    return torch.cat([xyz, size, heading[:, None]], dim=1)


def bev_boxes(num, seed, **kwargs):
    """(num, 5) float32 (x, y, w, h, angle) boxes and random scores."""
    boxes = lidar_boxes(num, seed, **kwargs)[:, [0, 1, 3, 4, 6]]
    scores = torch.rand(num, generator=torch.Generator().manual_seed(seed))
    return boxes.contiguous(), scores


# --------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------


def rect_corners(x, y, dx, dy, heading):
    """Counter-clockwise corners of a rectangle rotated by ``heading``."""
    cos_a, sin_a = math.cos(heading), math.sin(heading)
    return [(x + px * cos_a - py * sin_a, y + px * sin_a + py * cos_a)
            for px, py in ((-dx / 2, -dy / 2), (dx / 2, -dy / 2),
                           (dx / 2, dy / 2), (-dx / 2, dy / 2))]


def footprint(box):
    """BEV corners of an (x, y, z, dx, dy, dz, heading) box."""
    return rect_corners(box[0], box[1], box[3], box[4], box[6])


def next_float32(value, toward):
    """The float32 next to float32 ``value`` in the direction of
    ``toward``, as kernels taking a C++ ``float`` threshold see it."""
    return torch.nextafter(
        torch.tensor(value), torch.tensor(float(toward))).item()


def cross(p1, p2, p0):
    return (p1[0] - p0[0]) * (p2[1] - p0[1]) - (p2[0] - p0[0]) * (
        p1[1] - p0[1])


def clipped_area(poly, clip):
    """Exact area of the intersection of two convex CCW polygons
    (Sutherland-Hodgman)."""
    for e0, e1 in zip(clip, clip[1:] + clip[:1]):
        points, poly = poly, []
        for prev, cur in zip(points[-1:] + points[:-1], points):
            prev_in, cur_in = cross(e1, prev, e0) >= 0, cross(e1, cur, e0) >= 0
            if prev_in != cur_in:
                a, b = cross(e1, prev, e0), cross(e1, cur, e0)
                t = a / (a - b)
                poly.append((prev[0] + t * (cur[0] - prev[0]),
                             prev[1] + t * (cur[1] - prev[1])))
            if cur_in:
                poly.append(cur)
        if not poly:
            return 0.0
    return abs(sum(cross(p, q, (0.0, 0.0))
                   for p, q in zip(poly, poly[1:] + poly[:1]))) / 2


def cuda_box_overlap(box_a, box_b):
    """``box_overlap`` of mmcv's iou3d_cuda_kernel.cuh, in Python floats:
    crossing points and corners (inside with a 1e-2 margin) sorted by angle
    around their mean."""

    def corners(box):
        pts = footprint(box)
        return pts + pts[:1]

    def inside(box, p):
        x, y, _, dx, dy, _, heading = box
        cos_a, sin_a = math.cos(-heading), math.sin(-heading)
        rot_x = (p[0] - x) * cos_a - (p[1] - y) * sin_a
        rot_y = (p[0] - x) * sin_a + (p[1] - y) * cos_a
        return abs(rot_x) < dx / 2 + 1e-2 and abs(rot_y) < dy / 2 + 1e-2

    def crossing(p1, p0, q1, q0):
        if not (min(p0[0], p1[0]) <= max(q0[0], q1[0])
                and min(q0[0], q1[0]) <= max(p0[0], p1[0])
                and min(p0[1], p1[1]) <= max(q0[1], q1[1])
                and min(q0[1], q1[1]) <= max(p0[1], p1[1])):
            return None
        s1, s2 = cross(q0, p1, p0), cross(p1, q1, p0)
        s3, s4 = cross(p0, q1, q0), cross(q1, p1, q0)
        if not (s1 * s2 > 0 and s3 * s4 > 0):
            return None
        s5 = cross(q1, p1, p0)
        return ((s5 * q0[0] - s1 * q1[0]) / (s5 - s1),
                (s5 * q0[1] - s1 * q1[1]) / (s5 - s1))

    ca, cb = corners(box_a), corners(box_b)
    pts = [
        p for i in range(4) for j in range(4)
        if (p := crossing(ca[i + 1], ca[i], cb[j + 1], cb[j])) is not None
    ]
    for k in range(4):
        pts += [cb[k]] if inside(box_a, cb[k]) else []
        pts += [ca[k]] if inside(box_b, ca[k]) else []
    if not pts:
        return 0.0
    cx = sum(p[0] for p in pts) / len(pts)
    cy = sum(p[1] for p in pts) / len(pts)
    pts.sort(key=lambda p: math.atan2(p[1] - cy, p[0] - cx))
    return abs(sum(
        cross(pts[k], pts[k + 1], pts[0]) for k in range(len(pts) - 1))) / 2


def greedy_keep(iou, thresh, strict):
    """Greedy NMS over an (N, N) IoU matrix of score-sorted boxes."""
    removed = torch.zeros(len(iou), dtype=torch.bool)
    keep = []
    for i in range(len(iou)):
        if removed[i]:
            continue
        keep.append(i)
        hit = iou[i] > thresh if strict else iou[i] >= thresh
        hit[:i + 1] = False
        removed |= hit
    return torch.tensor(keep, dtype=torch.long)


def iou_bev_matrix(boxes):
    """``iou_bev`` of every pair, from the BEV overlaps (float32)."""
    area = boxes[:, 3] * boxes[:, 4]
    overlap = boxes_overlap_bev(boxes, boxes)
    union = area[:, None] + area[None, :] - overlap
    return overlap / union.clamp(min=1e-8)


def iou_normal_matrix(boxes):
    """``iou_normal`` of every pair (headings taken as 0, float32)."""
    lo = boxes[:, :2] - boxes[:, 3:5] / 2
    hi = boxes[:, :2] + boxes[:, 3:5] / 2
    side = (torch.minimum(hi[:, None], hi[None]) -
            torch.maximum(lo[:, None], lo[None])).clamp(min=0)
    inter = side[..., 0] * side[..., 1]
    area = boxes[:, 3] * boxes[:, 4]
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-8)


def mmcv_cpu_nms_rotated(dets, scores, iou_threshold, labels=None):
    """mmcv's compiled CPU ``nms_rotated`` with the arguments that
    ``mmcv.ops.nms_rotated`` passes it."""
    if labels is not None:
        dets = torch.cat((dets, labels[:, None].to(dets.dtype)), dim=1)
        labels = labels.int()
    else:
        labels = scores.new_empty(0, dtype=torch.int)
    order = scores.sort(0, descending=True)[1]
    return MMCV_EXT.nms_rotated(dets, scores, order, dets[order], labels,
                                iou_threshold, labels.numel() > 0)


def mmcv_cpu_points_in_boxes(points, boxes):
    """mmcv's compiled ``points_in_boxes_cpu_forward``: (B, M, T) int."""
    out = points.new_zeros((boxes.shape[0], boxes.shape[1], points.shape[1]),
                           dtype=torch.int)
    for b in range(boxes.shape[0]):
        MMCV_EXT.points_in_boxes_cpu_forward(boxes[b].contiguous(),
                                             points[b].contiguous(), out[b])
    return out.transpose(1, 2)


def first_box(inside):
    first = inside.int().argmax(-1).int()
    return torch.where(inside.bool().any(-1), first, -1)


# --------------------------------------------------------------------------
# boxes_overlap_bev / boxes_iou3d
# --------------------------------------------------------------------------


@pytest.mark.parametrize('seed', [0, 1])
def test_boxes_overlap_bev_matches_cuda_arithmetic(seed):
    boxes_a, boxes_b = lidar_boxes(70, seed).split([40, 30])
    boxes_b[:5] = boxes_a[:5]  # identical pairs
    overlap = boxes_overlap_bev(boxes_a, boxes_b)
    expected = torch.tensor(
        [[cuda_box_overlap(a, b) for b in boxes_b.double().tolist()]
         for a in boxes_a.double().tolist()],
        dtype=torch.float32)
    assert overlap.dtype == torch.float32
    assert (expected > 0).sum() > 100  # the clusters overlap a lot
    torch.testing.assert_close(overlap, expected, rtol=1e-4, atol=1e-4)


def test_boxes_overlap_bev_is_the_geometric_overlap():
    boxes_a, boxes_b = lidar_boxes(70, 3).split([40, 30])
    overlap = boxes_overlap_bev(boxes_a, boxes_b)
    expected = torch.tensor(
        [[clipped_area(footprint(a), footprint(b))
          for b in boxes_b.double().tolist()]
         for a in boxes_a.double().tolist()],
        dtype=torch.float32)
    # Corners up to 1e-2 outside the other box count as inside in the CUDA
    # kernel, which adds slivers of at most ~0.02 m^2.
    torch.testing.assert_close(overlap, expected, rtol=0, atol=0.03)


def test_boxes_overlap_bev_known_areas():
    long_box = [0., 0., 0., 4., 1., 1., math.pi / 4]  # along y = x
    boxes_a = torch.tensor([[0., 0., 0., 2., 2., 1., 0.]] * 3 + [long_box])
    boxes_b = torch.tensor([
        [0., 0., 5., 2., 2., 3., 0.],  # same footprint, other height
        [1., 0., 0., 2., 2., 1., 0.],  # half of it
        [0., 0., 0., 2., 2., 1., math.pi / 2],  # same square, turned
        [1., 1., 0., 1., .6, 1., math.pi / 4],  # on the long axis
    ])
    overlap = boxes_overlap_bev(boxes_a, boxes_b).diagonal()
    torch.testing.assert_close(overlap, torch.tensor([4., 2., 4., .6]))


def test_boxes_overlap_bev_empty_and_single():
    box = lidar_boxes(1, 0)
    assert boxes_overlap_bev(box.new_zeros(0, 7), box).shape == (0, 1)
    assert boxes_overlap_bev(box, box.new_zeros(0, 7)).shape == (1, 0)
    area = box[0, 3] * box[0, 4]
    torch.testing.assert_close(
        boxes_overlap_bev(box, box), area.view(1, 1), rtol=1e-4, atol=1e-4)


def test_boxes_iou3d_matches_the_geometric_iou():
    boxes_a, boxes_b = lidar_boxes(45, 5).split([25, 20])
    iou = boxes_iou3d(boxes_a, boxes_b)
    expected = torch.zeros_like(iou)
    for i, a in enumerate(boxes_a.double().tolist()):
        for j, b in enumerate(boxes_b.double().tolist()):
            bev = clipped_area(footprint(a), footprint(b))
            height = max(0.0, min(a[2] + a[5] / 2, b[2] + b[5] / 2) -
                         max(a[2] - a[5] / 2, b[2] - b[5] / 2))
            inter = bev * height
            expected[i, j] = inter / (
                a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter)
    assert (expected > 0.1).sum() > 20
    torch.testing.assert_close(iou, expected, rtol=0, atol=1e-2)


def test_lidar_boxes_overlaps_on_cpu():
    from mmdet3d.structures import LiDARInstance3DBoxes
    raw_a, raw_b = lidar_boxes(35, 7).split([20, 15])
    raw_b[:3] = raw_a[:3]
    boxes_a, boxes_b = LiDARInstance3DBoxes(raw_a), LiDARInstance3DBoxes(raw_b)
    iou = LiDARInstance3DBoxes.overlaps(boxes_a, boxes_b)
    expected = torch.zeros_like(iou)
    for i, a in enumerate(raw_a.double().tolist()):
        for j, b in enumerate(raw_b.double().tolist()):
            bev = clipped_area(footprint(a), footprint(b))
            # z is the bottom of LiDAR boxes
            height = max(0.0, min(a[2] + a[5], b[2] + b[5]) - max(a[2], b[2]))
            inter = bev * height
            expected[i, j] = inter / (
                a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - inter)
    assert (expected > 0.1).sum() > 10
    torch.testing.assert_close(iou, expected, rtol=0, atol=1e-4)
    empty = LiDARInstance3DBoxes(raw_a[:0])
    assert LiDARInstance3DBoxes.overlaps(empty, boxes_b).shape == (0, 15)


# --------------------------------------------------------------------------
# nms3d / nms3d_normal
# --------------------------------------------------------------------------


@pytest.mark.parametrize('thresh', [0.01, 0.3, 0.7])
def test_nms3d_matches_greedy_reference(thresh):
    boxes = lidar_boxes(150, 11)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(11))
    scores[10:20] = 0.5  # ties
    boxes[30:35] = boxes[40]  # duplicates
    keep = nms3d(boxes, scores, thresh)
    order = scores.sort(0, descending=True)[1]
    expected = order[greedy_keep(
        iou_bev_matrix(boxes[order]), torch.tensor(thresh), strict=True)]
    assert keep.dtype == torch.long
    assert 1 < len(expected) < 150
    assert torch.equal(keep, expected)


@pytest.mark.parametrize('thresh', [0.01, 0.3, 0.7])
def test_nms3d_normal_matches_greedy_reference(thresh):
    boxes = lidar_boxes(150, 12)
    scores = torch.rand(150, generator=torch.Generator().manual_seed(12))
    keep = nms3d_normal(boxes, scores, thresh)
    order = scores.sort(0, descending=True)[1]
    expected = order[greedy_keep(
        iou_normal_matrix(boxes[order]), torch.tensor(thresh), strict=True)]
    assert 1 < len(expected) < 150
    assert torch.equal(keep, expected)


@pytest.mark.parametrize('nms', [nms3d, nms3d_normal])
def test_nms3d_edge_cases(nms):
    boxes = lidar_boxes(3, 13)
    boxes[1] = boxes[0]
    scores = torch.tensor([0.5, 0.9, 0.1])
    assert nms(boxes[:0], scores[:0], 0.5).shape == (0, )
    assert nms(boxes[:1], scores[:1], 0.5).tolist() == [0]
    # duplicates: the better one stays
    assert 0 not in nms(boxes, scores, 0.5).tolist()
    assert 1 in nms(boxes, scores, 0.5).tolist()
    # iou 0 exceeds only a negative threshold
    far = torch.tensor([[0., 0, 0, 1, 1, 1, 0], [9., 9, 0, 1, 1, 1, 0]])
    assert nms(far, scores[:2], 0.0).tolist() == [1, 0]
    assert nms(far, scores[:2], -0.1).tolist() == [1]


def test_nms3d_threshold_is_strict():
    boxes = torch.tensor([[0., 0, 0, 2, 2, 1, 0.1],
                          [0.7, 0.2, 0, 2, 2, 1, 0.4]])
    scores = torch.tensor([0.9, 0.8])
    iou = iou_bev_matrix(boxes)[0, 1].item()
    assert 0.2 < iou < 0.9
    assert nms3d(boxes, scores, iou).tolist() == [0, 1]
    assert nms3d(boxes, scores, next_float32(iou, 0)).tolist() == [0]
    same = boxes[[0, 0]]  # iou_normal of identical boxes is exactly 1
    assert nms3d_normal(same, scores, 1.0).tolist() == [0, 1]
    assert nms3d_normal(same, scores, 0.9999).tolist() == [0]


# --------------------------------------------------------------------------
# nms_rotated
# --------------------------------------------------------------------------


@pytest.mark.parametrize('seed,thresh', [(0, 0.1), (1, 0.5), (2, 0.7),
                                         (3, 0.8), (4, 0.99), (5, 0.0),
                                         (6, -1.0)])
def test_nms_rotated_matches_mmcv_cpu(seed, thresh):
    dets, scores = bev_boxes(400, seed, num_objects=10, region=20.0)
    scores[::9] = 0.25  # ties
    dets[50:60] = dets[60]  # duplicates, rotated
    dets[70, 2] = 0  # zero-size
    dets[71, 2:4] = 0
    boxes, keep = nms_rotated(dets, scores, thresh)
    expected = mmcv_cpu_nms_rotated(dets, scores, thresh)
    assert keep.dtype == torch.long
    assert torch.equal(keep, expected)
    torch.testing.assert_close(boxes[:, 5], scores[keep])


def test_nms_rotated_on_proposals_matches_mmcv_cpu():
    dets, scores = bev_boxes(700, 20, num_objects=6, region=25.0)
    keep = nms_rotated(dets, scores, 0.8)[1]
    assert 100 < len(keep) < 690
    assert torch.equal(keep, mmcv_cpu_nms_rotated(dets, scores, 0.8))


def test_nms_rotated_multi_label_matches_mmcv_cpu():
    # mmcv 2.1.0's CPU kernel (and its CUDA kernel) ignore the labels:
    # boxes of different labels suppress each other too.
    dets, scores = bev_boxes(300, 21)
    labels = torch.randint(0, 3, (300, ),
                           generator=torch.Generator().manual_seed(21))
    keep = nms_rotated(dets, scores, 0.5, labels=labels)[1]
    assert torch.equal(keep, mmcv_cpu_nms_rotated(dets, scores, 0.5, labels))
    assert torch.equal(keep, nms_rotated(dets, scores, 0.5)[1])


def test_nms_rotated_threshold_is_inclusive():
    dets = torch.tensor([[0., 0, 4, 2, 0.3], [0.8, 0.3, 4, 2, 0.1],
                         [0.8, 0.3, 4, 2, 0.1]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    iou = box_iou_rotated(dets[:1], dets[1:2])[0, 0].item()  # same C++ IoU
    assert 0.2 < iou < 0.9
    above = next_float32(iou, 1)
    for thresh in (iou, above):
        keep = nms_rotated(dets, scores, thresh)[1]
        assert torch.equal(keep, mmcv_cpu_nms_rotated(dets, scores, thresh))
    assert nms_rotated(dets, scores, iou)[1].tolist() == [0]
    assert nms_rotated(dets, scores, above)[1].tolist() == [0, 1]


def test_nms_rotated_degenerate_inputs():
    dets, scores = bev_boxes(60, 22)
    assert nms_rotated(dets[:0], scores[:0], 0.5)[1] is None
    ext_proxy = importlib.import_module('mmcv.ops.nms').ext_module
    kernel_keep = ext_proxy.nms_rotated(
        dets[:0], scores[:0], scores[:0].long(), dets[:0],
        scores.new_empty(0, dtype=torch.int), 0.5, False)
    assert kernel_keep.dtype == torch.long and kernel_keep.numel() == 0
    assert nms_rotated(dets[:1], scores[:1], 0.5)[1].tolist() == [0]
    same = dets[[3] * 20]  # 20 identical rotated boxes
    assert nms_rotated(same, scores[:20], 0.5)[1].tolist() == [
        int(scores[:20].argmax())
    ]
    for clockwise in (True, False):
        keep = nms_rotated(dets, scores, 0.3, clockwise=clockwise)[1]
        flipped = dets.clone()
        flipped[:, 4] *= 1 if clockwise else -1
        assert torch.equal(keep, mmcv_cpu_nms_rotated(flipped, scores, 0.3))


@pytest.mark.parametrize('num', [5, 17, 18, 24])
def test_hull_sort_orders_points_by_angle(num):
    # Up to 17 points take libstdc++'s insertion sort, more its quicksort
    # steps; with distinct angles any correct sort gives this order.
    from rdprune_mm.cpu_ops.nms_rotated import _stl_sort
    gen = torch.Generator().manual_seed(num)
    angle = torch.rand(num, generator=gen) * math.pi
    radius = torch.rand(num, generator=gen) + 0.5
    xs = np.array(radius * angle.cos(), dtype=np.float32)
    ys = np.array(radius * angle.sin(), dtype=np.float32)
    xs[0] = ys[0] = 0  # the hull's start point
    _stl_sort(xs, ys, 1, num)
    expected = [0.0] + sorted(angle[1:].tolist())
    torch.testing.assert_close(
        torch.atan2(torch.from_numpy(ys), torch.from_numpy(xs))[1:],
        torch.tensor(expected[1:]))


def test_nms_rotated_float64_matches_mmcv_cpu():
    dets, scores = bev_boxes(200, 23)
    keep = nms_rotated(dets.double(), scores.double(), 0.4)[1]
    expected = mmcv_cpu_nms_rotated(dets.double(), scores.double(), 0.4)
    assert torch.equal(keep, expected)


def test_nms_rotated_scales_to_rpn_proposals():
    dets, scores = bev_boxes(9000, 24, num_objects=40, region=70.0)
    nms_rotated(dets[:10], scores[:10], 0.8)  # compiled already, normally
    keep = nms_rotated(dets, scores, 0.8)[1]
    assert 500 < len(keep) < 9000
    assert len(set(keep.tolist())) == len(keep)
    # its speed against mmcv's O(n^2) CPU kernel: benchmarks/bench_cpu_ops.py


# --------------------------------------------------------------------------
# points_in_boxes_part / points_in_boxes_all
# --------------------------------------------------------------------------


def test_points_in_boxes_match_mmcv_cpu():
    gen = torch.Generator().manual_seed(30)
    boxes = torch.stack([lidar_boxes(15, 30), lidar_boxes(15, 31)])
    points = torch.rand(2, 3000, 3, generator=gen) * 14 - 1
    expected = mmcv_cpu_points_in_boxes(points, boxes)
    inside = points_in_boxes_all(points, boxes)
    assert inside.dtype == torch.int and inside.shape == (2, 3000, 15)
    assert inside.sum() > 200
    assert torch.equal(inside, expected)
    part = points_in_boxes_part(points, boxes)
    assert part.dtype == torch.int and part.shape == (2, 3000)
    assert torch.equal(part, first_box(expected))
    assert (expected.sum(-1) > 1).any()  # some points in several boxes


def test_points_in_boxes_faces():
    # bottom center at the origin, 2 x 4 x 2; a second box overlaps the
    # first and a third is elsewhere
    boxes = torch.tensor([[[0., 0, 0, 2, 4, 2, 0], [1., 0, 0, 2, 4, 2, 0],
                           [9., 9, 9, 1, 1, 1, math.pi]]])
    points = torch.tensor([[
        [0., 0, 0],  # bottom face: inside
        [0., 0, 2],  # top face: inside
        [0., 0, 2.0001],  # above
        [1., 0, 1],  # x face of box 0, center of box 1
        [-1., 0, 1],  # x face of box 0 only
        [0., 2, 1],  # y face
        [0.5, 1.999, 1.999],  # inside both
        [9., 9, 9.5],  # box 2
    ]])
    expected_all = [[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 0],
                    [0, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert points_in_boxes_all(points, boxes)[0].tolist() == expected_all
    assert torch.equal(
        points_in_boxes_all(points, boxes),
        mmcv_cpu_points_in_boxes(points, boxes))
    assert points_in_boxes_part(points, boxes)[0].tolist() == [
        0, 0, -1, 1, -1, -1, 0, 2
    ]


def test_points_in_boxes_empty():
    points = torch.rand(2, 5, 3)
    no_boxes = torch.zeros(2, 0, 7)
    assert points_in_boxes_part(points, no_boxes).tolist() == [[-1] * 5] * 2
    assert points_in_boxes_all(points, no_boxes).shape == (2, 5, 0)
    boxes = torch.stack([lidar_boxes(3, 0)] * 2)
    assert points_in_boxes_part(points[:, :0], boxes).shape == (2, 0)
    assert points_in_boxes_all(points[:, :0], boxes).shape == (2, 0, 3)
