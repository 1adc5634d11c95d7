"""Empirical rate-distortion curves, cached and resumable.

For every target and every level of the grid, the target alone is pruned
(smallest magnitude first) and the distortion of the head outputs measured.
Curves are written to a JSON cache after every finished layer, keyed by a
fingerprint of the model, the calibration outputs and the settings: an
interrupted run resumes at the first unfinished layer and a rerun computes
nothing.
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine.logging import MMLogger
from mmengine.utils import ProgressBar

from .fileio import write_json
from .masks import magnitude_order, mask_from_order, pruned_counts
from .targets import PruningTarget


class CurveCache:
    """Curves of one fingerprint, in ``<folder>/curves-<key[:16]>.json``.

    Args:
        folder: Where cache files live (None: no cache).
        key: The fingerprint the curves belong to.
    """

    def __init__(self, folder: Optional[str], key: str) -> None:
        self.key = key
        self.path = (
            osp.join(folder, f'curves-{key[:16]}.json') if folder else None)
        self.curves: Dict[str, List[float]] = {}
        if self.path and osp.isfile(self.path):
            with open(self.path) as f:
                stored = json.load(f)
            if stored.get('key') == key:
                self.curves = stored['curves']

    def __contains__(self, name: str) -> bool:
        return name in self.curves

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self.curves[name], dtype=np.float64)

    def __setitem__(self, name: str, curve: np.ndarray) -> None:
        self.curves[name] = [float(v) for v in curve]
        if self.path:
            write_json(self.path, dict(key=self.key, curves=self.curves))


@torch.no_grad()
def empirical_curves(targets: Sequence[PruningTarget],
                     sparsities: Sequence[float],
                     measure: Callable[[], float],
                     cache: CurveCache,
                     unpruned_distortion: float = 0.0
                     ) -> Dict[str, np.ndarray]:
    """Measure ``D_l(k)`` for every target ``l`` and level ``k``.

    Args:
        targets: The prunable layers.
        sparsities: Pruned share of each level; level 0 must be 0.
        measure: Runs the calibration set on the model as it is now and
            returns the distortion against the reference outputs.
        cache: Curves already measured, and where new ones go.
        unpruned_distortion: ``measure()`` of the unpruned model, used for
            level 0 of every layer.

    Returns:
        dict[str, np.ndarray]: One curve per target name.
    """
    logger = MMLogger.get_current_instance()
    todo = [t for t in targets if t.name not in cache]
    if len(todo) < len(targets):
        logger.info(f'curves: {len(targets) - len(todo)} of {len(targets)} '
                    f'layers loaded from {cache.path}')
    if todo:
        levels = len(sparsities) - 1
        logger.info(f'curves: measuring {len(todo)} layers x {levels} '
                    f'levels = {len(todo) * levels} passes of the '
                    'calibration set')
        progress = ProgressBar(len(todo) * levels)
    for target in todo:
        weight = target.weight
        original = weight.detach().clone()
        order = magnitude_order(original)
        counts = pruned_counts(original.numel(), sparsities)
        curve = np.empty(len(sparsities))
        curve[0] = unpruned_distortion
        try:
            for level in range(1, len(sparsities)):
                mask = mask_from_order(order, original.shape, counts[level])
                weight.copy_(original.masked_fill(~mask, 0.0))
                curve[level] = measure()
                progress.update()
        finally:
            weight.copy_(original)
        cache[target.name] = curve
    if todo:
        print()
    return {t.name: cache[t.name] for t in targets}
