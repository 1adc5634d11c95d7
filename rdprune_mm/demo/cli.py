"""Command-line arguments of ``tools/demo.py``."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .configs import DATA_ROOT, PRUNE_CONFIG, TRAIN_CONFIG


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the demo's arguments (``sys.argv`` when ``argv`` is ``None``).

    Also used by ``benchmarks/bench_baselines.py`` to set up the
    :class:`rdprune_mm.demo.Job` it shares with the demo.
    """
    parser = argparse.ArgumentParser(
        description='Built-in KITTI-layout data, a small SECOND trained on '
        'it, RD pruning, fine-tuning, KittiMetric and latency: dense '
        'against pruned.')
    parser.add_argument('--data-root', default=DATA_ROOT)
    parser.add_argument('--work-dir', default='work_dirs/kitti_like')
    parser.add_argument(
        '--num-train', type=int, default=200, help='simulated train frames')
    parser.add_argument(
        '--num-val', type=int, default=50, help='simulated val frames')
    parser.add_argument(
        '--seed', type=int, default=0, help='seed of the data simulation')
    parser.add_argument(
        '--eval-num-val',
        type=int,
        default=None,
        help='evaluate on this many val frames, simulated into '
        '<data-root>_val<N> with the same seed and train frames (its first '
        '--num-val val frames are the data root\'s); default: the data '
        'root\'s val frames')
    parser.add_argument('--train-config', default=TRAIN_CONFIG)
    parser.add_argument('--prune-config', default=PRUNE_CONFIG)
    parser.add_argument(
        '--epochs', type=int, help='training epochs (default: the config)')
    parser.add_argument(
        '--finetune-epochs',
        type=int,
        help='fine-tuning epochs (default: the pruning config)')
    parser.add_argument(
        '--budget',
        type=float,
        help='share to keep, in (0, 1] (default: the pruning config)')
    parser.add_argument(
        '--budget-by', choices=('params', 'flops'),
        help='budget unit (default: the pruning config)')
    parser.add_argument(
        '--latency-frames',
        type=int,
        default=20,
        help='val frames timed per model (after 2 warm-up frames)')
    parser.add_argument(
        '--train-options',
        nargs='+',
        default=None,
        help='extra key=value overrides of the training config')
    parser.add_argument(
        '--prune-options',
        nargs='+',
        default=None,
        help='extra key=value overrides of the pruning config, e.g. '
        'pruner.num_levels=6')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='redo the training and pruning steps (the data is kept)')
    return parser.parse_args(argv)
