"""Accuracy against FLOPs on the benchmark CenterPoint, over training seeds:
RD weight pruning, one-shot and in two rounds while fine-tuning
(``rd-iter``), against uniform, global magnitude, LAMP and ERK
(``--kind weight``), or RD channel pruning against uniform, global L1
filter norm, BatchNorm scale and first-order Taylor (Fisher) channel
importance with the slim models' CPU latency (``--kind channel``), one-shot
and after the same fine-tuning.

Each seed's model is ``tools/train_benchmark.py``'s (trained first when
missing). Every (seed, method, budget) run is ``benchmarks/
bench_baselines.py``'s: the same calibration frames, the same fine-tuning
schedule and seed for every method, saved as it finishes, so the benchmark
runs in parts (``--seeds``, ``--methods``, ``--budgets`` choose one) and a
rerun skips what is done. Every finished run is also recorded in
``--out-dir`` (default ``docs/benchmarks``) as ``quality_<kind>_runs.json``,
which is committed, so runs of earlier sessions, whose work dirs are gone,
stay in the summary. The summary over all recorded runs, mean and spread
over seeds, goes to ``quality_<kind>.json``, ``.md`` and ``.png`` (mAP
against FLOPs, and against the measured speed-up for channels) beside it.
Example::

    python benchmarks/bench_quality.py --seeds 0 --methods rd lamp \
        --budgets 0.5                       # one part, about an hour here
    python benchmarks/bench_quality.py --kind channel --seeds 0 \
        --methods rd-channel l1-channel --budgets 0.5
    python benchmarks/bench_quality.py --summary-only [--kind channel]
"""
from __future__ import annotations

import argparse
import glob
import os.path as osp
import statistics
import sys
from typing import Dict, List

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
#: Shares of the FLOPs to keep: 2x, 3x, 3.89x (the paper's CenterPoint) and
#: 6x fewer.
BUDGETS = (1 / 2, 1 / 3, 1 / 3.89, 1 / 6)
#: Per kind: its methods (``bench_baselines.py``'s) and RD config.
KINDS = {
    'weight':
    (('rd', 'rd-iter', 'rd-refit', 'uniform', 'global', 'lamp', 'lamp-refit',
      'erk'), 'rdprune_mm::kitti_like/rd-weight_centerpoint_kitti-like.py'),
    'channel': (('rd-channel', 'uniform-channel', 'l1-channel', 'bn-channel',
                 'taylor-channel'),
                'rdprune_mm::kitti_like/rd-channel_centerpoint_kitti-like.py'),
}
CLASSES = ('Pedestrian', 'Cyclist', 'Car')
#: Methods whose allocation depends on the distortion measure: their runs
#: with different measures are different cells.
MEASURED_METHODS = ('rd', 'rd-iter', 'rd-refit', 'rd-channel')
#: The measure of runs recorded before runs named theirs (stop 32).
EARLIER_MEASURE = 'DecodedDistortion'


def parse_args(argv=None) -> argparse.Namespace:
    from rdprune_mm.demo.benchmark_model import parse_args as bench_args
    parser = argparse.ArgumentParser(
        description='RD weight or channel pruning against baselines on the '
        'benchmark CenterPoint, over training seeds.')
    parser.add_argument('--kind', choices=sorted(KINDS), default='weight')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--methods',
                        nargs='+',
                        help='default: every method of --kind')
    parser.add_argument('--budgets',
                        type=float,
                        nargs='+',
                        default=list(BUDGETS))
    parser.add_argument('--prune-config', help="default: the kind's RD config")
    parser.add_argument('--finetune-epochs', type=int, default=2)
    parser.add_argument('--latency-frames', type=int, default=10)
    parser.add_argument('--out-dir',
                        default=osp.join(REPO, 'docs', 'benchmarks'))
    parser.add_argument(
        '--summary-only',
        action='store_true',
        help='write the summary of the finished runs, run nothing')
    args, rest = parser.parse_known_args(argv)
    methods, config = KINDS[args.kind]
    args.methods = args.methods or list(methods)
    unknown = sorted(set(args.methods) - set(methods))
    if unknown:
        parser.error(f'--methods {unknown} are not {args.kind} methods; '
                     f'choose from {list(methods)} or change --kind')
    args.prune_config = args.prune_config or config
    # data, model and schedule: tools/train_benchmark.py's arguments
    args.model = bench_args(rest)
    return args


