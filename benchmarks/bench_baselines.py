"""RD pruning against uniform, global magnitude, LAMP and ERK allocation on
the demo's trained detector, at equal budgets, one-shot and after the same
fine-tuning; or, with the channel methods (``--methods rd-channel
uniform-channel l1-channel bn-channel taylor-channel``), RD channel pruning
against uniform, global L1 filter norm, BatchNorm scale (Network Slimming)
and first-order Taylor (Fisher) channel importance, with the same slimming
code, fine-tuning of the slim model and its CPU latency against the dense
model's in the same process.

Every method goes through the same path: ``tools/prune.py`` (masks, budget
in FLOPs or parameters, measured head-output distortion, ``allocation.json``)
with only ``pruner.type`` / ``pruner.allocation`` switched, KittiMetric of the
one-shot model, ``tools/prune.py --finetune`` (``RDPruneHook`` holding the
masks, the same schedule and seed for every method) and KittiMetric again.
RD's curves are measured once and shared by all budgets (one curve cache).
Each (method, budget) run is saved as it finishes; a rerun skips finished
runs and resumes an interrupted one.

The dense model, data and schedule are the demo's (``tools/demo.py``,
:class:`rdprune_mm.demo.Job`): the benchmark trains them first when they are
missing. Example::

    python benchmarks/bench_baselines.py                  # 5 methods x 3 budgets
    python benchmarks/bench_baselines.py --quick          # 5 methods x 1 budget
    python benchmarks/bench_baselines.py --budgets 0.5 0.25 --budget-by params

Outputs (``--out-dir``, default ``<work dir>/bench``): ``results.md``,
``results.png`` (distortion before fine-tuning and mAP after it, against the
reduction), ``results.json`` (every run, the machine, versions, seeds, times)
and ``runs/<method>-<unit>-<budget>/`` per run.
"""
from __future__ import annotations

import argparse
import math
import os.path as osp
import sys
import time
from typing import Any, Dict, List

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
METHODS = ('rd', 'uniform', 'global', 'lamp', 'erk')
#: RD pruning in rounds while fine-tuning (``RDPruneHook`` rounds), chosen
#: by name: it needs two fine-tuning epochs or more.
ITERATIVE_METHODS = ('rd-iter', )
#: RD and LAMP followed by the compensate stage's least-squares refit of the
#: kept weights on the first REFIT_FRAMES train frames
#: (``pruner.compensate`` ``reconstruct`` and ``num_samples``), chosen by
#: name; RD's curves are measured after each layer's refit
#: (``pruner.compensate.curves``), so that its allocation counts the refit.
REFIT_METHODS = ('rd-refit', 'lamp-refit')
#: Frames of the refit: with the curves' 4, a refit at 3.89x fewer FLOPs
#: fits those frames and not others (docs/compensation.md).
REFIT_FRAMES = 32
#: Every weight method after the default ones.
NAMED_METHODS = ITERATIVE_METHODS + REFIT_METHODS
#: Channel pruning: RD, and the baselines' (allocation, ranking).
CHANNEL_METHODS = ('rd-channel', 'uniform-channel', 'l1-channel', 'bn-channel',
                   'taylor-channel')
CHANNEL_BASELINES = {
    'uniform-channel': ('uniform', 'l2'),
    'l1-channel': ('global', 'l1'),
    'bn-channel': ('global', 'bn'),
    'taylor-channel': ('global', 'fisher'),
}
#: The demo's channel pruning config (the default of channel methods).
CHANNEL_PRUNE_CONFIG = \
    'rdprune_mm::kitti_like/rd-channel_second_tiny_kitti-like.py'
LABELS = {
    'rd': 'RD',
    'rd-iter': 'RD, 2 rounds',
    'rd-refit': 'RD + refit',
    'lamp-refit': 'LAMP + refit',
    'uniform': 'uniform',
    'global': 'global magnitude',
    'lamp': 'LAMP',
    'erk': 'ERK',
    'rd-channel': 'RD channels',
    'uniform-channel': 'uniform channels (L2)',
    'l1-channel': 'global L1 filter norm',
    'bn-channel': 'BatchNorm scale',
    'taylor-channel': 'Taylor (Fisher)'
}
DEFAULT_BUDGETS = (0.5, 0.25, 0.125)  # 2x, 4x, 8x fewer
QUICK_BUDGETS = (0.25, )


def label(method: str) -> str:
    return LABELS.get(method, method)


