"""Taylor (gradient-sketch) curves against empirical curves: speed and
faithfulness, on one config with the same levels and calibration frames.

Measured in one run:

* time of the Taylor curves (sketch + curves, nothing cached) and of one
  empirical calibration pass, extrapolated to the empirical curves' layers x
  levels passes (the empirical curves themselves come from a cache shared
  with ``tools/prune.py``: they take the better part of an hour on the full
  CenterPoint config, so run them once and point ``--empirical-cache`` at
  them);
* per-layer Spearman rank correlation between the two curves;
* the allocation each set of curves yields at every ``--budgets`` entry, and
  the distortion measured when the model is pruned by it.

Writes ``taylor_vs_empirical.json``, ``.md`` and ``.png`` to ``--work-dir``.

Usage:
    .venv/bin/python benchmarks/bench_taylor_curves.py \\
        configs/centerpoint/rd-weight_centerpoint_voxel01_second_secfpn_nus.py \\
        --empirical-cache work_dirs/centerpoint_full_empirical/curves
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import platform
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch
from mmengine.config import DictAction
from mmengine.logging import MMLogger
from scipy.stats import spearmanr

import rdprune_mm
from rdprune_mm.apis import (config_seed, default_device, load_config,
                             prepare_detector)
from rdprune_mm.fileio import atomic_write, write_json, write_text
from rdprune_mm.masks import mask_from_order
from rdprune_mm.registry import PRUNERS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join(
    'configs', 'centerpoint',
    'rd-weight_centerpoint_voxel01_second_secfpn_nus.py')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    parser.add_argument('--checkpoint', help='trained checkpoint')
    parser.add_argument(
        '--empirical-cache',
        help='curve cache folder of the empirical curves (default: '
        'work_dirs/<config name>/curves, as tools/prune.py writes it)')
    parser.add_argument('--work-dir', default='work_dirs/bench_taylor')
    parser.add_argument(
        '--budgets', type=float, nargs='+', default=[0.5, 0.75])
    parser.add_argument(
        '--timing-passes',
        type=int,
        default=10,
        help='empirical passes timed in this run')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def _restore(targets, weights) -> None:
    with torch.no_grad():
        for target, weight in zip(targets, weights):
            target.weight.copy_(weight)


def _seconds_per_pass(rd, passes: int) -> float:
    """Time empirical passes as :func:`empirical_curves` runs them: the
    largest layer pruned to half, one calibration pass each."""
    target_index = max(
        range(len(rd.targets)), key=lambda i: rd.targets[i].num_params)
    target = rd.targets[target_index]
    original = target.weight.detach().clone()
    mask = mask_from_order(rd.orders[target_index], original.shape,
                           original.numel() // 2)
    with torch.no_grad():
        target.weight.masked_fill_(~mask, 0.0)
        start = time.perf_counter()
        for _ in range(passes):
            rd.measure()
        seconds = (time.perf_counter() - start) / passes
        target.weight.copy_(original)
    return seconds


def _spearman(empirical: Dict[str, np.ndarray],
              taylor: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Per layer, over the levels; layers whose curve is constant in
    either estimate (nothing to rank) are left out."""
    result = {}
    for name, curve in empirical.items():
        if np.ptp(curve) == 0 or np.ptp(taylor[name]) == 0:
            continue
        result[name] = float(spearmanr(curve, taylor[name]).statistic)
    return result


def _plot(empirical, taylor, spearman, rows, path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(13, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax_hist, ax_scatter, ax_budget = fig.subplots(1, 3)
    ax_hist.hist(list(spearman.values()), bins=20, range=(-1, 1))
    ax_hist.set_xlabel('Spearman, Taylor vs empirical curve')
    ax_hist.set_ylabel('layers')
    ax_hist.set_title(
        f'median {np.median(list(spearman.values())):.3f}')
    emp = np.concatenate([c[1:] for c in empirical.values()])
    tay = np.concatenate([taylor[n][1:] for n in empirical])
    keep = (emp > 0) & (tay > 0)
    ax_scatter.loglog(emp[keep], tay[keep], '.', ms=2, alpha=0.4)
    low, high = min(emp[keep].min(), tay[keep].min()), max(
        emp[keep].max(), tay[keep].max())
    ax_scatter.plot([low, high], [low, high], 'k--', lw=0.8)
    ax_scatter.set_xlabel('empirical D_l(k)')
    ax_scatter.set_ylabel('Taylor D_l(k)')
    ax_scatter.set_title('every layer and level')
    budgets = [r['budget'] for r in rows]
    width = 0.35
    x = np.arange(len(budgets))
    ax_budget.bar(x - width / 2, [r['empirical_measured'] for r in rows],
                  width, label='empirical curves')
    ax_budget.bar(x + width / 2, [r['taylor_measured'] for r in rows],
                  width, label='Taylor curves')
    ax_budget.set_xticks(x, [f'keep {b:g}' for b in budgets])
    ax_budget.set_ylabel('measured distortion of the allocation')
    ax_budget.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))


