"""Head-output distortion of pruned checkpoints on frames of one's choice.

A pruning run measures its distortion on its calibration frames, which the
compensate stage's refit fits. This script measures it, against the dense
model, on ranges of the calibration dataloader's frames, so that a refit
can be checked on frames it did not see. Example (the rows of
docs/compensation.md)::

    python benchmarks/heldout_distortion.py \\
        work_dirs/centerpoint_bench/seed2/quality/runs/rd-flops-0.5/config.py \\
        work_dirs/centerpoint_bench/seed2/dense/epoch_12.pth \\
        --pruned work_dirs/centerpoint_bench/seed2/compensation_32/runs/*/pruned.pth \\
        --frames 0:4 4:20 32:48

Prints one line per checkpoint and writes ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from typing import List, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def frame_range(text: str) -> Tuple[int, int]:
    try:
        start, stop = (int(v) for v in text.split(':'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a frame range START:STOP, e.g. 4:20')
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(
            f'{text!r}: START must be >= 0 and below STOP')
    return start, stop


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the pruning run\'s config.py')
    parser.add_argument('dense', help='the dense checkpoint')
    parser.add_argument('--pruned', nargs='+', required=True,
                        help='pruned checkpoints (pruned.pth) of the model')
    parser.add_argument('--frames', nargs='+', type=frame_range,
                        default=[(0, 4), (4, 20)],
                        help='ranges START:STOP of the calibration '
                        "dataloader's frames")
    parser.add_argument('--out', default='heldout_distortion.json')
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    import torch

    import rdprune_mm.models  # noqa: F401 (CenterHeadNoVelocity)
    from rdprune_mm.apis import load_config, prepare_detector, read_checkpoint
    from rdprune_mm.errors import PruningInputError
    from rdprune_mm.fileio import write_json
    from rdprune_mm.head_outputs import HeadOutputs
    from rdprune_mm.registry import DISTORTIONS
    cfg = load_config(args.config)
    last = max(stop for _, stop in args.frames)
    cfg.calibration = dict(cfg.get('calibration', {}), num_samples=last)
    model, _, batches = prepare_detector(cfg, args.dense)
    if len(batches) < last:
        raise PruningInputError(
            f'the calibration dataset has {len(batches)} frames; --frames '
            f'asks for {last}: give ranges within it')
    measure_cfg = dict(cfg.pruner.get('distortion') or
                       dict(type='NormalizedMSE'))
    measure = DISTORTIONS.build(measure_cfg)
    head = HeadOutputs(model)
    with torch.no_grad():
        reference = [head(batch) for batch in batches]
    results = {}
    for path in args.pruned:
        model.load_state_dict(read_checkpoint(path)['state_dict'])
        with torch.no_grad():
            outputs = [head(batch) for batch in batches]
        results[path] = {
            f'{start}:{stop}': float(
                measure(reference[start:stop], outputs[start:stop]))
            for start, stop in args.frames
        }
        print(path, ', '.join(f'frames {k}: {v:.4g}'
                              for k, v in results[path].items()))
    report = dict(config=args.config, dense=args.dense,
                  distortion=measure_cfg, results=results)
    write_json(args.out, report)
    return report


def main(argv: List[str] = None) -> int:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rdprune_mm.errors import run_tool
    args = parse_args(argv)
    return run_tool('heldout_distortion.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