def baseline_args(args: argparse.Namespace, seed: int,
                  methods: List[str]) -> argparse.Namespace:
    """``bench_baselines.py``'s arguments for one seed's model."""
    import bench_baselines

    from rdprune_mm.demo.benchmark_model import seed_train_options
    model = args.model
    argv = [
        '--data-root',
        model.data_root,
        '--work-dir',
        osp.join(model.work_dir, f'seed{seed}'),
        '--out-dir',
        osp.join(model.work_dir, f'seed{seed}', 'quality'),
        '--num-train',
        str(model.num_train),
        '--num-val',
        str(model.num_val),
        '--seed',
        str(model.data_seed),
        '--train-config',
        model.config,
        '--prune-config',
        args.prune_config,
        '--epochs',
        str(model.epochs),
        '--finetune-epochs',
        str(args.finetune_epochs),
        '--latency-frames',
        str(args.latency_frames),
        '--budget-by',
        'flops',
        '--methods',
        *methods,
        '--budgets',
        *[f'{b:.6g}' for b in args.budgets],
        '--train-options',
        *seed_train_options(seed),
    ]
    if model.eval_num_val is not None:
        argv += ['--eval-num-val', str(model.eval_num_val)]
    return bench_baselines.parse_args(argv)


def val_suffix(model: argparse.Namespace) -> str:
    """What the files of one val set carry: ``''`` for the data root's val
    frames, ``_val<N>`` for ``--eval-num-val N`` (records of different val
    sets are never mixed)."""
    if model.eval_num_val in (None, model.num_val):
        return ''
    return f'_val{model.eval_num_val}'


def finished_runs(work_dir: str, seed: int, suffix: str = '') -> dict:
    """One seed's dense mAP and every finished run of bench_baselines
    under its model's work dir (all parts, whichever invocation ran them),
    on the val set of :func:`val_suffix` ``suffix``."""
    from rdprune_mm.demo.step_dir import DONE_FILE, read_json
    seed_dir = osp.join(work_dir, f'seed{seed}')
    dense = read_json(osp.join(seed_dir, f'eval_dense{suffix}', DONE_FILE))
    runs = []
    for path in sorted(
            glob.glob(
                osp.join(seed_dir, 'quality', 'runs', '*',
                         f'result{suffix}.json'))):
        record = read_json(path)
        if record is not None:
            runs.append(record['result'])
    return dict(dense=None if dense is None else dense['result']['ap'],
                runs=runs)


def run_measure(run: dict) -> str:
    """The distortion measure that chose the run's allocation ('' for
    methods that use none)."""
    if run['method'] not in MEASURED_METHODS:
        return ''
    return run.get('measure', EARLIER_MEASURE)


def cell_key(run: dict) -> tuple:
    """``(method, measure, budget)`` of a run: the cell it belongs to."""
    return run['method'], run_measure(run), round(run['budget'], 6)


def method_label(method: str, measure: str, current: str) -> str:
    """The method, with its measure when it is not the RD config's."""
    return method if measure in ('', current) else f'{method} ({measure})'


def ledger_path(out_dir: str, kind: str, suffix: str = '') -> str:
    """The committed record of every finished run of ``kind`` on one val
    set (:func:`val_suffix`), per seed."""
    return osp.join(out_dir, f'quality_{kind}{suffix}_runs.json')


def add_to_ledger(ledger: dict, seed: int, found: dict,
                  methods: List[str]) -> None:
    """Put one seed's work-dir results into ``ledger`` in place.

    The ledger outlives the work dirs (it is committed), so results of
    earlier sessions stay in the summary. A run found in the work dir
    replaces the ledger's run of the same method and budget; runs of other
    methods than ``methods`` are left out.
    """
    entry = ledger.setdefault('seeds',
                              {}).setdefault(str(seed),
                                             dict(dense=None, runs=[]))
    if found['dense'] is not None:
        entry['dense'] = found['dense']
    runs = {cell_key(r): r for r in entry['runs']}
    for run in found['runs']:
        if run['method'] in methods:
            runs[cell_key(run)] = run
    entry['runs'] = [runs[key] for key in sorted(runs)]


