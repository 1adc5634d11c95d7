"""The simulated KITTI-layout dataset, read by mmdet3d's own converter,
KittiDataset (with the shipped 3-class pipeline) and KittiMetric."""
import copy
import filecmp
import os
import os.path as osp
import pickle

import numpy as np
import pytest
import mmdet3d
import torch
from conftest import LIDAR, load_tool
from mmdet3d.evaluation import KittiMetric
from mmdet3d.structures import (Box3DMode, CameraInstance3DBoxes,
                                LiDARInstance3DBoxes)
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

import rdprune_mm  # noqa: F401  (CPU kernels for mmcv's points_in_boxes)
from rdprune_mm import PruningInputError
from rdprune_mm.datasets import (Calibration, DatasetDirError, Primitives,
                                 SceneConfig, create_kitti_infos, frame_rng,
                                 scan_scene, simulate_frame,
                                 write_kitti_like_dataset)
from rdprune_mm.datasets.scene import Scene, SceneObject
from rdprune_mm.datasets.synthetic_kitti import in_image

CLASSES = ['Pedestrian', 'Cyclist', 'Car']
NUM_TRAIN, NUM_VAL, SEED = 3, 2, 0
KITTI_3CLASS = osp.join(osp.dirname(mmdet3d.__file__), '.mim', 'configs',
                        '_base_', 'datasets', 'kitti-3d-3class.py')


def files_of(root):
    return sorted(
        osp.relpath(osp.join(d, f), root) for d, _, names in os.walk(root)
        for f in names)


def read_labels(path):
    """An independent parse of a KITTI label file."""
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    return [(row[0], [float(v) for v in row[1:]]) for row in rows]


def lidar_boxes(info):
    """LiDAR boxes of an info's labeled instances, as KittiDataset makes
    them (camera box -> LiDAR with the inverse of lidar2cam)."""
    inst = [i for i in info['instances'] if i['bbox_label_3d'] >= 0]
    cam = np.array([i['bbox_3d'] for i in inst], np.float32).reshape(-1, 7)
    lidar2cam = np.array(info['images']['CAM2']['lidar2cam'])
    return CameraInstance3DBoxes(cam).convert_to(Box3DMode.LIDAR,
                                                 np.linalg.inv(lidar2cam))


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    """3 train + 2 val (+ 1 test) frames and mmdet3d's converter outputs."""
    root = str(tmp_path_factory.mktemp('kitti_like'))
    write_kitti_like_dataset(
        root, NUM_TRAIN, NUM_VAL, seed=SEED, num_test=1, log=None)
    create_kitti_infos(root)
    return root


def load_infos(root, split):
    with open(osp.join(root, f'kitti_infos_{split}.pkl'), 'rb') as f:
        return pickle.load(f)


# --- files, determinism, safe writing -------------------------------------


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    paths = [str(tmp_path / name) for name in ('a', 'b', 'c')]
    for path, seed in zip(paths, (7, 7, 8)):
        write_kitti_like_dataset(path, 1, 1, seed=seed, num_test=1, log=None)
    names = files_of(paths[0])
    assert names == files_of(paths[1]) == files_of(paths[2])
    assert 'training/velodyne/000001.bin' in names
    assert 'testing/velodyne/000000.bin' in names
    assert 'testing/label_2/000000.txt' not in names
    _, mismatch, errors = filecmp.cmpfiles(
        paths[0], paths[1], names, shallow=False)
    assert mismatch == [] and errors == []
    _, mismatch, _ = filecmp.cmpfiles(paths[0], paths[2], names, shallow=False)
    assert {
        'training/velodyne/000000.bin', 'training/label_2/000000.txt',
        'testing/velodyne/000000.bin', 'meta.json'
    } <= set(mismatch)