def is_channel(method: str) -> bool:
    """Whether the method prunes channels (a slim model) or weights."""
    return method in CHANNEL_METHODS


def method_order(method: str) -> int:
    return (METHODS + NAMED_METHODS + CHANNEL_METHODS).index(method)


def parse_args(argv=None) -> argparse.Namespace:
    from rdprune_mm.demo import DATA_ROOT, PRUNE_CONFIG, TRAIN_CONFIG
    parser = argparse.ArgumentParser(
        description='RD pruning against uniform, global magnitude, LAMP '
        'and ERK on the demo detector: distortion one-shot, mAP one-shot '
        'and after fine-tuning.')
    parser.add_argument('--data-root', default=DATA_ROOT)
    parser.add_argument(
        '--work-dir',
        default='work_dirs/kitti_like',
        help="the demo's work dir (its dense model is reused)")
    parser.add_argument(
        '--out-dir', help='benchmark outputs (default: <work dir>/bench)')
    parser.add_argument('--num-train', type=int, default=200)
    parser.add_argument('--num-val', type=int, default=50)
    parser.add_argument(
        '--seed', type=int, default=0, help='seed of the data simulation')
    parser.add_argument(
        '--eval-num-val',
        type=int,
        help='evaluate on this many val frames (the demo\'s option: a '
        'second data root with the same train frames); results are kept '
        'per val set')
    parser.add_argument('--train-config', default=TRAIN_CONFIG)
    parser.add_argument(
        '--prune-config',
        help='the RD pruning config every method switches the pruner of '
        f'(default: {PRUNE_CONFIG}, or {CHANNEL_PRUNE_CONFIG} for the '
        'channel methods)')
    parser.add_argument('--epochs', type=int, help='dense training epochs')
    parser.add_argument(
        '--finetune-epochs',
        type=int,
        default=1,
        help='fine-tuning epochs of every run (same schedule and seed)')
    parser.add_argument(
        '--methods',
        nargs='+',
        choices=METHODS + NAMED_METHODS + CHANNEL_METHODS,
        default=list(METHODS),
        help='weight methods, or channel methods (not both in one run); '
        'rd-iter (RD in two rounds while fine-tuning), rd-refit and '
        'lamp-refit (the kept weights refitted by least squares after the '
        'pruning) are run only when named')
    parser.add_argument(
        '--latency-frames',
        type=int,
        default=5,
        help='val frames the dense and every slim model are timed on')
    parser.add_argument(
        '--budgets',
        nargs='+',
        type=float,
        help='shares to keep (default 0.5 0.25 0.125: 2x, 4x, 8x fewer)')
    parser.add_argument(
        '--budget-by', choices=('params', 'flops'), default='flops')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='one budget (0.25) unless --budgets is given')
    parser.add_argument('--train-options', nargs='+', default=None)
    parser.add_argument(
        '--prune-options',
        nargs='+',
        default=None,
        help='key=value overrides of the pruning config for every run')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='redo every run (and the dense model)')
    args = parser.parse_args(argv)
    kinds = {is_channel(m) for m in args.methods}
    if len(kinds) > 1:
        parser.error('--methods: give weight methods or channel methods, '
                     'not both; run them as two parts')
    args.channels = kinds == {True}
    if args.prune_config is None:
        args.prune_config = (CHANNEL_PRUNE_CONFIG
                             if args.channels else PRUNE_CONFIG)
    if args.budgets is None:
        args.budgets = list(QUICK_BUDGETS if args.quick else DEFAULT_BUDGETS)
    return args


def demo_args(args: argparse.Namespace) -> argparse.Namespace:
    """The demo's arguments for the shared steps (data, dense model)."""
    from rdprune_mm.demo import parse_args as parse_demo_args
    argv = [
        '--data-root', args.data_root, '--work-dir', args.work_dir,
        '--num-train', str(args.num_train), '--num-val', str(args.num_val),
        '--seed', str(args.seed), '--train-config', args.train_config,
        '--prune-config', args.prune_config,
        '--finetune-epochs', str(args.finetune_epochs)
    ]
    if args.epochs is not None:
        argv += ['--epochs', str(args.epochs)]
    if args.eval_num_val is not None:
        argv += ['--eval-num-val', str(args.eval_num_val)]
    if args.train_options:
        argv += ['--train-options', *args.train_options]
    if args.prune_options:
        argv += ['--prune-options', *args.prune_options]
    if args.overwrite:
        argv.append('--overwrite')
    return parse_demo_args(argv)


