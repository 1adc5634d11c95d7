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

On several ranks (:mod:`rdprune_mm.distributed`) the passes are split in
one of two ways, whichever leaves the busiest rank fewer frames to run:

* by unit: each rank measures its round-robin share of the units not cached
  yet and writes them to its own shard, ``<prefix>-<key[:16]>.rank<r>.json``;
  the shards are gathered, rank 0 merges them into the cache and removes
  them. Shards that an interrupted run left are merged by the next run, on
  any number of ranks.
* by frame (when the distortion is a sum over frames,
  :class:`FrameSplit`): every rank prunes the same unit, runs its
  round-robin share of the calibration frames and measures their error
  terms; the terms are gathered after each unit, the distortion is reduced
  from all frames in their order, and rank 0 writes the unit to the cache.
  Several frames and few units (or fewer units than ranks) split this way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from mmengine import dist
from mmengine.logging import MMLogger

from .distributed import (get_rank_and_world_size, run_everywhere,
                          split_round_robin)
from .errors import PruningInputError
from .fileio import write_json
from .masks import magnitude_order, pruned_counts
from .units import PruningUnit, WeightUnit
from .progress import progress_bar
from .sketch import GradientSketch
from .targets import PruningTarget


class CurveCache:
    """Curves of one fingerprint, in ``<folder>/<prefix>-<key[:16]>.json``.

    A file that cannot be read, holds another key, or holds entries that are
    not ``length`` finite numbers is not trusted: the bad entries (all of
    them for an unreadable file) are discarded with a warning and measured
    again. On several ranks only rank 0 writes the cache file.

    Args:
        folder: Where cache files live (None: no cache).
        key: The fingerprint the curves belong to.
        prefix: Start of the file name.
        length: Values every entry holds (None: any number).
        shard: The rank whose shard this is (None: the cache itself).
    """

    def __init__(self, folder: Optional[str], key: str,
                 prefix: str = 'curves',
                 length: Optional[int] = None,
                 shard: Optional[int] = None) -> None:
        self.folder = folder
        self.key = key
        self.prefix = prefix
        self.length = length
        suffix = '' if shard is None else f'.rank{shard}'
        self.path = (osp.join(folder, f'{prefix}-{key[:16]}{suffix}.json')
                     if folder else None)
        # a shard is written by its rank, the cache by rank 0 alone
        self.writes = shard is not None or dist.is_main_process()
        self.curves: Dict[str, List[float]] = {}
        if self.path and osp.isfile(self.path):
            self.curves = self._read()

    def shard(self, rank: int) -> 'CurveCache':
        """The shard of ``rank``, where it writes the curves it measures."""
        return CurveCache(self.folder, self.key, self.prefix, self.length,
                          shard=rank)

    def shard_paths(self) -> List[str]:
        """The shard files of this cache in its folder, any rank."""
        if not self.folder:
            return []
        pattern = osp.join(self.folder,
                           f'{self.prefix}-{self.key[:16]}.rank*.json')
        return sorted(glob.glob(pattern))

    def merge_shards(self) -> int:
        """Add the curves of every shard file (of this key) that the cache
        lacks, write the cache and remove the shards.

        Returns:
            int: How many curves the shards added.
        """
        added: Dict[str, List[float]] = {}
        paths = self.shard_paths()
        for path in paths:
            for name, curve in self._read(path).items():
                if name not in self.curves:
                    added.setdefault(name, curve)
        if added:
            self.update(added)
        if self.writes:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
        return len(added)

    def _read(self, path: Optional[str] = None) -> Dict[str, List[float]]:
        """The trusted entries of ``path`` (default: the cache file)."""
        path = path or self.path
        logger = MMLogger.get_current_instance()
        try:
            with open(path) as f:
                stored = json.load(f)
            curves = stored['curves'] if stored.get('key') == self.key \
                else None
            if curves is not None and not isinstance(curves, dict):
                raise TypeError('curves is not a mapping')
        except (OSError, ValueError, TypeError, KeyError,
                AttributeError) as error:
            logger.warning(f'cache {path} cannot be read ({error}); '
                           'discarded, its curves are measured again')
            return {}
        if curves is None:
            logger.warning(f'cache {path} belongs to other settings; '
                           'discarded, its curves are measured again')
            return {}
        good = {name: curve for name, curve in curves.items()
                if self._valid(curve)}
        if len(good) < len(curves):
            bad = sorted(set(curves) - set(good))
            logger.warning(
                f'cache {path} holds {len(bad)} malformed entries '
                f'(e.g. {bad[0]}); they are measured again')
        return good

    def _valid(self, curve) -> bool:
        if not isinstance(curve, list) or (self.length is not None
                                           and len(curve) != self.length):
            return False
        return all(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v) for v in curve)

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
        if self.path and self.writes:
            write_json(self.path, dict(key=self.key, curves=self.curves))