def test_layout_and_formats(dataset):
    with open(osp.join(dataset, 'ImageSets', 'train.txt')) as f:
        assert f.read().split() == ['000000', '000001', '000002']
    with open(osp.join(dataset, 'ImageSets', 'val.txt')) as f:
        assert f.read().split() == ['000003', '000004']
    with open(osp.join(dataset, 'ImageSets', 'trainval.txt')) as f:
        assert len(f.read().split()) == NUM_TRAIN + NUM_VAL
    from PIL import Image
    with Image.open(osp.join(dataset, 'training', 'image_2',
                             '000000.png')) as image:
        assert image.size == (1242, 375) and image.mode == 'RGB'
    points = np.fromfile(
        osp.join(dataset, 'training', 'velodyne', '000000.bin'),
        np.float32).reshape(-1, 4)
    assert 80_000 < len(points) < 200_000  # a full sweep, KITTI-like
    assert points[:, 3].min() >= 0 and points[:, 3].max() <= 1
    dist = np.linalg.norm(points[:, :3], axis=1)
    assert dist.min() > 2.4 and dist.max() <= 120.1
    assert (points[:, 0] < -10).sum() > 10_000  # 360 degrees, not just FOV
    for name, values in read_labels(
            osp.join(dataset, 'training', 'label_2', '000000.txt')):
        assert len(values) == 14
        assert name in CLASSES + ['DontCare']


def test_calibration_is_kittis():
    with open(osp.join(LIDAR, '000008.pkl'), 'rb') as f:
        info = pickle.load(f)['data_list'][0]
    calib = Calibration()
    for cam in ('CAM0', 'CAM1', 'CAM2', 'CAM3'):
        np.testing.assert_allclose(
            calib.matrix('P' + cam[-1]),
            info['images'][cam]['cam2img'],
            rtol=1e-6)
    np.testing.assert_allclose(
        calib.lidar2cam, info['images']['CAM2']['lidar2cam'], atol=1e-6)
    np.testing.assert_allclose(
        calib.matrix('Tr_velo_to_cam'),
        info['lidar_points']['Tr_velo_to_cam'],
        atol=1e-7)
    np.testing.assert_allclose(
        calib.matrix('Tr_imu_to_velo'),
        info['lidar_points']['Tr_imu_to_velo'],
        atol=1e-6)


def test_refuses_foreign_folders_skips_and_resumes(tmp_path):
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    (foreign / 'keep.txt').write_text('not a dataset')
    with pytest.raises(DatasetDirError, match='--overwrite'):
        write_kitti_like_dataset(str(foreign), 1, 0, log=None)
    write_kitti_like_dataset(
        str(foreign), 1, 0, num_test=0, overwrite=True, log=None)
    assert (foreign / 'keep.txt').read_text() == 'not a dataset'
    assert (foreign / 'training' / 'velodyne' / '000000.bin').is_file()
    real = tmp_path / 'real_kitti'  # never replaced, even with overwrite
    (real / 'training' / 'velodyne').mkdir(parents=True)
    with pytest.raises(DatasetDirError, match='never replaced'):
        write_kitti_like_dataset(str(real), 1, 0, overwrite=True, log=None)
    assert (real / 'training' / 'velodyne').is_dir()

    root = str(tmp_path / 'data')
    first = write_kitti_like_dataset(root, 2, 1, seed=3, log=None)
    assert not first['skipped'] and first['simulated'] == 4
    frame = osp.join(root, 'training', 'velodyne', '000001.bin')
    with open(frame, 'rb') as f:
        original = f.read()
    again = write_kitti_like_dataset(root, 2, 1, seed=3, log=None)
    assert again['skipped'] and again['simulated'] == 0
    with pytest.raises(DatasetDirError, match='other arguments'):
        write_kitti_like_dataset(root, 2, 1, seed=4, log=None)
    replaced = write_kitti_like_dataset(
        root, 1, 1, seed=4, overwrite=True, log=None)
    assert replaced['frames'] == dict(train=1, val=1, test=1)
    assert not osp.exists(osp.join(root, 'training', 'velodyne', '000002.bin'))
    write_kitti_like_dataset(root, 2, 1, seed=3, overwrite=True, log=None)
    os.remove(frame)  # an interrupted run: only the missing frame is redone
    resumed = write_kitti_like_dataset(root, 2, 1, seed=3, log=None)
    assert resumed['simulated'] == 1
    with open(frame, 'rb') as f:
        assert f.read() == original


