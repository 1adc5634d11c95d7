"""Write simulated frames in KITTI's object-detection layout, and run
mmdet3d's own KITTI converter on them.

Layout (as ``tools/create_data.py kitti`` expects it)::

    out_dir/
        meta.json                    # this generator's arguments
        ImageSets/{train,val,trainval,test}.txt
        training/velodyne/000000.bin # float32 x, y, z, intensity
        training/label_2/000000.txt
        training/calib/000000.txt
        training/image_2/000000.png  # blank placeholder, KITTI's size
        testing/{velodyne,calib,image_2}/  # unlabeled, num_test frames

Train frames take ids ``0 .. num_train - 1`` and val frames the next
``num_val`` ids; ``test.txt`` lists the unlabeled ``testing/`` frames, ids
from 0 (mmdet3d's converter needs at least one). Frame ``i`` of a folder
depends only on ``(seed, folder, i)`` and the generation arguments, so the
same arguments write byte-identical files.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import os.path as osp
import shutil
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..errors import PruningInputError
from ..fileio import atomic_write, write_json
from .scene import CLASSES, SceneConfig
from .synthetic_kitti import (IMAGE_SIZE, Calibration, LidarConfig, png_bytes,
                              simulate_frame)

GENERATOR = 'rdprune_mm.datasets.synthetic_kitti'
#: Bump when the same arguments would write different files.
GENERATOR_VERSION = 1
META_FILE = 'meta.json'
_SPLIT_CODES = {'training': 0, 'testing': 1}


class DatasetDirError(PruningInputError):
    """The output folder holds something this generator must not touch."""


def frame_rng(seed: int, folder: str, index: int) -> np.random.Generator:
    """The random generator of frame ``index`` of ``training``/``testing``."""
    return np.random.default_rng([seed, _SPLIT_CODES[folder], index])


def _frame_files(out_dir: str, folder: str, index: int,
                 labeled: bool) -> Dict[str, str]:
    name = f'{index:06d}'
    files = {
        'velodyne': osp.join(out_dir, folder, 'velodyne', name + '.bin'),
        'calib': osp.join(out_dir, folder, 'calib', name + '.txt'),
        'image_2': osp.join(out_dir, folder, 'image_2', name + '.png'),
    }
    if labeled:
        files['label_2'] = osp.join(out_dir, folder, 'label_2', name + '.txt')
    return files


def _write_bytes(path: str, data: bytes) -> None:

    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(data)

    atomic_write(path, write)


def _read_meta(out_dir: str) -> Optional[dict]:
    path = osp.join(out_dir, META_FILE)
    if not osp.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _owned_paths(out_dir: str) -> List[str]:
    """What the generator and mmdet3d's converter write in ``out_dir``."""
    paths = [
        osp.join(out_dir, name)
        for name in ('training', 'testing', 'ImageSets', META_FILE)
    ]
    for pattern in ('*_infos_train.pkl', '*_infos_val.pkl',
                    '*_infos_trainval.pkl', '*_infos_test.pkl',
                    '*_dbinfos_train.pkl', '*_gt_database'):
        paths += glob.glob(osp.join(out_dir, pattern))
    return sorted(p for p in paths if osp.lexists(p))


