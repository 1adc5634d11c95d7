"""KITTI evaluation without CUDA: the CPU rotated IoU and KittiMetric."""
import copy
import os
import os.path as osp
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from mmcv.ops import box_iou_rotated
from mmdet3d.evaluation import kitti_eval
from mmdet3d.evaluation.functional.kitti_utils import eval as kitti_eval_py
from mmdet3d.evaluation.metrics import KittiMetric
from mmdet3d.structures import Box3DMode, CameraInstance3DBoxes
from mmengine.logging import MMLogger

import rdprune_mm  # noqa: F401  (installs the CPU fallbacks)
from rdprune_mm.cpu_ops import kitti_eval as cpu_kitti_eval
from rdprune_mm.demo.bootstrap import bootstrap_map
from rdprune_mm.cpu_ops.kitti_eval import (ROTATE_IOU_MODULE,
                                           CpuRotateIouFinder,
                                           numba_cuda_available,
                                           patch_kitti_eval,
                                           rotate_iou_cpu_eval)

LIDAR = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))), '..', 'shared', 'data',
    'lidar')
FRAME_INFO = osp.join(LIDAR, '000008.pkl')
CATEGORIES = {'Pedestrian': 0, 'Cyclist': 1, 'Car': 2, 'DontCare': -1}
# KITTI samples 41 recall points; with fewer ground truths per difficulty
# even perfect detections cannot reach AP 100, so the frame is repeated.
NUM_FRAMES = 41
CRITERIA = (-1, 0, 1, 2)

needs_no_cuda = pytest.mark.skipif(
    numba_cuda_available(), reason='reproduces the failure without CUDA')


def random_boxes(num, seed, spread=3.0):
    rng = np.random.default_rng(seed)
    return np.concatenate([
        rng.uniform(-spread, spread, (num, 2)),
        rng.uniform(0.5, 4, (num, 2)),
        rng.uniform(-np.pi, np.pi, (num, 1))
    ], 1).astype(np.float32)


def mmcv_overlaps(boxes, query_boxes, criterion):
    """Reference from mmcv's CPU box_iou_rotated (counter-clockwise mode
    matches mmdet3d's clockwise camera-frame BEV boxes)."""
    boxes, query_boxes = torch.from_numpy(boxes), torch.from_numpy(query_boxes)
    if criterion == -1:
        return box_iou_rotated(boxes, query_boxes, clockwise=False).numpy()
    if criterion == 0:  # the CUDA kernel divides by the query box
        return box_iou_rotated(
            query_boxes, boxes, mode='iof', clockwise=False).numpy().T
    ious = box_iou_rotated(boxes, query_boxes, mode='iof', clockwise=False)
    if criterion == 1:
        return ious.numpy()
    return (ious * (boxes[:, 2] * boxes[:, 3])[:, None]).numpy()


def polygon_area(points):
    return 0.5 * abs(
        sum(x0 * y1 - x1 * y0
            for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1])))


def corners(box):
    """mmdet3d's rbbox_to_corners: clockwise rotation by the angle."""
    x, y, dx, dy, angle = (float(v) for v in box)
    cos, sin = np.cos(angle), np.sin(angle)
    local = [(-dx / 2, -dy / 2), (-dx / 2, dy / 2), (dx / 2, dy / 2),
             (dx / 2, -dy / 2)]
    return [(cos * u + sin * v + x, -sin * u + cos * v + y) for u, v in local]


