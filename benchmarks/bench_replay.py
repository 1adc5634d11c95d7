"""Curves with and without the replay of unchanged parts
(:mod:`rdprune_mm.upstream_replay`): time of the curves stage, in the same
process, on one config, the same levels and calibration frames, and a check
that both give the same curves to the bit.

Prints the seconds of each, their ratio, how many runs of each part before
the head were replayed and the memory of the records.

Usage:
    .venv/bin/python benchmarks/bench_replay.py \\
        configs/centerpoint/rd-weight_centerpoint_voxel02-quick_nus.py \\
        --num-levels 2
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from mmengine.config import DictAction

from rdprune_mm.apis import default_device, load_config, prepare_detector
from rdprune_mm.curves import CurveCache, measure_curves
from rdprune_mm.pipeline.calibration import calibrate
from rdprune_mm.pipeline.stages import PruningState
from rdprune_mm.registry import PRUNERS
from rdprune_mm.upstream_replay import replaying_unchanged_parts

DEFAULT_CONFIG = os.path.join('configs', 'centerpoint',
                              'rd-weight_centerpoint_voxel02-quick_nus.py')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    parser.add_argument('--checkpoint', help='trained checkpoint')
    parser.add_argument(
        '--num-levels',
        type=int,
        default=2,
        help='levels per unit (2: one pass per unit, pruned whole)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def measure(pruner, state, replay: bool):
    """The curves stage on ``state`` with or without the replay, cache
    off; returns the curves, the seconds and the replay (None when off)."""
    cache = CurveCache(None, 'bench', length=len(pruner.sparsities))
    calibration = state.calibration
    start = time.perf_counter()
    with torch.no_grad(), replaying_unchanged_parts(calibration.head,
                                                    replay) as replayed:
        curves = measure_curves(state.units, calibration.measure, cache,
                                calibration.unpruned_distortion)
    return curves, time.perf_counter() - start, replayed


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    model, _, batches = prepare_detector(cfg, args.checkpoint,
                                         default_device())
    pruner = PRUNERS.build({**cfg.pruner, 'num_levels': args.num_levels})
    targets, extra = pruner.select(model)
    state = PruningState(targets=targets,
                         calibration=calibrate(model, batches, targets,
                                               pruner.head_modules,
                                               pruner.distortion),
                         extra=extra)
    pruner.setup(model, batches, state, None)
    runs = {replay: measure(pruner, state, replay) for replay in (False, True)}
    full, replayed = runs[False][0], runs[True][0]
    same = full.keys() == replayed.keys() and all(
        np.array_equal(full[k], replayed[k]) for k in full)
    replay = runs[True][2]
    print(f'\n{args.config}: {len(full)} units x {args.num_levels} levels, '
          f'{len(batches)} calibration batch(es), {platform.processor()} '
          f'{torch.get_num_threads()} threads, torch {torch.__version__}')
    print(f'curves, every part computed: {runs[False][1]:8.1f} s')
    print(f'curves, unchanged replayed:  {runs[True][1]:8.1f} s')
    print(f'speed-up: {runs[False][1] / runs[True][1]:.2f}x; '
          f'curves equal to the bit: {same}')
    print(f'replayed runs per part: {dict(replay.replayed)} of '
          f'{replay.calls} runs; records {replay.recorded_bytes / 2**20:.1f}'
          ' MiB')
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
