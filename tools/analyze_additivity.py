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
import os.path as osp
import sys
from typing import List

import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.logging import MMLogger

from rdprune_mm.additivity import analyze_additivity, summarize
from rdprune_mm.apis import build_detector, default_device, load_config
from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.errors import PruningInputError, run_tool
from rdprune_mm.fileio import atomic_write, write_json
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.masks import pruned_counts
from rdprune_mm.registry import PRUNERS


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


def _check(args: argparse.Namespace) -> None:
    if any(not 0 < b <= 1 for b in args.budgets):
        raise PruningInputError(
            f'--budgets {args.budgets}: each must be in (0, 1], the share of '
            'weights to keep')
    if args.samples < 1:
        raise PruningInputError(f'--samples {args.samples}: give 1 or more')


def _plot(summary: dict, rd_point: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter
    fig = Figure(figsize=(6, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = summary['points']
    budgets = sorted({p['budget'] for p in points})
    for budget in budgets:
        chosen = [p for p in points if p['budget'] == budget]
        ax.scatter([p['predicted'] for p in chosen],
                   [p['measured'] for p in chosen],
                   s=18, label=f'random, keep {budget:g}')
    ax.scatter([rd_point['predicted']], [rd_point['measured']], marker='*',
               s=160, color='black', label='RD allocation')
    values = [v for p in points for v in (p['predicted'], p['measured'])]
    values += [rd_point['predicted'], rd_point['measured']]
    positive = [v for v in values if v > 0]
    if positive:
        low, high = min(positive), max(positive)
        ax.plot([low, high], [low, high], 'k--', lw=0.8, label='measured = sum')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel('predicted: sum of the layers\' curves')
    ax.set_ylabel('measured: all layers pruned together')
    ax.set_title(f'Spearman {summary["spearman"]:.3f}, median ratio '
                 f'{summary["ratio_median"]:.3f}')
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))


def run(args: argparse.Namespace) -> dict:
    _check(args)
    cfg = load_config(args.config, args.cfg_options)
    work_dir = args.work_dir or osp.join(
        'work_dirs', osp.splitext(osp.basename(args.config))[0])
    logger = MMLogger.get_instance(
        'rdprune_mm_additivity', logger_name='rdprune_mm')
    pruner = PRUNERS.build(cfg.pruner)
    model, _ = build_detector(cfg, args.checkpoint,
                              args.device or default_device(),
                              cfg.get('randomness', {}).get('seed') or 0)
    batches = calibration_batches(cfg, model, cfg.get('calibration', {}))
    if args.checkpoint is None:
        recalibrate_batchnorm(model, batches)
        logger.warning('no --checkpoint given: random weights')
    targets = pruner.find_targets(model)
    original = [t.weight.detach().clone() for t in targets]
    result = pruner.prune(model, batches, osp.join(work_dir, 'curves'))
    with torch.no_grad():
        for target, weight in zip(targets, original):
            target.weight.copy_(weight)

    head = HeadOutputs(model, pruner.head_modules)
    reference = [head(batch) for batch in batches]

    def measure() -> float:
        return pruner.distortion(reference, [head(b) for b in batches])

    counts: List[np.ndarray] = [
        pruned_counts(t.num_params, pruner.sparsities) for t in targets
    ]
    costs = [t.num_params - c for t, c in zip(targets, counts)]
    samples = analyze_additivity(targets, result.curves, counts, costs,
                                 measure, args.budgets, args.samples,
                                 args.seed)
    summary = summarize(samples)
    rd_point = dict(
        budget=pruner.budget,
        kept_share=result.achieved_budget,
        predicted=result.predicted_distortion,
        measured=result.measured_distortion)
    report = dict(config=args.config, checkpoint=args.checkpoint,
                  rd_allocation=rd_point, **summary)
    write_json(osp.join(work_dir, 'additivity.json'), report)
    _plot(summary, rd_point, osp.join(work_dir, 'additivity.png'))
    print(f'{summary["samples"]} random allocations at budgets '
          f'{args.budgets}: Spearman {summary["spearman"]:.3f}, Pearson '
          f'(log) {summary["pearson_log"]:.3f}; measured/predicted median '
          f'{summary["ratio_median"]:.3f} (range {summary["ratio_min"]:.3f}'
          f'-{summary["ratio_max"]:.3f}); RD allocation ratio '
          f'{result.additivity_ratio:.3f}. Wrote additivity.json and '
          f'additivity.png to {work_dir}')
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool('analyze_additivity.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