def _markdown(report: dict) -> str:
    t = report['timing']
    lines = [
        f'# Taylor vs empirical curves: `{report["config"]}`', '',
        f'{report["layers"]} layers x {report["levels"] - 1} levels, '
        f'{report["calibration_frames"]} calibration frame(s), '
        f'{report["num_projections"]} projections per frame; '
        f'{report["machine"]}, torch {report["torch"]}.', '',
        '| | seconds |', '|---|---:|',
        f'| Taylor curves (sketch + curves) | {t["taylor_seconds"]:.1f} |',
        f'| one empirical pass | {t["empirical_seconds_per_pass"]:.3f} |',
        f'| empirical curves, {t["empirical_passes"]} passes '
        f'(extrapolated) | {t["empirical_seconds"]:.0f} |',
        f'| speed-up | {t["speedup"]:.1f}x |', '',
        f'Spearman per layer over the levels: median '
        f'{report["spearman_median"]:.3f}, 10th percentile '
        f'{report["spearman_p10"]:.3f}, minimum '
        f'{report["spearman_min"]:.3f} ({report["spearman_layers"]} layers '
        'with a non-constant curve).', '',
        '| keep | distortion measured, empirical curves | Taylor curves | '
        'Taylor / empirical |', '|---:|---:|---:|---:|'
    ]
    for row in report['allocations']:
        lines.append(
            f'| {row["budget"]:g} | {row["empirical_measured"]:.4g} | '
            f'{row["taylor_measured"]:.4g} | {row["ratio"]:.3f} |')
    return '\n'.join(lines) + '\n'


def run(args: argparse.Namespace) -> dict:
    cfg = load_config(args.config, args.cfg_options)
    logger = MMLogger.get_instance(
        'rdprune_mm_bench_taylor', logger_name='rdprune_mm')
    device = default_device()
    seed = config_seed(cfg)
    model, _, batches = prepare_detector(cfg, args.checkpoint, device, seed)
    empirical = PRUNERS.build(dict(cfg.pruner, curves='empirical'))
    taylor = PRUNERS.build(dict(cfg.pruner, curves='taylor'))
    targets = empirical.find_targets(model)
    original = [t.weight.detach().clone() for t in targets]
    empirical_cache = args.empirical_cache or osp.join(
        'work_dirs',
        osp.splitext(osp.basename(args.config))[0], 'curves')
    os.makedirs(args.work_dir, exist_ok=True)
    taylor_cache = tempfile.mkdtemp(dir=args.work_dir, prefix='taylor-')

    rd_taylor = taylor.rate_distortion(model, batches, taylor_cache)
    logger.info(f'Taylor curves: {rd_taylor.seconds:.1f} s')
    rd_empirical = empirical.rate_distortion(model, batches,
                                             empirical_cache)
    seconds_per_pass = _seconds_per_pass(rd_empirical, args.timing_passes)
    passes = len(targets) * (len(empirical.sparsities) - 1)
    spearman = _spearman(rd_empirical.curves, rd_taylor.curves)

    rows: List[dict] = []
    for budget in args.budgets:
        measured = {}
        for name, pruner, cache in (('empirical', empirical,
                                     empirical_cache),
                                    ('taylor', taylor, taylor_cache)):
            pruner.budget = budget
            result = pruner.prune(model, batches, cache)
            measured[name] = result
            _restore(targets, original)
        rows.append(
            dict(
                budget=budget,
                empirical_measured=measured['empirical'].measured_distortion,
                taylor_measured=measured['taylor'].measured_distortion,
                empirical_predicted=measured[
                    'empirical'].predicted_distortion,
                taylor_predicted=measured['taylor'].predicted_distortion,
                empirical_kept=measured['empirical'].achieved_budget,
                taylor_kept=measured['taylor'].achieved_budget,
                ratio=measured['taylor'].measured_distortion /
                measured['empirical'].measured_distortion))

    values = np.array(list(spearman.values()))
    report = dict(
        config=args.config,
        checkpoint=args.checkpoint,
        machine=f'{platform.processor() or platform.machine()}, '
        f'{torch.get_num_threads()} threads, {device}',
        torch=torch.__version__,
        rdprune_mm=rdprune_mm.__version__,
        seed=seed,
        layers=len(targets),
        levels=len(empirical.sparsities),
        calibration_frames=len(batches),
        num_projections=taylor.sketch_cfg['num_projections'],
        sketch_seed=taylor.sketch_cfg['seed'],
        timing=dict(
            taylor_seconds=rd_taylor.seconds,
            empirical_seconds_per_pass=seconds_per_pass,
            empirical_passes=passes,
            empirical_seconds=seconds_per_pass * passes,
            speedup=seconds_per_pass * passes / rd_taylor.seconds),
        spearman_median=float(np.median(values)),
        spearman_p10=float(np.percentile(values, 10)),
        spearman_min=float(values.min()),
        spearman_layers=len(values),
        spearman=spearman,
        allocations=rows)
    base = osp.join(args.work_dir, 'taylor_vs_empirical')
    write_json(base + '.json', report)
    write_text(base + ".md", _markdown(report))
    _plot(rd_empirical.curves, rd_taylor.curves, spearman, rows,
          base + '.png')
    print(_markdown(report))
    print(f'wrote {base}.json, .md and .png')
    return report


if __name__ == '__main__':
    run(parse_args())
    sys.exit(0)