def _mean_std(values: List[float]) -> tuple:
    return (statistics.mean(values),
            statistics.stdev(values) if len(values) > 1 else None)


def summarize(benches: Dict[int, dict],
              methods: List[str],
              measure: str = EARLIER_MEASURE) -> dict:
    """Mean and spread over seeds per (method, measure, budget), for
    ``methods``; rows of another measure than ``measure`` (the RD config's)
    name theirs."""
    cells: Dict[tuple, List[dict]] = {}
    for seed, bench in benches.items():
        dense = bench['dense'] and bench['dense']['Overall']['3D']
        for run in bench['runs']:
            if run['method'] not in methods:
                continue
            cells.setdefault(cell_key(run),
                             []).append(dict(run, seed=seed, dense_3D=dense))
    dense = [
        b['dense']['Overall']['3D'] for b in benches.values()
        if b['dense'] is not None
    ]
    rows = []
    for (method, run_measure_,
         budget), runs in sorted(cells.items(),
                                 key=lambda c: (-c[0][2], c[0][0], c[0][1])):
        row = dict(method=method_label(method, run_measure_, measure),
                   measure=run_measure_,
                   budget=budget,
                   seeds=[r['seed'] for r in runs])
        for key in ('oneshot', 'finetuned'):
            for kind in ('3D', 'BEV'):
                row[f'{key}_{kind}'], row[f'{key}_{kind}_std'] = _mean_std(
                    [r[f'ap_{key}']['Overall'][kind] or 0.0 for r in runs])
        paired = [
            r['dense_3D'] - (r['ap_finetuned']['Overall']['3D'] or 0.0)
            for r in runs if r['dense_3D'] is not None
        ]
        row['finetuned_3D_below_dense'], row[
            'finetuned_3D_below_dense_std'] = (_mean_std(paired) if paired else
                                               (None, None))
        row['finetuned_3D_by_class'] = {
            c: statistics.mean(r['ap_finetuned'][c]['3D'] or 0.0 for r in runs)
            for c in CLASSES
        }
        if all(r.get('latency') for r in runs):
            row['speedup'], row['speedup_std'] = _mean_std(
                [r['latency']['speedup'] for r in runs])
        row['flops_kept'] = statistics.mean(r['flops_kept'] for r in runs)
        rows.append(row)
    return dict(
        dense_3d=statistics.mean(dense) if dense else None,
        dense_3d_std=statistics.stdev(dense) if len(dense) > 1 else None,
        dense_seeds=sorted(s for s, b in benches.items()
                           if b['dense'] is not None),
        rows=rows)


def table(summary: dict) -> str:

    def cell(mean, std):
        return f'{mean:.2f}' + ('' if std is None else f' ± {std:.2f}')

    lines = [
        'Benchmark CenterPoint, built-in KITTI-layout data; mAP (moderate, '
        f'AP40, {summary.get("val_frames", 400)} val frames) mean ± std over '
        'the seeds listed. Dense mAP 3D: ' +
        ('-' if summary['dense_3d'] is None else cell(
            summary['dense_3d'], summary['dense_3d_std'])) +
        f' (seeds {summary["dense_seeds"]}). "Below dense" pairs each seed'
        "'s fine-tuned mAP 3D with that seed's dense model.", '',
        '| method | FLOPs kept | seeds | mAP 3D one-shot | mAP 3D fine-tuned '
        '| below dense, fine-tuned | mAP BEV fine-tuned | ' +
        ' | '.join(f'{c} 3D' for c in CLASSES) + ' | CPU speed-up |',
        '|---|---:|---|---:|---:|---:|---:|' + '---:|' * len(CLASSES) + '---:|'
    ]
    for row in summary['rows']:
        speedup = ('-' if 'speedup' not in row else
                   cell(row['speedup'], row['speedup_std']) + 'x')
        below = ('-' if row['finetuned_3D_below_dense'] is None else cell(
            row['finetuned_3D_below_dense'],
            row['finetuned_3D_below_dense_std']))
        lines.append(
            f'| {row["method"]} | {row["flops_kept"]:.3f} '
            f'(1/{1 / row["budget"]:.2f}) | {row["seeds"]} | '
            f'{cell(row["oneshot_3D"], row["oneshot_3D_std"])} | '
            f'{cell(row["finetuned_3D"], row["finetuned_3D_std"])} | '
            f'{below} | '
            f'{cell(row["finetuned_BEV"], row["finetuned_BEV_std"])} | ' +
            ' | '.join(f'{row["finetuned_3D_by_class"][c]:.2f}'
                       for c in CLASSES) + f' | {speedup} |')
    return '\n'.join(lines) + '\n'