def _remove(paths: List[str]) -> None:
    for path in paths:
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _check_out_dir(out_dir: str, args: dict, overwrite: bool) -> str:
    """Decide what to do with ``out_dir``: 'write', 'resume' or 'skip'.

    Paths of a dataset that this generator did not write (no ``meta.json``
    of it) are never removed, not even with ``overwrite``.
    """
    if not osp.isdir(out_dir):
        if osp.exists(out_dir):
            raise DatasetDirError(
                f'{out_dir} exists and is not a folder; choose another '
                '--out-dir')
        return 'write'
    meta = _read_meta(out_dir)
    ours = meta is not None and meta.get('generator') == GENERATOR
    owned = [osp.basename(p) for p in _owned_paths(out_dir)]
    if not ours:
        if owned:
            raise DatasetDirError(
                f'{out_dir} holds {", ".join(owned)} but no {META_FILE} of '
                'this generator, e.g. a real KITTI dataset, which is never '
                'replaced; choose an empty or new --out-dir')
        if os.listdir(out_dir) and not overwrite:
            raise DatasetDirError(
                f'{out_dir} is not empty and holds no {META_FILE} of this '
                'generator; choose an empty or new --out-dir, or pass '
                '--overwrite to write the dataset beside its files')
        return 'write'
    if overwrite:
        _remove(_owned_paths(out_dir))
        return 'write'
    if meta.get('args') != args or meta.get('version') != GENERATOR_VERSION:
        raise DatasetDirError(
            f'{out_dir} holds a dataset generated with other arguments '
            f'({meta.get("args")}, version {meta.get("version")}); pass '
            '--overwrite to replace it (training/, testing/, ImageSets/, '
            "meta.json and the converter's outputs) or choose another "
            '--out-dir')
    return 'skip' if meta.get('complete') else 'resume'


def _frames_complete(out_dir: str, counts: Dict[str, int]) -> bool:
    for folder, num in counts.items():
        for index in range(num):
            files = _frame_files(out_dir, folder, index, folder == 'training')
            if not all(osp.isfile(p) for p in files.values()):
                return False
    return True


def write_kitti_like_dataset(
        out_dir: str,
        num_train: int,
        num_val: int,
        seed: int = 0,
        num_test: int = 1,
        azimuth_res: float = 0.16,
        object_density: float = 1.0,
        min_points: int = 5,
        overwrite: bool = False,
        log: Optional[Callable[[str], Any]] = print) -> Dict[str, Any]:
    """Simulate LiDAR frames and write them in KITTI's layout.

    Re-running with the same arguments skips the work (an interrupted run
    resumes). A non-empty folder without this generator's ``meta.json``
    is written into only with ``overwrite``, and never if it holds dataset
    paths (``training/``, ``ImageSets/``, info files, ...) already.

    Args:
        out_dir: The dataset root.
        num_train: Frames in ``ImageSets/train.txt``.
        num_val: Frames in ``ImageSets/val.txt``.
        seed: Random seed; the same arguments give byte-identical files.
        num_test: Unlabeled frames in ``testing/`` (``test.txt``), like
            KITTI's test split. mmdet3d's converter needs at least one (it
            fails on an empty test split).
        azimuth_res: Horizontal step of the sweep in degrees. The default
            0.16 gives about 130k points per 360 degree frame and 18k in
            the camera's view, like KITTI's frames.
        object_density: Scales the number of cars, pedestrians and
            cyclists.
        min_points: Returns inside the image an object needs to be
            labeled (fewer: a DontCare region).
        overwrite: Replace a dataset of this generator written with other
            arguments, or write beside the files of a non-empty folder
            (never over a ``training/``, ``testing/``, ``ImageSets/`` or
            converter output that this generator did not write).
        log: Progress messages go here (None: silent).

    Returns:
        dict: :func:`dataset_summary` (``out_dir``, ``frames`` per split,
        ``labels`` per class, ``points_per_frame``) with ``skipped``,
        ``seconds`` and ``simulated`` (frames simulated by this call).

    Raises:
        DatasetDirError: ``out_dir`` holds something else.
    """
    if num_train < 1 or num_val < 0 or num_test < 0:
        raise PruningInputError(
            'need --num-train >= 1 and --num-val, --num-test >= 0')
    if not 0.01 <= azimuth_res <= 2.0:
        raise PruningInputError('--azimuth-res must be in [0.01, 2] degrees')
    args = dict(
        num_train=int(num_train),
        num_val=int(num_val),
        num_test=int(num_test),
        seed=int(seed),
        azimuth_res=float(azimuth_res),
        object_density=float(object_density),
        min_points=int(min_points))
    counts = {'training': num_train + num_val, 'testing': num_test}
    action = _check_out_dir(out_dir, args, overwrite)
    if action == 'skip':
        if _frames_complete(out_dir, counts):
            if log:
                log(f'{out_dir}: a dataset with these arguments exists, '
                    'skipped')
            return dict(
                dataset_summary(out_dir),
                skipped=True,
                seconds=0.0,
                simulated=0)
        action = 'resume'
    start = time.perf_counter()
    meta = dict(
        generator=GENERATOR,
        version=GENERATOR_VERSION,
        args=args,
        complete=False,
        image_size=list(IMAGE_SIZE),
        classes=list(CLASSES))
    os.makedirs(out_dir, exist_ok=True)
    write_json(osp.join(out_dir, META_FILE), meta)

    calib = Calibration()
    calib_text = calib.text().encode()
    image = png_bytes(*IMAGE_SIZE)
    lidar = LidarConfig(azimuth_res_deg=azimuth_res)
    scene_cfg = SceneConfig(object_density=object_density)
    simulated = 0
    for folder, num in counts.items():
        for index in range(num):
            labeled = folder == 'training'
            files = _frame_files(out_dir, folder, index, labeled)
            if action == 'resume' and all(
                    osp.isfile(p) for p in files.values()):
                continue
            frame = simulate_frame(
                frame_rng(seed, folder, index),
                calib,
                lidar,
                scene_cfg,
                min_points=min_points)
            _write_bytes(files['velodyne'], frame.points.tobytes())
            _write_bytes(files['calib'], calib_text)
            _write_bytes(files['image_2'], image)
            if labeled:
                _write_bytes(
                    files['label_2'],
                    ''.join(label.line() + '\n'
                            for label in frame.labels).encode())
            simulated += 1
            if log and simulated % 10 == 0:
                log(f'{simulated} frames simulated')

    image_sets = {
        'train': range(num_train),
        'val': range(num_train, num_train + num_val),
        'trainval': range(num_train + num_val),
        'test': range(num_test),
    }
    for name, ids in image_sets.items():
        _write_bytes(
            osp.join(out_dir, 'ImageSets', f'{name}.txt'),
            ''.join(f'{i:06d}\n' for i in ids).encode())
    seconds = time.perf_counter() - start
    meta['complete'] = True
    write_json(osp.join(out_dir, META_FILE), meta)
    summary = dict(
        dataset_summary(out_dir),
        skipped=False,
        seconds=seconds,
        simulated=simulated)
    if log:
        log(f'{out_dir}: {simulated} frames simulated in {seconds:.1f} s '
            f'({seconds / max(simulated, 1):.2f} s/frame); labels '
            f'{summary["labels"]}; {summary["points_per_frame"]:.0f} points '
            'per frame')
    return summary


