"""Calibration batches: a few frames, preprocessed once, on the model's device.

Two sources, chosen by the ``calibration`` dict of a config:

* ``dict(dataloader='val_dataloader', num_samples=1, dataset=dict(...))``:
  the config's own dataloader (its mmdet3d dataset and pipeline), with the
  dataset fields in ``dataset`` overridden (e.g. ``data_root``, ``ann_file``);
* ``dict(frames=['a.bin', 'b.png'])``: files run through the config's test
  pipeline, as mmdet3d's and mmdet's inference APIs do.
"""
from __future__ import annotations

import copy
import math
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np
from mmengine.config import Config, ConfigDict
from mmengine.dataset import Compose, pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import DATA_SAMPLERS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Sampler

from .errors import PruningInputError


@DATA_SAMPLERS.register_module()
class SameFramesSampler(Sampler):
    """Every sample of the dataset in order, on every rank.

    mmengine's ``DefaultSampler`` gives each rank of a distributed run its
    own share of the samples; the calibration must see the same frames on
    every rank, or the ranks measure different curves.

    Args:
        dataset: The dataset.
        seed: Ignored (the Runner passes one to every sampler).
    """

    def __init__(self, dataset, seed: Optional[int] = None) -> None:
        self.size = len(dataset)

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


def _preprocess(model: nn.Module, batches) -> List[dict]:
    return [model.data_preprocessor(batch, False) for batch in batches]


def _check_ann_file(dataset_cfg: dict) -> None:
    ann_file = dataset_cfg.get('ann_file')
    if not ann_file:
        return
    path = osp.join(dataset_cfg.get('data_root') or '', ann_file)
    if not osp.isfile(path):
        raise PruningInputError(
            f'calibration annotation file {path} does not exist; fix '
            'calibration.dataset.data_root / ann_file or use '
            "calibration.frames=['<frame file>', ...]")


def dataloader_batches(cfg: Config,
                       dataloader: str = 'val_dataloader',
                       dataset: Optional[dict] = None,
                       num_samples: int = 1,
                       skip_transforms: Sequence[str] = ()) -> List[dict]:
    """The first samples of one of the config's dataloaders, one per batch.

    Args:
        cfg: The full config.
        dataloader: Which dataloader, e.g. ``'train_dataloader'``.
        dataset: Dataset fields to override (``data_root``, ``ann_file``,
            ...). Dataset wrappers (CBGS, repeat) are dropped: samples come
            from the wrapped dataset, in its order.
        num_samples: How many samples to take, in order.
        skip_transforms: Pipeline transform types to drop, e.g.
            ``('ObjectSample', )`` where no ground-truth database exists.

    Returns:
        list[dict]: Collated batches as the dataloader yields them, before
        the model's data preprocessor; the same on every rank
        (:class:`SameFramesSampler`).
    """
    if num_samples < 1:
        raise PruningInputError(
            f'calibration.num_samples={num_samples} makes the calibration '
            'set empty; set it to 1 or more')
    if dataloader not in cfg:
        raise PruningInputError(
            f'the config has no {dataloader} to calibrate on; set '
            'calibration.dataloader or calibration.frames')
    loader_cfg = copy.deepcopy(cfg[dataloader])
    dataset_cfg = loader_cfg['dataset']
    while 'dataset' in dataset_cfg and 'pipeline' not in dataset_cfg:
        dataset_cfg = dataset_cfg['dataset']
    dataset_cfg.update(dataset or {})
    loader_cfg['dataset'] = dataset_cfg
    if skip_transforms:
        dataset_cfg['pipeline'] = [
            t for t in dataset_cfg['pipeline']
            if t['type'].split('.')[-1] not in skip_transforms
        ]
    _check_ann_file(dataset_cfg)
    loader_cfg.pop('sampler', None)  # update() would merge its keys
    loader_cfg.update(
        batch_size=1,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type=SameFramesSampler))
    loader = Runner.build_dataloader(loader_cfg)
    batches = []
    for batch in loader:
        if len(batches) >= num_samples:
            break
        batches.append(batch)
    return batches


def _frame_input(path: str, first_transform: str, cfg: Config) -> dict:
    if 'Points' in first_transform:
        from mmdet3d.structures import get_box_type
        box_type = cfg.test_dataloader.dataset.get('box_type_3d', 'LiDAR')
        box_type_3d, box_mode_3d = get_box_type(box_type)
        return dict(
            lidar_points=dict(lidar_path=path),
            timestamp=1,
            box_type_3d=box_type_3d,
            box_mode_3d=box_mode_3d)
    return dict(img_path=path, img_id=0)


