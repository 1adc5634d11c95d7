"""Rate-distortion curves, cached and resumable.

Empirical curves prune every target alone at every level of the grid (in the
ranking's order, smallest magnitude first by default) and measure the
distortion of the head outputs: one calibration pass per layer and level.
Taylor curves read the same levels off a :class:`GradientSketch`, with no
forward pass at all once the sketch is measured.

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
from .sketch import GradientSketch
from .targets import PruningTarget


class CurveCache:
    """Curves of one fingerprint, in ``<folder>/<prefix>-<key[:16]>.json``.

    Args:
        folder: Where cache files live (None: no cache).
        key: The fingerprint the curves belong to.
        prefix: Start of the file name.
    """

    def __init__(self, folder: Optional[str], key: str,
                 prefix: str = 'curves') -> None:
        self.key = key
        self.path = (osp.join(folder, f'{prefix}-{key[:16]}.json')
                     if folder else None)
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
        self.update({name: curve})

    def update(self, curves: Dict[str, Sequence[float]]) -> None:
        """Store several curves with one write."""
        for name, curve in curves.items():
            self.curves[name] = [float(v) for v in curve]
        if self.path:
            write_json(self.path, dict(key=self.key, curves=self.curves))


@torch.no_grad()
def empirical_curves(targets: Sequence[PruningTarget],
                     sparsities: Sequence[float],
                     measure: Callable[[], float],
                     cache: CurveCache,
                     unpruned_distortion: float = 0.0,
                     orders: Optional[Sequence[torch.Tensor]] = None
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
        orders: Per target, flat weight indices in pruning order (None:
            smallest magnitude first).

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
    order_of = {
        t.name: order
        for t, order in zip(targets, orders or [None] * len(targets))
    }
    for target in todo:
        weight = target.weight
        original = weight.detach().clone()
        order = order_of[target.name]
        if order is None:
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


def saturate(quadratic: np.ndarray, ceiling: float) -> np.ndarray:
    """Bend a quadratic estimate towards ``ceiling``: ``q / (1 + q / c)``.

    Equal to ``q`` while ``q`` is small against ``c``, never above ``c``.
    """
    if ceiling <= 0:
        return quadratic
    return quadratic / (1.0 + quadratic / ceiling)


def taylor_curves(targets: Sequence[PruningTarget],
                  sparsities: Sequence[float],
                  sketch: Optional[GradientSketch],
                  orders: Sequence[torch.Tensor],
                  cache: CurveCache,
                  ceiling: float = 0.0) -> Dict[str, np.ndarray]:
    """Estimate ``D_l(k)`` of every target and level from a gradient sketch.

    The Gauss-Newton estimate is exact near the unpruned weights but grows
    without bound, while the measured distortion of a layer pruned away
    levels off once the outputs have lost that layer's signal. With a
    ``ceiling`` (the distortion of an all-zero output is the natural one)
    the estimate is passed through :func:`saturate`.

    Args:
        targets: The prunable layers.
        sparsities: Pruned share of each level; level 0 must be 0.
        sketch: Projected gradients of every target not in ``cache`` (None
            if all are).
        orders: Per target, flat weight indices in pruning order.
        cache: Curves already estimated, and where new ones go.
        ceiling: Level the curves saturate at (0: plain quadratic form).

    Returns:
        dict[str, np.ndarray]: One curve per target name.
    """
    todo = [(t, o) for t, o in zip(targets, orders) if t.name not in cache]
    if todo and sketch is None:
        raise ValueError('taylor_curves needs a sketch for uncached targets')
    for target, order in todo:
        counts = pruned_counts(target.num_params, sparsities)
        cache[target.name] = saturate(
            sketch.curve(target.name, target.weight, order, counts), ceiling)
    return {t.name: cache[t.name] for t in targets}
