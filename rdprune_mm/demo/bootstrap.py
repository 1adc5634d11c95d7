"""How much of an mAP is the choice of val frames: the bootstrap over
frames of KittiMetric's moderate AP40, from an evaluation's dumped
predictions."""
from __future__ import annotations

import pickle
from typing import Dict, List, Sequence

import numpy as np
from mmdet3d.evaluation import kitti_eval
from mmdet3d.evaluation.metrics import KittiMetric
from mmengine.fileio import load
from mmengine.logging import MMLogger

from ..progress import progress_bar


def kitti_annos(predictions: str, ann_file: str,
                classes: Sequence[str]) -> tuple:
    """Ground truth and detections per frame in KITTI's format, as
    KittiMetric makes them from ``DumpResults``' file.

    Args:
        predictions: The dumped predictions (a pickle of data samples).
        ann_file: The info file the predictions were evaluated on.
        classes: The dataset's classes in label order (its ``metainfo``).

    Returns:
        tuple: ``(gt_annos, det_annos)``, one entry per frame.
    """
    with open(predictions, 'rb') as f:
        samples = pickle.load(f)
    metric = KittiMetric(ann_file=ann_file)
    metric.dataset_meta = dict(classes=list(classes))
    metric.process({}, samples)
    metric.data_infos = metric.convert_annos_to_kitti_annos(load(ann_file))
    results, tmp_dir = metric.format_results(metric.results,
                                             classes=list(classes))
    if tmp_dir is not None:
        tmp_dir.cleanup()
    gt = [
        metric.data_infos[r['sample_idx']]['kitti_annos']
        for r in metric.results
    ]
    return gt, results['pred_instances_3d']


def moderate_map(gt: List[dict], det: List[dict],
                 classes: Sequence[str]) -> Dict[str, float]:
    """mAP 3D and BEV (moderate, AP40, strict IoU, the classes' mean, as
    KittiMetric's ``Overall``) of ``det``."""
    _, ap = kitti_eval(gt,
                       det,
                       list(classes),
                       eval_types=['bbox', 'bev', '3d'])
    return {
        kind:
        float(
            np.mean([
                ap[f'KITTI/{name}_{kind}_AP40_moderate_strict']
                for name in classes
            ]))
        for kind in ('3D', 'BEV')
    }


def bootstrap_map(predictions: str,
                  ann_file: str,
                  classes: Sequence[str],
                  replicates: int = 100,
                  seed: int = 0) -> dict:
    """mAP on the frames, and its spread when the frames are drawn again
    with replacement.

    Args:
        predictions: ``DumpResults``' file of one evaluation.
        ann_file: The info file it was evaluated on.
        classes: The dataset's classes in label order (its ``metainfo``).
        replicates: Bootstrap draws.
        seed: Seed of the draws.

    Returns:
        dict: ``map`` (3D and BEV on the frames), ``std`` (standard
        deviation over the draws), ``frames`` and ``replicates``.
    """
    gt, det = kitti_annos(predictions, ann_file, classes)
    rng = np.random.default_rng(seed)
    draws: Dict[str, List[float]] = {'3D': [], 'BEV': []}
    logger = MMLogger.get_current_instance()
    logger.info(f'bootstrap of mAP over {len(gt)} frames, {replicates} '
                'draws')
    with progress_bar(replicates) as progress:
        for _ in range(replicates):
            index = rng.integers(len(gt), size=len(gt))
            value = moderate_map([gt[i] for i in index],
                                 [det[i] for i in index], classes)
            for kind in draws:
                draws[kind].append(value[kind])
            progress.update()
    return dict(map=moderate_map(gt, det, classes),
                std={
                    kind: float(np.std(v, ddof=1))
                    for kind, v in draws.items()
                },
                frames=len(gt),
                replicates=replicates)
