"""Check the additivity that RD allocation rests on, for one config.

Measures (or reads from the cache) every layer's curve, then draws random
allocations at several budgets, prunes each jointly and compares the
measured distortion with the sum of the layers' curves. Writes
``additivity.json`` and a scatter plot ``additivity.png`` to the work dir
and prints the correlation and the measured/predicted ratio.

Example::

    python tools/analyze_additivity.py \
        configs/centerpoint/rd-weight_centerpoint_voxel02-quick_nus.py \
        --budgets 0.3 0.5 0.7 --samples 8
"""
from __future__ import annotations

import argparse
import sys

from mmengine.config import DictAction

from rdprune_mm.apis import analyze_detector_additivity, load_config
from rdprune_mm.errors import run_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Measured joint distortion of random allocations '
        'against the sum of the per-layer curves.')
    parser.add_argument('config', help='pruning config file')
    parser.add_argument('--checkpoint', help='trained checkpoint')
    parser.add_argument(
        '--work-dir',
        help='output folder (default: work_dirs/<config name>); its curve '
        'cache is shared with tools/prune.py')
    parser.add_argument(
        '--budgets',
        type=float,
        nargs='+',
        default=[0.3, 0.5, 0.7],
        help='shares of the weights to keep')
    parser.add_argument(
        '--samples', type=int, default=8, help='allocations per budget')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default=None)
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, e.g. pruner.num_levels=11')
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Run :func:`rdprune_mm.apis.analyze_detector_additivity` and print
    its summary."""
    cfg = load_config(args.config, args.cfg_options)
    report = analyze_detector_additivity(
        cfg, args.checkpoint, args.work_dir, args.device,
        budgets=args.budgets, samples=args.samples, seed=args.seed)
    print(f'{report["samples"]} random allocations at budgets '
          f'{args.budgets}: Spearman {report["spearman"]:.3f}, Pearson '
          f'(log) {report["pearson_log"]:.3f}; measured/predicted median '
          f'{report["ratio_median"]:.3f} (range {report["ratio_min"]:.3f}'
          f'-{report["ratio_max"]:.3f}); RD allocation ratio '
          f'{report["rd_allocation"]["ratio"]:.3f}.')
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool('analyze_additivity.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