def test_tool_writes_and_reports_bad_folders(tmp_path, capsys):
    tool = load_tool('make_kitti_like_data')
    out = tmp_path / 'tool'
    assert tool.main([
        '--out-dir',
        str(out), '--num-train', '1', '--num-val', '1', '--num-test', '1',
        '--azimuth-res', '0.4'
    ]) == 0
    assert (out / 'training' / 'label_2' / '000001.txt').is_file()
    points = np.fromfile(out / 'training' / 'velodyne' / '000000.bin',
                         np.float32).reshape(-1, 4)
    assert len(points) < 70_000  # the coarser sweep
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'x').write_text('')
    assert tool.main(['--out-dir', str(tmp_path / 'busy')]) == 2
    assert '--overwrite' in capsys.readouterr().err


# --- mmdet3d's converter -----------------------------------------------------


def test_converter_needs_a_test_frame(tmp_path):
    root = str(tmp_path / 'no_test')
    write_kitti_like_dataset(root, 1, 0, num_test=0, log=None)
    with pytest.raises(PruningInputError, match='--num-test 1'):
        create_kitti_infos(root)
    assert not osp.exists(osp.join(root, 'kitti_infos_train.pkl'))


def test_converter_infos_match_labels(dataset):
    num_labeled = {name: 0 for name in CLASSES}
    for split, ids in (('train', range(NUM_TRAIN)),
                       ('val', range(NUM_TRAIN, NUM_TRAIN + NUM_VAL))):
        infos = load_infos(dataset, split)
        assert [i['sample_idx'] for i in infos['data_list']] == list(ids)
        for info in infos['data_list']:
            labels = read_labels(
                osp.join(dataset, 'training', 'label_2',
                         f"{info['sample_idx']:06d}.txt"))
            assert len(info['instances']) == len(labels)
            for inst, (name, values) in zip(info['instances'], labels):
                if name == 'DontCare':
                    assert inst['bbox_label_3d'] == -1
                    continue
                num_labeled[name] += 1
                assert CLASSES[inst['bbox_label_3d']] == name
                h, w, length = values[7:10]
                np.testing.assert_allclose(
                    inst['bbox_3d'],
                    values[10:13] + [length, h, w, values[13]],
                    atol=1e-6)
                np.testing.assert_allclose(inst['bbox'], values[3:7])
                assert inst['num_lidar_pts'] >= 5
            assert info['images']['CAM2']['height'] == 375
            assert info['images']['CAM2']['width'] == 1242
            np.testing.assert_allclose(
                info['images']['CAM2']['lidar2cam'],
                Calibration().lidar2cam,
                atol=1e-7)
    assert all(num > 0 for num in num_labeled.values()), num_labeled
    assert len(load_infos(dataset, 'test')['data_list']) == 1


def test_gt_database_holds_the_objects_points(dataset):
    with open(osp.join(dataset, 'kitti_dbinfos_train.pkl'), 'rb') as f:
        db_infos = pickle.load(f)
    train = load_infos(dataset, 'train')['data_list']
    for name in CLASSES:
        num_train = sum(i['bbox_label_3d'] == CLASSES.index(name)
                        for info in train for i in info['instances'])
        assert len(db_infos[name]) == num_train > 0
    for entries in db_infos.values():
        for entry in entries:
            points = np.fromfile(osp.join(dataset, entry['path']),
                                 np.float32).reshape(-1, 4)
            assert len(points) == entry['num_points_in_gt'] >= 5
            box = entry['box3d_lidar'].copy()
            points[:, :3] += box[:3]
            inside = LiDARInstance3DBoxes(torch.from_numpy(
                box[None]).float()).points_in_boxes_all(
                    torch.from_numpy(points[:, :3]))
            assert bool(inside.all())


def test_label_boxes_hold_their_objects_points(dataset):
    """Camera-frame labels -> LiDAR boxes (mmdet3d's round trip) enclose
    every return of their object, and the points are the files'."""
    infos = load_infos(dataset, 'trainval')['data_list']
    for info in infos:
        idx = info['sample_idx']
        frame = simulate_frame(frame_rng(SEED, 'training', idx))
        path = osp.join(dataset, 'training', 'velodyne', f'{idx:06d}.bin')
        with open(path, 'rb') as f:
            assert f.read() == frame.points.tobytes()
        boxes = lidar_boxes(info)
        objects = [
            label.object_index for label in frame.labels
            if label.name != 'DontCare'
        ]
        assert len(objects) == len(boxes)
        inside = boxes.points_in_boxes_all(
            torch.from_numpy(frame.points[:, :3])).numpy().astype(bool)
        for column, obj in enumerate(objects):
            own = frame.source == obj
            assert own.sum() >= 5
            assert inside[own, column].all()
            # only the ground (or sidewalk) under the object intrudes
            others = inside[:, column] & ~own
            bottom = float(boxes.tensor[column, 2])
            assert (frame.points[others, 2] < bottom + 0.1).all()