@dataclasses.dataclass
class FrameSplit:
    """A pass's distortion computed from per-frame error terms, so that
    ranks can share the frames of a pass.

    Attributes:
        num_frames: Calibration frames of a pass.
        errors: Runs the model as it is now on the frames of the given
            indices and returns their error terms, one row per frame.
        reduce: The distortion from every frame's rows, in frame order.
    """

    num_frames: int
    errors: Callable[[Sequence[int]],
                     torch.Tensor] = dataclasses.field(repr=False)
    reduce: Callable[[torch.Tensor], float] = dataclasses.field(repr=False)


def splits_frames(frames: Optional[FrameSplit], num_units: int,
                  world_size: int) -> bool:
    """Whether splitting the frames of each pass leaves the busiest rank
    fewer frames to run than splitting the units."""
    if frames is None or world_size < 2 or frames.num_frames < 2:
        return False
    by_unit = -(-num_units // world_size) * frames.num_frames
    by_frame = num_units * -(-frames.num_frames // world_size)
    return by_frame < by_unit


def check_finite(distortion: float, name: str, num_pruned: int) -> float:
    """Refuse a distortion that is NaN or Inf, naming the unit."""
    if not math.isfinite(distortion):
        raise PruningInputError(
            f'pruning {num_pruned} elements of {name} gives a distortion of '
            f'{distortion}: the pruned model\'s head outputs are not finite; '
            f'exclude {name} with pruner.targets.exclude')
    return float(distortion)


def measure_curves(
        units: Sequence[PruningUnit],
        measure: Callable[[], float],
        cache: CurveCache,
        unpruned_distortion: float = 0.0,
        noun: str = 'units',
        frames: Optional[FrameSplit] = None) -> Dict[str, np.ndarray]:
    """Measure ``D_u(k)`` for every unit ``u`` and level ``k``.

    Each unit is pruned alone (:meth:`PruningUnit.pruned`) at every
    distinct level key and the distortion of the head outputs is measured;
    a key of 0 (nothing pruned) reads ``unpruned_distortion``. Every
    finished unit is written to ``cache`` at once. On several ranks the
    units that the cache (with the shards of an earlier run) lacks are
    split by unit or by frame (see the module docstring), the ranks meet
    after every unit (an error on one rank stops them all), and the curves
    are gathered into the cache on every rank.

    Args:
        units: What the curves prune.
        measure: Runs the calibration set on the model as it is now and
            returns the distortion against the reference outputs.
        cache: Curves already measured, and where new ones go.
        unpruned_distortion: ``measure()`` of the unpruned model.
        noun: What the units are, for the log.
        frames: The same measure from per-frame error terms (None: the
            frames of a pass are never split across ranks).

    Returns:
        dict[str, np.ndarray]: One curve per unit name.
    """
    logger = MMLogger.get_current_instance()
    rank, world_size = get_rank_and_world_size()
    if world_size > 1:  # the cache as rank 0 reads it, shards merged
        run_everywhere(lambda: cache.merge_shards() if rank == 0 else 0)
        box = [cache.curves]
        dist.broadcast_object_list(box, src=0)
        cache.curves = box[0]
    else:
        cache.merge_shards()
    todo = [u for u in units if u.name not in cache]
    if len(todo) < len(units):
        logger.info(f'curves: {len(units) - len(todo)} of {len(units)} '
                    f'{noun} loaded from {cache.path}')
    if splits_frames(frames, len(todo), world_size):
        _measure_by_frame(todo, frames, cache, unpruned_distortion, noun)
        return {u.name: cache[u.name] for u in units}
    mine = split_round_robin(todo, rank, world_size)
    passes = sum(len(_distinct_levels(u)) for u in mine)
    if todo:
        share = (f' ({len(mine)} on rank {rank} of {world_size})'
                 if world_size > 1 else '')
        logger.info(f'curves: measuring {len(todo)} {noun}{share}, '
                    f'{passes} passes of the calibration set')
    written = cache.shard(rank) if world_size > 1 else cache
    rounds = -(-len(todo) // world_size)
    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(progress_bar(passes)) \
            if passes and rank == 0 else None

        def measure_unit(unit: PruningUnit) -> None:
            measured = {0: unpruned_distortion}
            for key in unit.level_keys.tolist():
                if key in measured:
                    continue
                with unit.pruned(key):
                    measured[key] = check_finite(measure(), unit.name, key)
                if progress is not None:
                    progress.update()
            written[unit.name] = np.array(
                [measured[key] for key in unit.level_keys.tolist()],
                dtype=np.float64)

        for index in range(rounds):
            # every rank meets after each round: no rank waits on one
            # that failed for longer than a unit
            run_everywhere(lambda: measure_unit(mine[index])
                           if index < len(mine) else None)
    if world_size > 1:
        gathered = dist.all_gather_object(
            {u.name: written.curves[u.name] for u in mine})
        merged: Dict[str, List[float]] = {}
        for curves in gathered:
            merged.update(curves)
        # rank 0 writes it, in the units' order
        cache.update({u.name: merged[u.name] for u in todo})
        if written.path:
            with contextlib.suppress(FileNotFoundError):
                os.remove(written.path)
        dist.barrier()
    return {u.name: cache[u.name] for u in units}


def _distinct_levels(unit: PruningUnit) -> List[int]:
    """The level keys of ``unit`` that need a pass (not 0), in order."""
    return [key for key in dict.fromkeys(unit.level_keys.tolist()) if key]


def _measure_by_frame(todo: Sequence[PruningUnit], frames: FrameSplit,
                      cache: CurveCache, unpruned_distortion: float,
                      noun: str) -> None:
    """:func:`measure_curves` of ``todo`` with every pass's frames split
    round-robin across the ranks; rank 0 writes each unit to ``cache``."""
    rank, world_size = get_rank_and_world_size()
    mine = split_round_robin(list(range(frames.num_frames)), rank, world_size)
    passes = sum(len(_distinct_levels(u)) for u in todo)
    MMLogger.get_current_instance().info(
        f'curves: measuring {len(todo)} {noun}, {passes} passes, the '
        f'{frames.num_frames} calibration frames of each split across '
        f'{world_size} ranks ({len(mine)} on rank {rank})')
    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(progress_bar(passes)) \
            if passes and rank == 0 else None

        def my_rows(unit: PruningUnit) -> Dict[int, torch.Tensor]:
            rows = {}
            for key in _distinct_levels(unit):
                with unit.pruned(key):
                    rows[key] = frames.errors(mine).cpu()
                if progress is not None:
                    progress.update()
            return rows

        for unit in todo:
            gathered = dist.all_gather_object(
                run_everywhere(lambda: my_rows(unit)))
            measured = {0: unpruned_distortion}
            for key in _distinct_levels(unit):
                ordered: List[torch.Tensor] = [None] * frames.num_frames
                for owner, rows in enumerate(gathered):
                    indices = range(owner, frames.num_frames, world_size)
                    for index, row in zip(indices, rows[key]):
                        ordered[index] = row
                measured[key] = check_finite(
                    frames.reduce(torch.stack(ordered)), unit.name, key)
            cache[unit.name] = np.array(
                [measured[key] for key in unit.level_keys.tolist()],
                dtype=np.float64)


def empirical_curves(targets: Sequence[PruningTarget],
                     sparsities: Sequence[float],
                     measure: Callable[[], float],
                     cache: CurveCache,
                     unpruned_distortion: float = 0.0,
                     orders: Optional[Sequence[torch.Tensor]] = None
                     ) -> Dict[str, np.ndarray]:
    """:func:`measure_curves` of weight layers pruned at the pruned shares
    ``sparsities`` (level 0 must be 0), in the order of ``orders``
    (None: smallest magnitude first)."""
    orders = orders or [magnitude_order(t.weight) for t in targets]
    units = [
        WeightUnit(t, order, pruned_counts(t.num_params, sparsities))
        for t, order in zip(targets, orders)
    ]
    return measure_curves(units, measure, cache, unpruned_distortion,
                          noun='layers')


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
        curve = saturate(
            sketch.curve(target.name, target.weight, order, counts), ceiling)
        for count, value in zip(counts.tolist(), curve.tolist()):
            check_finite(value, target.name, count)
        cache[target.name] = curve
    return {t.name: cache[t.name] for t in targets}