def _scan_jump(values: np.ndarray, dim: int) -> float:
    """Median distance between consecutive points over their median range
    when ``values`` are read with ``dim`` features per point: small for
    the right ``dim`` (a scan visits neighbours in turn), about 1 for a
    wrong one (the columns are mixed)."""
    points = values.reshape(-1, dim)[:, :3].astype(np.float64)
    if len(points) < 2 or not np.isfinite(points).all():
        return math.inf
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    scale = np.median(np.linalg.norm(points, axis=1)) or 1.0
    return float(np.median(steps) / scale)


def check_point_file(path: str, load_dim: int) -> None:
    """Refuse a point-cloud file that is not float32 points of
    ``load_dim`` features (its size, or the continuity of its scan, says
    so).

    Raises:
        PruningInputError: Naming the file and the ``load_dim`` it seems to
            have.
    """
    values = np.fromfile(path, dtype=np.float32)
    fits = [dim for dim in range(3, 9) if values.size % dim == 0]
    if values.size % load_dim:
        raise PruningInputError(
            f'{path} holds {values.size} floats, not a whole number of '
            f'points of load_dim={load_dim} features (it fits {fits}); give '
            "a frame of this dataset's format or fix LoadPointsFromFile's "
            'load_dim')
    if _scan_jump(values, load_dim) <= 0.5:
        return
    likely = [dim for dim in fits if _scan_jump(values, dim) < 0.25]
    if likely:
        raise PruningInputError(
            f'{path} reads as points of {likely[0]} features, not '
            f"load_dim={load_dim}: read with {load_dim} the points' "
            'coordinates are mixed up; give a frame of this dataset\'s '
            "format or fix LoadPointsFromFile's load_dim")


def _frame_batches(cfg: Config, model: nn.Module,
                   frames: Sequence[str]) -> List[dict]:
    missing = [path for path in frames if not osp.isfile(path)]
    if missing:
        raise PruningInputError(
            f'calibration frame(s) not found: {missing}; fix '
            'calibration.frames')
    loader = cfg.test_dataloader.dataset.pipeline[0]
    if loader['type'].split('.')[-1] == 'LoadPointsFromFile':
        for path in frames:
            check_point_file(path, int(loader.get('load_dim', 6)))
    pipeline_cfg = [
        transform for transform in copy.deepcopy(
            cfg.test_dataloader.dataset.pipeline)
        if not transform['type'].split('.')[-1].startswith('LoadAnnotations')
    ]
    pipeline = Compose(pipeline_cfg)
    first = pipeline_cfg[0]['type']
    samples = [
        pipeline(_frame_input(path, first, cfg)) for path in frames
    ]
    return _preprocess(model, [pseudo_collate([s]) for s in samples])


def calibration_batches(cfg: Config, model: nn.Module,
                        calibration: dict | ConfigDict) -> List[dict]:
    """Build the preprocessed calibration batches, one frame per batch.

    Args:
        cfg: The full config (its dataloaders and test pipeline are used).
        model: The detector; its data preprocessor prepares each batch on
            the model's device.
        calibration: The ``calibration`` dict of the config.

    Returns:
        list[dict]: Preprocessed batches, ready for
        ``model(**batch, mode='predict')``.

    Raises:
        PruningInputError: If the source is missing or yields no frame.
    """
    frames = calibration.get('frames')
    if frames:
        batches = _frame_batches(cfg, model, frames)
    else:
        batches = _preprocess(
            model,
            dataloader_batches(
                cfg, calibration.get('dataloader', 'val_dataloader'),
                calibration.get('dataset'), calibration.get('num_samples', 1),
                calibration.get('skip_transforms', ())))
    if not batches:
        raise PruningInputError(
            'the calibration set is empty; give calibration.frames or a '
            'calibration.dataset with at least one sample')
    return batches


def compensation_batches(cfg: Config, model: nn.Module,
                         calibration: dict | ConfigDict,
                         num_samples: Optional[int]) -> Optional[List[dict]]:
    """The frames of ``pruner.compensate.num_samples``: the first
    ``num_samples`` of the calibration's dataloader, so the calibration
    frames and the ones after them (None for None: the calibration
    frames themselves; callers pass
    :attr:`~rdprune_mm.compensation.Compensation.frames_wanted`, None
    when the compensate stage is off, so that no frame is loaded for it).

    Raises:
        PruningInputError: If the calibration lists its frames
            (``calibration.frames``), which leaves none to add.
    """
    if num_samples is None:
        return None
    if calibration.get('frames'):
        raise PruningInputError(
            'pruner.compensate.num_samples takes frames from the '
            'calibration dataloader, but calibration.frames lists them; '
            'list every frame there and leave num_samples out')
    batches = calibration_batches(cfg, model, {
        **calibration, 'num_samples': num_samples
    })
    if len(batches) < num_samples:
        MMLogger.get_current_instance().warning(
            f'pruner.compensate.num_samples={num_samples}, but the '
            f'calibration dataset has {len(batches)} frame(s); compensating '
            'on those')
    return batches