def plot(summary: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from rdprune_mm.fileio import atomic_write
    timed = any('speedup' in r for r in summary['rows'])
    fig = Figure(figsize=(12 if timed else 7, 4.5), layout='tight')
    FigureCanvasAgg(fig)
    panels = [('FLOPs reduction (x)', lambda r: 1 / r['budget'])]
    if timed:
        panels.append(('measured CPU speed-up (x)',
                       lambda r: r.get('speedup', float('nan'))))
    for index, (xlabel, x_of) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for method in sorted({r['method'] for r in summary['rows']}):
            rows = sorted(
                (r for r in summary['rows'] if r['method'] == method),
                key=lambda r: -r['budget'])
            ax.errorbar([x_of(r) for r in rows],
                        [r['finetuned_3D'] for r in rows],
                        yerr=[r['finetuned_3D_std'] or 0 for r in rows],
                        marker='o',
                        capsize=3,
                        label=method)
        if summary['dense_3d'] is not None:
            ax.axhline(summary['dense_3d'],
                       color='k',
                       linestyle='--',
                       label='dense')
        ax.set_xlabel(xlabel)
        ax.set_ylabel('mAP 3D fine-tuned (moderate, AP40)')
        ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png', dpi=110))


def run(args: argparse.Namespace) -> dict:
    import bench_baselines

    from rdprune_mm.demo.benchmark_model import seed_job
    from rdprune_mm.fileio import write_json, write_text
    if not args.summary_only:
        for seed in args.seeds:
            # the model of tools/train_benchmark.py, trained when missing
            seed_job(args.model, seed, print).dense()
            bench_baselines.run(baseline_args(args, seed, args.methods))
    from rdprune_mm.demo.step_dir import read_json
    suffix = val_suffix(args.model)
    ledger_file = ledger_path(args.out_dir, args.kind, suffix)
    ledger = read_json(ledger_file) or dict(seeds={})
    ledger['val_frames'] = args.model.eval_num_val or args.model.num_val
    for seed in args.seeds:
        add_to_ledger(ledger, seed,
                      finished_runs(args.model.work_dir, seed, suffix),
                      list(KINDS[args.kind][0]))
    write_json(ledger_file, ledger)
    benches = {int(seed): bench for seed, bench in ledger['seeds'].items()}
    if not any(b['runs'] for b in benches.values()):
        print('no finished runs to summarize')
        return {}
    from rdprune_mm.apis.distortion_study import measure_spec
    from rdprune_mm.demo import load_config
    measure = measure_spec(
        load_config(args.prune_config).pruner.get('distortion'))
    summary = summarize(benches, args.methods, measure)
    if not summary['rows']:
        print(f'no finished {args.kind} runs to summarize')
        return {}
    summary['val_frames'] = ledger['val_frames']
    name = osp.join(args.out_dir, f'quality_{args.kind}{suffix}')
    write_json(name + '.json', summary)
    write_text(name + '.md', table(summary))
    plot(summary, name + '.png')
    print(table(summary))
    return summary


def main(argv=None) -> int:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rdprune_mm.errors import run_tool
    args = parse_args(argv)
    return run_tool('bench_quality.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