def test_kitti_dataset_train_pipeline_with_object_sample(dataset):
    init_default_scope('mmdet3d')
    from mmdet3d.registry import DATASETS
    cfg = Config.fromfile(KITTI_3CLASS)
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset.dataset)
    dataset_cfg.data_root = dataset
    sample = [t for t in dataset_cfg.pipeline if t.type == 'ObjectSample'][0]
    sample.db_sampler.data_root = dataset
    sample.db_sampler.info_path = osp.join(dataset, 'kitti_dbinfos_train.pkl')
    full_pipeline = dataset_cfg.pipeline
    upto_sample = full_pipeline[:full_pipeline.index(sample) + 1]

    np.random.seed(0)
    dataset_cfg.pipeline = upto_sample
    kitti = DATASETS.build(dataset_cfg)
    assert list(kitti.metainfo['classes']) == CLASSES
    num_sampled = 0
    for index in range(len(kitti)):
        info = kitti.get_data_info(index)
        num_gt = sum(i['bbox_label_3d'] >= 0 for i in info['instances'])
        item = kitti.pipeline(info)
        boxes = item['gt_bboxes_3d']
        num_sampled += len(boxes) - num_gt
        counts = boxes.points_in_boxes_all(item['points'].tensor[:, :3]).sum(0)
        assert int(counts.min()) >= 5, counts
    assert num_sampled > 0  # ObjectSample pasted database objects

    dataset_cfg.pipeline = full_pipeline
    kitti = DATASETS.build(dataset_cfg)
    item = kitti[0]
    gt = item['data_samples'].gt_instances_3d
    assert len(gt.bboxes_3d) > 0 and item['inputs']['points'].shape[1] == 4
    assert set(gt.labels_3d.tolist()) <= {0, 1, 2}


def test_kitti_metric_ground_truth_scores_100(dataset, tmp_path):
    """Ground truth as predictions: the simulated objects' LiDAR boxes,
    val frames repeated so that every class has >= 41 ground truths."""
    val = load_infos(dataset, 'val')
    data_list, predictions = [], []
    boxes_of = {}
    for info in val['data_list']:
        frame = simulate_frame(frame_rng(SEED, 'training', info['sample_idx']))
        labeled = [l for l in frame.labels if l.name != 'DontCare']
        boxes_of[info['sample_idx']] = (np.array([
            frame.scene.objects[l.object_index].box for l in labeled
        ]), [CLASSES.index(l.name) for l in labeled])
    for repeat in range(41):
        for info in val['data_list']:
            boxes, labels = boxes_of[info['sample_idx']]
            info = copy.deepcopy(info)
            info['sample_idx'] = len(data_list)
            data_list.append(info)
            predictions.append(
                dict(
                    pred_instances_3d=dict(
                        bboxes_3d=LiDARInstance3DBoxes(
                            torch.from_numpy(boxes).float()),
                        scores_3d=torch.linspace(0.9, 0.1, len(labels)),
                        labels_3d=torch.tensor(labels)),
                    pred_instances=dict(),
                    sample_idx=info['sample_idx']))
    ann_file = str(tmp_path / 'val_repeated.pkl')
    with open(ann_file, 'wb') as f:
        pickle.dump(dict(metainfo=val['metainfo'], data_list=data_list), f)
    MMLogger.get_instance('test_synthetic_kitti')
    metric = KittiMetric(ann_file=ann_file)
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, predictions)
    results = metric.evaluate(len(predictions))
    difficulty = {name: [] for name in CLASSES}
    for info in val['data_list']:
        for inst in info['instances']:
            if inst['bbox_label_3d'] >= 0:
                difficulty[CLASSES[inst['bbox_label_3d']]].append(
                    inst['difficulty'])
    checked = 0
    for name, levels in difficulty.items():
        for level, key in enumerate(('easy', 'moderate', 'hard')):
            if not any(0 <= d <= level for d in levels):
                continue
            for kind in ('BEV', '3D'):
                ap = results['Kitti metric/pred_instances_3d/KITTI/'
                             f'{name}_{kind}_AP40_{key}_strict']
                assert ap == pytest.approx(100), (name, kind, key)
                checked += 1
    assert checked >= 2 * 3 * 2  # at least two classes at every difficulty