def clip(subject, clipper):
    """Plain Sutherland-Hodgman clipping of a convex polygon."""

    def inside(p, a, b, sign):
        return sign * ((b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) *
                       (p[0] - a[0])) >= 0

    sign = 1 if sum(x0 * y1 - x1 * y0
                    for (x0, y0), (x1, y1) in zip(clipper, clipper[1:] +
                                                  clipper[:1])) > 0 else -1
    output = list(subject)
    for a, b in zip(clipper, clipper[1:] + clipper[:1]):
        points, output = output, []
        for p, q in zip(points, points[1:] + points[:1]):
            if inside(p, a, b, sign):
                output.append(p)
            if inside(p, a, b, sign) != inside(q, a, b, sign):
                cross_p = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (
                    p[0] - a[0])
                cross_q = (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (
                    q[0] - a[0])
                t = cross_p / (cross_p - cross_q)
                output.append(
                    (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
        if not output:
            return []
    return output


def clipping_overlaps(boxes, query_boxes, criterion):
    result = np.zeros((len(boxes), len(query_boxes)))
    for n, box in enumerate(boxes):
        for k, qbox in enumerate(query_boxes):
            inter = polygon_area(clip(corners(box), corners(qbox)))
            area, qarea = box[2] * box[3], qbox[2] * qbox[3]
            result[n, k] = {
                -1: inter / (area + qarea - inter),
                0: inter / qarea,
                1: inter / area,
                2: inter
            }[criterion]
    return result


@pytest.mark.parametrize('criterion', CRITERIA)
def test_random_boxes_match_references(criterion):
    boxes, query_boxes = random_boxes(40, seed=0), random_boxes(25, seed=1)
    result = rotate_iou_cpu_eval(boxes, query_boxes, criterion)
    assert result.shape == (40, 25) and result.dtype == np.float32
    assert (result > 0).mean() > 0.3
    np.testing.assert_allclose(
        result, mmcv_overlaps(boxes, query_boxes, criterion), atol=2e-5)
    np.testing.assert_allclose(
        result,
        clipping_overlaps(boxes, query_boxes, criterion),
        rtol=1e-5,
        atol=1e-6)


def test_matches_mmdet3d_kernel_in_cuda_simulator(tmp_path):
    """mmdet3d's own kernel, run by numba's CUDA simulator, agrees on
    generic boxes; there numba reports CUDA and the hook steps aside."""
    boxes = random_boxes(24, seed=2)
    np.save(tmp_path / 'boxes.npy', boxes)
    script = textwrap.dedent(f"""
        import importlib.util, numpy as np
        def load(name, path):
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
        ours = load('cpu_kitti_eval', {cpu_kitti_eval.__file__!r})
        assert ours.CpuRotateIouFinder().find_spec(
            {ROTATE_IOU_MODULE!r}, None) is None
        kernel = load('rotate_iou', {kitti_eval_py.__file__!r}.replace(
            'eval.py', 'rotate_iou.py'))
        # The simulator's threads iterate the module globals, where a first
        # warning would insert this registry mid-iteration.
        kernel.__warningregistry__ = {{}}
        boxes = np.load({str(tmp_path / 'boxes.npy')!r})
        np.save({str(tmp_path / 'out.npy')!r}, np.stack([
            kernel.rotate_iou_gpu_eval(boxes, boxes[::-1], c)
            for c in {CRITERIA!r}]))
    """)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM='1')
    subprocess.run([sys.executable, '-c', script], env=env, check=True)
    expected = np.load(tmp_path / 'out.npy')
    for criterion, kernel_result in zip(CRITERIA, expected):
        result = rotate_iou_cpu_eval(boxes, boxes[::-1], criterion)
        generic = np.ones_like(result, dtype=bool)
        # The kernel is unreliable where a box meets itself (see below).
        generic[np.arange(24), np.arange(24)[::-1]] = False
        np.testing.assert_allclose(
            result[generic], kernel_result[generic], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('criterion', (-1, 0, 1))
def test_identical_boxes(criterion):
    boxes = np.concatenate([random_boxes(20, seed=3), real_bev_boxes()])
    result = rotate_iou_cpu_eval(boxes, boxes, criterion)
    np.testing.assert_allclose(np.diag(result), 1, atol=1e-6)


def test_disjoint_and_touching_boxes():
    box = np.array([[0, 0, 2, 2, 0]], np.float32)
    others = np.array(
        [
            [10, 0, 2, 2, 0.3],  # far away
            [2.05, 0, 2, 2, 0],  # a hair apart
            [2, 0, 2, 2, 0],  # sharing an edge
            [2, 2, 2, 2, 0],  # sharing a corner
            [1 + np.sqrt(2), 0, 2, 2, np.pi / 4],  # corner on an edge
        ],
        np.float32)
    for criterion in CRITERIA:
        result = rotate_iou_cpu_eval(box, others, criterion)
        np.testing.assert_allclose(result, 0, atol=1e-6)
    rotated = np.array([[3, 4, 2, 1, 0.7]], np.float32)
    step = np.array([np.cos(0.7), -np.sin(0.7)]) * 2  # along the local x
    neighbour = rotated.copy()
    neighbour[0, :2] += step
    np.testing.assert_allclose(
        rotate_iou_cpu_eval(rotated, neighbour), 0, atol=1e-6)


def test_criteria_normalize_like_the_cuda_kernel():
    """Criterion 0 divides by the query box, 1 by the box (kernel calls
    ``devRotateIoUEval(query_box, box)``)."""
    big = np.array([[0, 0, 4, 2, 0.4]], np.float32)
    small = np.array([[0.2, 0.1, 1, 0.5, 0.4]], np.float32)
    assert rotate_iou_cpu_eval(big, small, 0)[0, 0] == pytest.approx(1)
    assert rotate_iou_cpu_eval(big, small, 1)[0, 0] == pytest.approx(1 / 16)
    assert rotate_iou_cpu_eval(big, small, -1)[0, 0] == pytest.approx(1 / 16)
    assert rotate_iou_cpu_eval(big, small, 2)[0, 0] == pytest.approx(0.5)


def test_angles_near_plus_minus_pi():
    box = np.array([[5, -3, 4, 1.6, np.pi - 1e-4]], np.float32)
    flipped = np.array([[5, -3, 4, 1.6, -np.pi + 1e-4], [5, -3, 4, 1.6, 0.0],
                        [5, -3, 4, 1.6, np.pi]], np.float32)
    np.testing.assert_allclose(rotate_iou_cpu_eval(box, flipped), 1, atol=1e-3)
    quarter = np.array([[5, -3, 4, 1.6, np.pi / 2]], np.float32)
    inter = 1.6 * 1.6
    assert rotate_iou_cpu_eval(box, quarter)[0, 0] == pytest.approx(
        inter / (2 * 6.4 - inter), abs=1e-3)


def test_empty_and_degenerate_inputs():
    boxes = random_boxes(3, seed=4)
    none = np.zeros((0, 5), np.float64)
    for result, shape in ((rotate_iou_cpu_eval(none, boxes), (0, 3)),
                          (rotate_iou_cpu_eval(boxes, none), (3, 0))):
        assert result.shape == shape and result.dtype == np.float32
    flat = boxes.copy()
    flat[:, 2] = 0
    np.testing.assert_array_equal(rotate_iou_cpu_eval(flat, boxes), 0)
    with pytest.raises(ValueError, match=r'\(n, 5\)'):
        rotate_iou_cpu_eval(np.zeros((2, 7)), boxes)


def test_eval_py_uses_the_cpu_routine():
    patch_kitti_eval()
    patch_kitti_eval()
    assert sum(isinstance(f, CpuRotateIouFinder) for f in sys.meta_path) == 1
    boxes = random_boxes(5, seed=5)
    result = kitti_eval_py.bev_box_overlap(boxes, boxes[:3])
    np.testing.assert_array_equal(result,
                                  rotate_iou_cpu_eval(boxes, boxes[:3]))
    if not numba_cuda_available():
        stand_in = sys.modules[ROTATE_IOU_MODULE]
        assert stand_in.rotate_iou_gpu_eval is rotate_iou_cpu_eval


@needs_no_cuda
def test_patch_after_failed_import(monkeypatch):
    """Without the hook eval.py fails as in stock mmdet3d; patching after
    mmdet3d.evaluation was imported (and failed) fixes it."""
    from numba.cuda.cudadrv.error import CudaSupportError
    monkeypatch.setattr(
        sys, 'meta_path',
        [f for f in sys.meta_path if not isinstance(f, CpuRotateIouFinder)])
    monkeypatch.delitem(sys.modules, ROTATE_IOU_MODULE, raising=False)
    boxes = random_boxes(4, seed=6)
    with pytest.raises(CudaSupportError):
        kitti_eval_py.bev_box_overlap(boxes, boxes)
    patch_kitti_eval()
    np.testing.assert_allclose(
        np.diag(kitti_eval_py.bev_box_overlap(boxes, boxes)), 1, atol=1e-6)


# --- end to end on the real KITTI frame 000008 -----------------------------


def frame_info():
    with open(FRAME_INFO, 'rb') as f:
        return pickle.load(f)['data_list'][0]


def real_bev_boxes():
    boxes = np.array([
        inst['bbox_3d'] for inst in frame_info()['instances']
        if inst['bbox_label'] >= 0
    ])
    return boxes[:, [0, 2, 3, 5, 6]].astype(np.float32)


def repeated_infos():
    data_list = []
    for idx in range(NUM_FRAMES):
        info = copy.deepcopy(frame_info())
        info['sample_idx'] = idx
        data_list.append(info)
    return dict(data_list=data_list, metainfo=dict(categories=CATEGORIES))


@pytest.fixture(scope='module')
def ann_file(tmp_path_factory):
    path = tmp_path_factory.mktemp('kitti') / 'infos.pkl'
    with open(path, 'wb') as f:
        pickle.dump(repeated_infos(), f)
    return str(path)


def ground_truth_annos():
    metric = KittiMetric(ann_file='unused')
    infos = metric.convert_annos_to_kitti_annos(repeated_infos())
    return [info['kitti_annos'] for info in infos]


def distinct_scores(num_frames, per_frame):
    return np.linspace(0.99, 0.01,
                       num_frames * per_frame).reshape(num_frames, per_frame)


def as_detections(gt_annos, shift=0.0, scale=1.0):
    """Ground-truth cars as detections, optionally moved and shrunk."""
    detections = []
    cars = [anno['name'] == 'Car' for anno in gt_annos]
    scores = distinct_scores(len(gt_annos), int(cars[0].sum()))
    for anno, is_car, frame_scores in zip(gt_annos, cars, scores):
        det = {key: value[is_car].copy() for key, value in anno.items()}
        det['location'][:, 0] += shift
        det['dimensions'] *= scale
        det['score'] = frame_scores
        # float32 like KittiMetric's, so eval.py's numba compiles only once
        for key in ('alpha', 'bbox', 'dimensions', 'location', 'rotation_y',
                    'score'):
            det[key] = det[key].astype(np.float32)
        detections.append(det)
    return detections


def car_aps(ap_dict, prefix=''):
    """``{'3D_AP40_easy_strict': ap, ...}`` of the car class."""
    prefix += 'KITTI/Car_'
    return {
        key[len(prefix):]: value
        for key, value in ap_dict.items()
        if key.startswith(prefix) and '_AOS' not in key
    }


def test_kitti_eval_ground_truth_scores_100():
    gt_annos = ground_truth_annos()
    _, ap_dict = kitti_eval(gt_annos, as_detections(gt_annos), ['Car'])
    aps = car_aps(ap_dict)
    assert len(aps) == 36  # {2D, BEV, 3D} x AP{11,40} x 3 difficulties x 2
    for key, value in aps.items():
        assert value == pytest.approx(100), key


def test_kitti_eval_shifted_predictions_score_lower():
    gt_annos = ground_truth_annos()
    _, ap_dict = kitti_eval(gt_annos,
                            as_detections(gt_annos, shift=1.0, scale=0.8),
                            ['Car'])
    aps = car_aps(ap_dict)
    for key, value in aps.items():
        if key.startswith('2D_'):  # the image boxes are unchanged
            assert value == pytest.approx(100), key
        elif 'strict' in key:
            assert value < 50, key


def lidar_predictions(shift=0.0, scale=1.0):
    """Ground-truth cars as predicted LiDAR boxes, like a detector's."""
    info = frame_info()
    cam_boxes = np.array([
        inst['bbox_3d']
        for inst in info['instances'] if inst['bbox_label'] == 2
    ],
                         dtype=np.float32)
    cam_boxes[:, 0] += shift
    cam_boxes[:, 3:6] *= scale
    lidar2cam = np.array(info['images']['CAM2']['lidar2cam'], np.float32)
    boxes = CameraInstance3DBoxes(cam_boxes).convert_to(
        Box3DMode.LIDAR, np.linalg.inv(lidar2cam))
    scores = distinct_scores(NUM_FRAMES, len(cam_boxes))
    return [
        dict(
            pred_instances_3d=dict(
                bboxes_3d=boxes.clone(),
                scores_3d=torch.from_numpy(frame_scores).float(),
                labels_3d=torch.zeros(len(cam_boxes), dtype=torch.long)),
            pred_instances=dict(),
            sample_idx=idx) for idx, frame_scores in enumerate(scores)
    ]


def run_kitti_metric(ann_file, predictions):
    MMLogger.get_instance('test_kitti_eval_cpu')
    metric = KittiMetric(ann_file=ann_file)
    metric.dataset_meta = dict(classes=['Car'])
    metric.process({}, predictions)
    return car_aps(
        metric.evaluate(len(predictions)), 'Kitti metric/pred_instances_3d/')


def test_kitti_metric_end_to_end(ann_file):
    perfect = run_kitti_metric(ann_file, lidar_predictions())
    shifted = run_kitti_metric(ann_file,
                               lidar_predictions(shift=1.0, scale=0.8))
    for kind in ('BEV', '3D'):
        for ap in ('AP11', 'AP40'):
            for difficulty in ('easy', 'moderate', 'hard'):
                key = f'{kind}_{ap}_{difficulty}_strict'
                assert perfect[key] == pytest.approx(100), key
                assert shifted[key] < 50, key


def test_bootstrap_map_is_kittimetric_and_spreads_over_frames(
        ann_file, tmp_path):
    """The bootstrap's mAP on all frames is KittiMetric's; it spreads when
    frames differ (half perfect, half shifted) and not when all are
    perfect."""
    perfect, shifted = lidar_predictions(), lidar_predictions(1.0, 0.8)
    mixed = [p if i % 2 else s
             for i, (p, s) in enumerate(zip(perfect, shifted))]
    expected = run_kitti_metric(ann_file, copy.deepcopy(mixed))
    for name, predictions in (('mixed', mixed), ('perfect', perfect)):
        with open(tmp_path / f'{name}.pkl', 'wb') as f:
            pickle.dump(predictions, f)
    mixed_boot = bootstrap_map(str(tmp_path / 'mixed.pkl'), ann_file,
                               ['Car'], replicates=3)
    assert mixed_boot['map']['3D'] == pytest.approx(
        expected['3D_AP40_moderate_strict'], abs=1e-3)
    assert mixed_boot['frames'] == NUM_FRAMES
    assert mixed_boot['std']['3D'] > 0
    perfect_boot = bootstrap_map(str(tmp_path / 'perfect.pkl'), ann_file,
                                 ['Car'], replicates=2)
    assert perfect_boot['map']['3D'] == pytest.approx(100)
    assert perfect_boot['std']['3D'] == 0
