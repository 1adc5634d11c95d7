"""The curves stage on 1 process and on N processes (torch.distributed,
gloo on CPU), in the same run: seconds and the speed-up.

Each run starts its processes with the environment that torchrun sets
(``RANK``, ``WORLD_SIZE``, ...), one thread each; every process builds the
model, calibrates on the same frames and measures its round-robin share of
the layers (:func:`rdprune_mm.curves.measure_curves`, nothing cached). The
time is rank 0's, from a barrier before the curves to the gathered curves;
the curves of the N-process run must equal the 1-process curves. With
``--repeats R`` the two alternate R times and the fastest of each counts.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distributed.py \\
        --processes 2

Default: the reduced CenterPoint (``rd-weight_centerpoint_voxel02-quick``)
on its nuScenes frame, 20 layers x 4 levels = 80 calibration passes.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import socket
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join('configs', 'centerpoint',
                          'rd-weight_centerpoint_voxel02-quick_nus.py')
DEFAULT_OPTIONS = [
    'pruner.num_levels=5',
    'pruner.targets.include=[pts_middle_encoder.conv_input,'
    'pts_middle_encoder.encoder_layers.encoder_layer1,pts_neck,'
    'task_heads.0.]'
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    parser.add_argument('--checkpoint', help='trained checkpoint')
    parser.add_argument(
        '--processes', type=int, default=2,
        help='processes of the distributed run (default 2)')
    parser.add_argument(
        '--cfg-options', nargs='+', default=DEFAULT_OPTIONS,
        help='config overrides (default: 20 layers of the reduced '
        'CenterPoint, 5 levels)')
    parser.add_argument(
        '--repeats', type=int, default=1,
        help='runs of each, alternating; the fastest of each counts (the '
        'machine may be shared)')
    parser.add_argument('--out', help='write the figures to this JSON file')
    parser.add_argument('--rank-out', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def measure_rank(args: argparse.Namespace) -> None:
    """One process: calibrate, then time the curves stage."""
    sys.path.insert(0, REPO)
    import torch
    from mmengine import dist
    from mmengine.config import DictAction

    from rdprune_mm.apis import load_config, prepare_detector
    from rdprune_mm.apis.checks import build_pruner
    from rdprune_mm.distributed import close_distributed, init_distributed
    from rdprune_mm.pipeline import PruningState, calibrate

    torch.set_num_threads(1)
    started = init_distributed('pytorch')
    options = argparse.ArgumentParser()
    options.add_argument('--options', nargs='+', action=DictAction)
    cfg = load_config(
        args.config,
        options.parse_args(['--options', *args.cfg_options]).options)
    pruner = build_pruner(cfg.pruner)
    model, _, batches = prepare_detector(cfg, args.checkpoint, 'cpu')
    with torch.no_grad():
        targets, extra = pruner.select(model)
        state = PruningState(
            targets=targets,
            calibration=calibrate(model, batches, targets,
                                  pruner.head_modules, pruner.distortion),
            extra=extra)
        pruner.setup(model, batches, state, None)
        dist.barrier()
        start = time.perf_counter()
        curves = pruner.curves(model, batches, state)
        dist.barrier()
        seconds = time.perf_counter() - start
    if dist.get_rank() == 0:
        passes = sum(len(set(u.level_keys.tolist()) - {0})
                     for u in state.units)
        with open(args.rank_out, 'w') as f:
            json.dump(dict(seconds=seconds, units=len(state.units),
                           passes=passes,
                           curves={k: v.tolist()
                                   for k, v in curves.items()}), f)
    close_distributed(started)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_processes(args: argparse.Namespace, world_size: int,
                  out: str) -> dict:
    """Start ``world_size`` processes of this script; rank 0's figures."""
    port = str(_free_port())
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world_size),
                   LOCAL_WORLD_SIZE=str(world_size),
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=port,
                   OMP_NUM_THREADS='1')
        command = [sys.executable, osp.abspath(__file__), args.config,
                   '--rank-out', out, '--cfg-options', *args.cfg_options]
        if args.checkpoint:
            command += ['--checkpoint', args.checkpoint]
        procs.append(subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f'a process of the {world_size}-process run failed:\n'
                     f'{err[-3000:]}')
    with open(out) as f:
        return json.load(f)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rank_out:
        measure_rank(args)
        return 0
    ones, manys = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            ones.append(run_processes(args, 1, osp.join(tmp, f'1-{repeat}')))
            manys.append(run_processes(args, args.processes,
                                       osp.join(tmp, f'n-{repeat}')))
    one = min(ones, key=lambda run: run['seconds'])
    many = min(manys, key=lambda run: run['seconds'])
    same = all(run['curves'] == one['curves'] for run in ones + manys)
    figures = dict(
        config=args.config,
        cfg_options=args.cfg_options,
        units=one['units'],
        passes=one['passes'],
        processes=args.processes,
        seconds_1=round(one['seconds'], 2),
        seconds_n=round(many['seconds'], 2),
        all_seconds_1=[round(run['seconds'], 2) for run in ones],
        all_seconds_n=[round(run['seconds'], 2) for run in manys],
        speedup=round(one['seconds'] / many['seconds'], 2),
        same_curves=same,
        cpus=os.cpu_count(),
        threads_per_process=1)
    print(f'curves of {one["units"]} units, {one["passes"]} calibration '
          f'passes: 1 process {one["seconds"]:.2f} s, {args.processes} '
          f'processes {many["seconds"]:.2f} s: {figures["speedup"]:.2f}x '
          f'(curves {"identical" if same else "DIFFER"})')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(figures, f, indent=2)
    return 0 if same else 1


if __name__ == '__main__':
    sys.exit(main())