# --- sensor geometry ------------------------------------------------------


def test_ground_density_falls_with_range():
    frame = simulate_frame(frame_rng(SEED, 'training', 0))
    ground = frame.points[frame.source == -1]
    dist = np.hypot(ground[:, 0], ground[:, 1])
    azimuth = np.degrees(np.arctan2(ground[:, 1], ground[:, 0]))
    ahead = np.abs(azimuth) < 15

    def density(low, high):
        area = np.radians(30) / 2 * (high**2 - low**2)
        return ((dist >= low) & (dist < high) & ahead).sum() / area

    near, far = density(8, 12), density(36, 44)
    assert near > 5 * far > 0
    # the sensor is 1.73 m above the ground
    close = ground[(dist > 5) & (dist < 10)]
    assert np.median(close[:, 2]) == pytest.approx(-1.73, abs=0.1)


def car_scene(xs):
    """Cars along the x axis (ego lane), nothing else but flat ground."""
    objects = [
        SceneObject('Car', np.array([x, 0.0, -1.73, 4.0, 1.7, 1.5, 0.0]), 0.3)
        for x in xs
    ]
    return Scene(
        ground=(-1.73, 0.0, 0.0),
        clutter=Primitives(),
        objects=objects,
        heading=0.0)


def test_occluded_objects_get_fewer_points():
    alone = scan_scene(car_scene([25.0]), np.random.default_rng(0))
    behind = scan_scene(car_scene([12.0, 25.0]), np.random.default_rng(0))
    assert alone.num_points_in_fov[0] > 3 * behind.num_points_in_fov[1] > 0
    assert alone.visible_fraction[0] == pytest.approx(1.0)
    assert behind.visible_fraction[0] == pytest.approx(1.0)
    assert behind.visible_fraction[1] < 0.4
    occluded = {l.object_index: l.occluded for l in behind.labels}
    assert occluded[0] == 0 and occluded.get(1, 2) == 2
    assert [l.occluded for l in alone.labels] == [0]


def test_label_fields_follow_kitti():
    frame = scan_scene(car_scene([15.0]), np.random.default_rng(0))
    (label, ) = frame.labels
    x, y, z = label.location
    # the box's bottom center, 15 m ahead and 1.73 m below the sensor, in
    # rectified camera coordinates
    expected = Calibration().lidar2cam @ [15.0, 0.0, -1.73, 1.0]
    np.testing.assert_allclose(label.location, expected[:3], atol=0.0051)
    assert 14 < z < 15 and 1.7 < y < 2.0 and abs(x) < 0.1
    np.testing.assert_allclose(label.dimensions_hwl, [1.5, 1.7, 4.0])
    assert label.rotation_y == pytest.approx(-np.pi / 2, abs=0.01)
    assert label.alpha == pytest.approx(
        label.rotation_y - np.arctan2(x, z), abs=0.01)
    assert label.truncated == 0
    x1, y1, x2, y2 = label.bbox
    center = Calibration().cam2img @ [x, y - 0.75, z, 1.0]
    assert x1 < center[0] / center[2] < x2 and y1 < center[1] / center[2] < y2
    # P2's focal length is 721.5 px; the car's near face is 2 m closer
    assert y2 - y1 == pytest.approx(721.5 * 1.5 / (z - 2.0), rel=0.1)
    # a car beside the camera is cut by the image border
    side = scan_scene(car_scene([4.5]), np.random.default_rng(0))
    assert side.labels and side.labels[0].truncated > 0.2
    assert in_image(side.points, Calibration()).any()


def test_object_density_scales_the_scene():
    sparse = SceneConfig(object_density=0.3)
    dense = SceneConfig(object_density=2.0)
    num_sparse = sum(
        len(
            simulate_frame(frame_rng(1, 'training', i),
                           scene_cfg=sparse).scene.objects) for i in range(2))
    num_dense = sum(
        len(
            simulate_frame(frame_rng(1, 'training', i),
                           scene_cfg=dense).scene.objects) for i in range(2))
    assert num_dense > 2 * num_sparse