def dataset_summary(out_dir: str) -> Dict[str, Any]:
    """Frames per split, labels per class and mean points per frame of a
    dataset in KITTI's layout."""
    frames = {}
    for name in ('train', 'val', 'test'):
        path = osp.join(out_dir, 'ImageSets', f'{name}.txt')
        with open(path) as f:
            frames[name] = len(f.read().split())
    labels = {name: 0 for name in CLASSES + ('DontCare', )}
    sizes = []
    for path in sorted(
            glob.glob(osp.join(out_dir, 'training', 'label_2', '*.txt'))):
        with open(path) as f:
            for line in f:
                name = line.split(' ', 1)[0]
                labels[name] = labels.get(name, 0) + 1
    for path in glob.glob(osp.join(out_dir, 'training', 'velodyne', '*.bin')):
        sizes.append(osp.getsize(path) // 16)
    return dict(
        out_dir=out_dir,
        frames=frames,
        labels=labels,
        points_per_frame=float(np.mean(sizes)) if sizes else 0.0)


# --- mmdet3d's converter ------------------------------------------------


def _converter_modules() -> types.SimpleNamespace:
    """mmdet3d's ``tools/dataset_converters`` modules, shipped in its
    package as ``mmdet3d/.mim/tools`` (a namespace package ``tools``)."""
    import mmdet3d
    mim_root = osp.join(osp.dirname(mmdet3d.__file__), '.mim')
    added = mim_root not in sys.path
    if added:
        sys.path.append(mim_root)
    try:
        from tools.dataset_converters import create_gt_database
        from tools.dataset_converters import kitti_converter
        from tools.dataset_converters import update_infos_to_v2
    except ImportError as error:
        raise PruningInputError(
            f"cannot import mmdet3d's KITTI converter from {mim_root}/tools "
            f'({error}); a package named "tools" elsewhere on sys.path may '
            'shadow it') from error
    finally:
        if added:
            sys.path.remove(mim_root)
    return types.SimpleNamespace(
        kitti=kitti_converter,
        gt_database=create_gt_database,
        update=update_infos_to_v2)


@contextlib.contextmanager
def _no_overwrite_pause(update_module: types.ModuleType):
    """mmdet3d's ``update_kitti_infos`` sleeps 5 s before it rewrites an
    info file in place (a warning for interactive use); skip the pause."""
    original = update_module.time
    update_module.time = types.SimpleNamespace(sleep=lambda seconds: None)
    try:
        yield
    finally:
        update_module.time = original


def create_kitti_infos(root: str,
                       info_prefix: str = 'kitti') -> Dict[str, str]:
    """Run mmdet3d's KITTI converter on ``root``, in this process.

    The steps of ``kitti_data_prep`` in mmdet3d's ``tools/create_data.py``
    (that script parses the command line on import): info files,
    ``training/velodyne_reduced`` (points in the camera's view), the 1.x
    info update, and the ground-truth database from the train split.
    Nothing of the converter is changed; its 5 s pause before rewriting
    the info files in place is skipped.

    Args:
        root: A dataset root in KITTI's layout.
        info_prefix: Prefix of the output files (``--extra-tag``).

    Returns:
        dict: Paths of the train/val/trainval/test infos, the database
        infos and the database folder.
    """
    from mmdet3d.utils import register_all_modules
    from mmengine.registry import DefaultScope

    test_list = osp.join(root, 'ImageSets', 'test.txt')
    if not osp.isfile(test_list):
        raise PruningInputError(
            f'{root} has no ImageSets/test.txt; write the dataset first')
    with open(test_list) as f:
        if not f.read().split():
            raise PruningInputError(
                f"{test_list} is empty, and mmdet3d's converter fails on an "
                'empty test split; write the dataset with --num-test 1 or '
                'more')
    register_all_modules(init_default_scope=False)
    conv = _converter_modules()
    outputs = {
        split: osp.join(root, f'{info_prefix}_infos_{split}.pkl')
        for split in ('train', 'val', 'trainval', 'test')
    }
    with DefaultScope.overwrite_default_scope('mmdet3d'), \
            _no_overwrite_pause(conv.update):
        conv.kitti.create_kitti_info_file(root, info_prefix, False)
        conv.kitti.create_reduced_point_cloud(root, info_prefix)
        for path in outputs.values():
            conv.update.update_pkl_infos('kitti', out_dir=root, pkl_path=path)
        conv.gt_database.create_groundtruth_database(
            'KittiDataset',
            root,
            info_prefix,
            f'{info_prefix}_infos_train.pkl',
            relative_path=False,
            mask_anno_path='instances_train.json',
            with_mask=False)
    meta = _read_meta(root)
    if meta is not None and meta.get('generator') == GENERATOR:
        meta['infos'] = sorted(set(meta.get('infos', [])) | {info_prefix})
        write_json(osp.join(root, META_FILE), meta)
    outputs['dbinfos'] = osp.join(root, f'{info_prefix}_dbinfos_train.pkl')
    outputs['gt_database'] = osp.join(root, f'{info_prefix}_gt_database')
    return outputs


def infos_exist(root: str, info_prefix: str = 'kitti') -> bool:
    """Whether :func:`create_kitti_infos` finished on this dataset."""
    meta = _read_meta(root) or {}
    return info_prefix in meta.get('infos', []) and all(
        osp.exists(osp.join(root, f'{info_prefix}_{name}'))
        for name in ('infos_train.pkl', 'infos_val.pkl', 'infos_trainval.pkl',
                     'infos_test.pkl', 'dbinfos_train.pkl', 'gt_database'))