def iterative_schedule(budget: float, finetune_epochs: int) -> dict:
    """``prune_schedule`` of ``rd-iter``: RDPruneHook keeps
    ``sqrt(budget)`` before fine-tuning and ``budget`` after half of its
    epochs, with curves measured again on the fine-tuned model."""
    from rdprune_mm.errors import PruningInputError
    if finetune_epochs < 2:
        raise PruningInputError(
            'rd-iter prunes a second time after half of the fine-tuning; '
            'give --finetune-epochs 2 or more')
    return dict(by_epoch=True,
                rounds=[
                    dict(at=0, budget=math.sqrt(budget)),
                    dict(at=finetune_epochs // 2, budget=budget)
                ])


def method_options(method: str, budget: float, budget_by: str,
                   finetune_epochs: int) -> dict:
    options = {'pruner.budget': budget, 'pruner.budget_by': budget_by}
    if method in REFIT_METHODS:
        method = method[:-len('-refit')]
        options['pruner.compensate.reconstruct'] = True
        options['pruner.compensate.num_samples'] = REFIT_FRAMES
        if method == 'rd':
            options['pruner.compensate.curves'] = True
    if method in ('rd', 'rd-iter'):
        options['pruner.type'] = 'RDWeightPruner'
        if method == 'rd-iter':
            options['prune_schedule'] = iterative_schedule(
                budget, finetune_epochs)
    elif method == 'rd-channel':
        options['pruner.type'] = 'RDChannelPruner'
    elif is_channel(method):
        allocation, ranking = CHANNEL_BASELINES[method]
        options['pruner.type'] = 'ChannelBaselinePruner'
        options['pruner.allocation'] = allocation
        options['pruner.ranking'] = ranking
    else:
        options['pruner.type'] = 'MagnitudeWeightPruner'
        options['pruner.allocation'] = method
    return options


def run_one(job, method: str, budget: float, args, out_dir: str) -> dict:
    """Prune, evaluate, fine-tune and evaluate one (method, budget)."""
    from rdprune_mm.apis import read_checkpoint
    from rdprune_mm.apis.distortion_study import measure_spec
    from rdprune_mm.demo import (file_digest, load_config, merge_options,
                                 read_json)
    from rdprune_mm.errors import PruningInputError
    from rdprune_mm.fileio import write_json
    options = merge_options(
        job.options['prune'],
        method_options(method, budget, args.budget_by, args.finetune_epochs))
    name = f'{method}-{args.budget_by}-{budget:g}'
    folder = job.pruned_dir(
        osp.join(out_dir, 'runs', name), options, method=method,
        budget=budget)
    result_file = osp.join(folder.path, f'result{job.eval_suffix}.json')
    done = read_json(result_file)
    if not args.overwrite and done is not None and \
            done.get('settings') == folder.settings:
        job.log(f'{name}: finished before, reused')
        return done['result']
    start = time.perf_counter()
    pruned = job.prune(folder,
                       options,
                       curves_dir=osp.join(args.work_dir, 'curves')
                       if method.startswith('rd') else None)
    # a channel-pruned model is evaluated and timed as the slim model, with
    # the structure its slim.pth holds (fine-tuning rewrites structure.json)
    oneshot_checkpoint, structure = pruned['checkpoint'], None
    if is_channel(method):
        oneshot_checkpoint = osp.join(folder.path, 'slim.pth')
        structure = osp.join(folder.path, 'structure_oneshot.json')
        slim = read_checkpoint(oneshot_checkpoint)
        write_json(structure, slim['meta']['rdprune_mm']['channel_structure'])
    oneshot = job.evaluation(osp.join(folder.path, 'eval_oneshot'),
                             f'{name} one-shot',
                             oneshot_checkpoint,
                             file_digest(oneshot_checkpoint),
                             'eval_oneshot',
                             structure=structure)
    tuned = job.finetune(folder, options)
    finetuned = job.evaluation(osp.join(folder.path, 'eval_finetuned'),
                               f'{name} fine-tuned',
                               tuned['checkpoint'],
                               tuned['checkpoint_digest'],
                               'eval_finetuned',
                               structure=structure)
    latency = None
    if is_channel(method):
        latency = slim_latency(job, tuned['checkpoint'], structure,
                               args.latency_frames)
    totals = pruned['totals']
    achieved = pruned['budget']['achieved']
    # the fine-tuned masks: the one-shot ones, or rd-iter's last round's
    rounds = (tuned.get('masks') or {}).get('rounds') or []
    achieved_finetuned = rounds[-1]['budget_achieved'] if rounds else achieved
    for kept in (achieved, achieved_finetuned):
        if kept > budget * (1 + 1e-6):
            raise PruningInputError(
                f'{name}: kept {kept:.4f} of the {args.budget_by}, over the '
                f'budget {budget}')
    pruner = load_config(args.prune_config, options).pruner
    result = dict(method=method,
                  budget=budget,
                  measure=measure_spec(pruner.get('distortion')),
                  budget_by=args.budget_by,
                  achieved=achieved,
                  achieved_finetuned=achieved_finetuned,
                  params_kept=totals['params_kept'],
                  flops_kept=totals['flops_kept'],
                  params_after=totals['params_after'],
                  flops_after=totals['flops_after'],
                  distortion=totals['measured_distortion'],
                  predicted_distortion=totals.get('predicted_distortion'),
                  ap_oneshot=oneshot['ap'],
                  ap_finetuned=finetuned['ap'],
                  masks_held=tuned.get('masks'),
                  structure_held=tuned.get('structure'),
                  latency=latency,
                  val_frames=job.val_frames,
                  prune_seconds=pruned['seconds'],
                  seconds=time.perf_counter() - start)
    write_json(result_file, dict(settings=folder.settings, result=result))
    return result


def slim_latency(job, checkpoint: str, structure: str,
                 num_frames: int) -> dict:
    """CPU time per val frame of the dense and the slim model, timed in
    this process one after the other, and the speed-up (dense / slim
    median)."""
    from rdprune_mm.demo import steps
    times = steps.latency(job.args.train_config,
                          job.options['train'],
                          dict(dense=job.dense_record['checkpoint'],
                               slim=checkpoint),
                          num_frames,
                          structures=dict(slim=structure))
    times['speedup'] = times['dense']['median_ms'] / times['slim']['median_ms']
    return times


def _f(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '-'
    return f'{value:.{digits}f}'


def results_table(bench: dict) -> str:
    unit = bench['budget_by']
    dense = bench['dense']['ap']
    measure = bench.get('pruner', {}).get('distortion',
                                          {}).get('type', 'NormalizedMSE')
    lines = [
        f'Dense model: mAP 3D {_f(dense["Overall"]["3D"])}, BEV '
        f'{_f(dense["Overall"]["BEV"])}; Car 3D {_f(dense["Car"]["3D"])} '
        f'(moderate, AP40, {bench.get("val_frames", "the")} val frames). '
        'Budget: share of the prunable layers\' '
        f'{unit} kept. Distortion: {measure} of the head outputs on the '
        'calibration frames, before fine-tuning.',
        '',
        '| method | keep (' + unit + ') | reduction | achieved | weights '
        'kept | FLOPs kept | distortion | mAP 3D one-shot | mAP 3D '
        'fine-tuned | mAP BEV fine-tuned | Car 3D fine-tuned | CPU '
        'speed-up |',
        '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ]
    for r in sorted(bench['runs'],
                    key=lambda r: (-r['budget'], method_order(r['method']))):
        lines.append(f'| {label(r["method"])} | {r["budget"]:g} | '
                     f'{1 / r["budget"]:.0f}x | {r["achieved"]:.4f} | '
                     f'{r["params_kept"]:.3f} | {r["flops_kept"]:.3f} | '
                     f'{r["distortion"]:.4g} | '
                     f'{_f(r["ap_oneshot"]["Overall"]["3D"])} | '
                     f'{_f(r["ap_finetuned"]["Overall"]["3D"])} | '
                     f'{_f(r["ap_finetuned"]["Overall"]["BEV"])} | '
                     f'{_f(r["ap_finetuned"]["Car"]["3D"])} | ' +
                     ('-' if not r.get('latency') else
                      f'{r["latency"]["speedup"]:.2f}x') + ' |')
    env = bench['environment']
    lines += [
        '',
        f'Machine: {env["platform"]}, {env["cpu_count"]} CPUs, '
        f'{env["torch_threads"]} torch threads; ' + ', '.join(
            f'{k} {v}' for k, v in env['versions'].items()) + '. Seeds: '
        f'data {bench["seeds"]["data"]}, training '
        f'{bench["seeds"]["training"]}, fine-tuning '
        f'{bench["seeds"]["finetuning"]}. Fine-tuning: '
        f'{bench["finetune_epochs"]} epoch(s) per run. The runs took '
        f'{sum(r["seconds"] for r in bench["runs"]) / 60:.1f} min (reused '
        'runs count the time they first took); this invocation took '
        f'{bench["seconds"]["total"] / 60:.1f} min.',
    ]
    return '\n'.join(lines) + '\n'


def plot(bench: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from rdprune_mm.fileio import atomic_write
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    dense = bench['dense']['ap']['Overall']['3D']
    panels = [
        ('distortion', 'head-output distortion, one-shot', True),
        ('oneshot', 'mAP 3D (moderate), one-shot', False),
        ('finetuned', 'mAP 3D (moderate), after fine-tuning', False),
    ]
    for ax, (key, title, log_y) in zip(axes, panels):
        for method in METHODS + NAMED_METHODS + CHANNEL_METHODS:
            runs = sorted((r for r in bench['runs'] if r['method'] == method),
                          key=lambda r: -r['budget'])
            if not runs:
                continue
            x = [1 / r['budget'] for r in runs]
            if key == 'distortion':
                y = [max(r['distortion'], 1e-12) for r in runs]
            else:
                y = [r[f'ap_{key}']['Overall']['3D'] or 0.0 for r in runs]
            ax.plot(x,
                    y,
                    marker='o',
                    label=label(method),
                    linewidth=2.5 if method.startswith('rd') else 1.5)
        if key != 'distortion' and dense is not None:
            ax.axhline(dense, color='k', linestyle='--', linewidth=1,
                       label='dense')
        ax.set_xscale('log', base=2)
        if log_y:
            ax.set_yscale('log')
        ax.set_xlabel(f'{bench["budget_by"]} reduction (x)')
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle('RD pruning against baseline allocations, SECOND on the '
                 'built-in KITTI-layout data')
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format='png'))
    plt.close(fig)


def run(args: argparse.Namespace) -> dict:
    from rdprune_mm.demo import Job, environment, load_config, make_logger
    from rdprune_mm.errors import PruningInputError
    from rdprune_mm.fileio import write_json, write_text
    for budget in args.budgets:
        if not 0 < budget <= 1:
            raise PruningInputError(
                f'--budgets: {budget} is outside (0, 1]; give shares to '
                'keep, e.g. 0.5 0.25 0.125')
    begin = time.perf_counter()
    out_dir = args.out_dir or osp.join(args.work_dir, 'bench')
    logger = make_logger(out_dir, 'bench')
    job = Job(demo_args(args), logger.info)
    job.data()
    dense = job.dense()
    dense_eval = job.evaluation(
        osp.join(args.work_dir, 'eval_dense'), 'the dense model',
        dense['checkpoint'], dense['checkpoint_digest'], 'eval_dense')
    runs: List[Dict[str, Any]] = []
    for budget in sorted(args.budgets, reverse=True):
        for method in args.methods:
            logger.info(f'--- {label(method)}, keep {budget:g} of the '
                        f'{args.budget_by}')
            runs.append(run_one(job, method, budget, args, out_dir))
    cfg = load_config(args.prune_config, job.options['prune'])
    train_cfg = load_config(args.train_config, job.options['train'])
    bench = dict(budget_by=args.budget_by,
                 budgets=args.budgets,
                 methods=args.methods,
                 finetune_epochs=args.finetune_epochs,
                 dense=dict(checkpoint=dense['checkpoint'],
                            ap=dense_eval['ap']),
                 val_frames=job.val_frames,
                 runs=runs,
                 seeds=dict(data=args.seed,
                            training=train_cfg.get('randomness',
                                                   {}).get('seed'),
                            finetuning=cfg.get('randomness', {}).get('seed'),
                            sketch=cfg.pruner.get('sketch', {}).get('seed')),
                 pruner=cfg.pruner.to_dict(),
                 calibration=cfg.calibration.to_dict(),
                 environment=environment(),
                 seconds=dict(job.seconds, total=time.perf_counter() - begin),
                 args=vars(args))
    table = results_table(bench)
    write_text(osp.join(out_dir, 'results.md'), table)
    write_json(osp.join(out_dir, 'results.json'), bench)
    plot(bench, osp.join(out_dir, 'results.png'))
    print(table)
    logger.info(f'wrote results.md, results.png and results.json to '
                f'{out_dir} in {bench["seconds"]["total"] / 60:.1f} min')
    return bench


def main(argv=None) -> int:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rdprune_mm.errors import run_tool
    args = parse_args(argv)
    return run_tool('bench_baselines.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
