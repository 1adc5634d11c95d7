"""The benchmark detector of the accuracy studies: the CenterPoint of
``configs/kitti_like/centerpoint_kitti-like-3class.py`` trained on a larger
built-in KITTI-layout dataset with several training seeds, each evaluated
after every epoch's checkpoint (to show where val mAP levels off).

Every step is the demo's (:class:`rdprune_mm.demo.Job`: data, training,
KittiMetric), reused when done before, so an interrupted run continues.
"""
from __future__ import annotations

import argparse
import glob
import os.path as osp
import re
from typing import Any, Dict, List, Optional, Sequence

from ..fileio import write_json, write_text
from .cli import parse_args as parse_demo_args
from .job import Job, make_logger
from .model_store import ModelStore
from .bootstrap import bootstrap_map
from .configs import load_config
from .report import environment, format_ap
from .step_dir import file_digest, read_json

#: The benchmark detector's training config.
BENCHMARK_CONFIG = 'rdprune_mm::kitti_like/centerpoint_kitti-like-3class.py'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Arguments of ``tools/train_benchmark.py``."""
    parser = argparse.ArgumentParser(
        description='Train the benchmark CenterPoint on built-in '
        'KITTI-layout data for several seeds and evaluate every epoch.')
    parser.add_argument('--data-root', default='data/kitti_like_bench')
    parser.add_argument('--work-dir', default='work_dirs/centerpoint_bench')
    parser.add_argument('--config', default=BENCHMARK_CONFIG)
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=400)
    parser.add_argument(
        '--eval-num-val',
        type=int,
        default=None,
        help='evaluate on this many val frames, simulated into '
        '<data-root>_val<N> with the same seed and train frames (the '
        'training data, and so the kept models, stay as they are); '
        'default: the data root\'s --num-val frames')
    parser.add_argument('--data-seed',
                        type=int,
                        default=1,
                        help='seed of the data simulation (the demo uses 0)')
    parser.add_argument('--seeds',
                        type=int,
                        nargs='+',
                        default=[0, 1, 2],
                        help='training seeds, one model each')
    parser.add_argument(
        '--model-store',
        default='benchmarks/models',
        help='folder where each seed\'s trained model is kept and looked '
        'for before training (committed, so that a fresh clone reuses it); '
        '"" for none')
    parser.add_argument(
        '--epochs',
        type=int,
        default=12,
        help='training epochs (12: where val mAP levels off, see '
        'docs/benchmark_detector.md)')
    parser.add_argument(
        '--bootstrap',
        type=int,
        default=30,
        help='bootstrap draws over the val frames for the spread of the '
        'last epoch\'s mAP (0: none)')
    parser.add_argument(
        '--eval-epochs',
        type=int,
        nargs='*',
        default=None,
        help='epochs whose checkpoints are evaluated (default: the last '
        'three)')
    return parser.parse_args(argv)


def seed_job(args: argparse.Namespace, seed: int, log: Any) -> Job:
    """The demo's :class:`Job` for one training seed, keeping every
    epoch's checkpoint."""
    demo_args = parse_demo_args([
        '--data-root',
        args.data_root,
        '--work-dir',
        osp.join(args.work_dir, f'seed{seed}'),
        '--num-train',
        str(args.num_train),
        '--num-val',
        str(args.num_val),
        '--seed',
        str(args.data_seed),
        *([] if args.eval_num_val is None else
          ['--eval-num-val', str(args.eval_num_val)]),
        '--train-config',
        args.config,
        '--epochs',
        str(args.epochs),
        '--train-options',
        *seed_train_options(seed),
    ])
    store = ModelStore(args.model_store, log) if args.model_store else None
    return Job(demo_args, log, store, f'centerpoint_bench_seed{seed}')


def seed_train_options(seed: int) -> List[str]:
    """The training options of one seed's model (``key=value``): its seed,
    and every epoch's checkpoint kept. Whoever trains or reuses that model
    passes these, so that the model's settings match."""
    return [
        f'randomness.seed={seed}', 'default_hooks.checkpoint.max_keep_ckpts=-1'
    ]


def epoch_checkpoints(train_dir: str) -> Dict[int, str]:
    """``{epoch: path}`` of the ``epoch_<n>.pth`` files in ``train_dir``."""
    found = {}
    for path in glob.glob(osp.join(train_dir, 'epoch_*.pth')):
        match = re.fullmatch(r'epoch_(\d+)\.pth', osp.basename(path))
        if match:
            found[int(match.group(1))] = path
    return found


def run(args: argparse.Namespace) -> dict:
    """Data, then per seed: training and KittiMetric of the chosen epochs;
    ``summary.json`` and ``summary.md`` in the work dir.

    Returns:
        dict: What ``summary.json`` holds.
    """
    logger = make_logger(args.work_dir, 'train_benchmark')
    log = logger.info
    epochs = args.eval_epochs
    if epochs is None:
        epochs = list(range(max(1, args.epochs - 2), args.epochs + 1))
    models: List[dict] = []
    for seed in args.seeds:
        job = seed_job(args, seed, log)
        log(f'seed {seed}: data and training ({args.epochs} epochs)')
        dense = job.dense()
        checkpoints = epoch_checkpoints(osp.dirname(dense['checkpoint']))
        evaluations = {}
        for epoch in epochs:
            if epoch not in checkpoints:
                log(f'seed {seed}: no checkpoint of epoch {epoch}, skipped')
                continue
            record = job.evaluation(
                osp.join(job.work_dir, f'eval_epoch{epoch}'),
                f'seed {seed} epoch {epoch}', checkpoints[epoch],
                file_digest(checkpoints[epoch]), f'eval_epoch{epoch}')
            evaluations[epoch] = dict(ap=record['ap'],
                                      predictions=record['predictions'])
        spread = None
        if args.bootstrap and evaluations:
            last = max(evaluations)
            spread = frame_bootstrap(evaluations[last]['predictions'],
                                     job.eval_ann_file,
                                     dataset_classes(args.config),
                                     args.bootstrap)
            log(f'seed {seed} epoch {last}: mAP 3D '
                f'{spread["map"]["3D"]:.2f}, bootstrap std over '
                f'{spread["frames"]} val frames {spread["std"]["3D"]:.2f} '
                f'(BEV {spread["std"]["BEV"]:.2f})')
        models.append(
            dict(seed=seed,
                 checkpoint=dense['checkpoint'],
                 train_seconds=dense['seconds'],
                 val_frames=args.eval_num_val or args.num_val,
                 evaluations=evaluations,
                 bootstrap=spread))
    summary = dict(args=vars(args), models=models, environment=environment())
    write_json(osp.join(args.work_dir, 'summary.json'), summary)
    write_text(osp.join(args.work_dir, 'summary.md'), summary_table(models))
    log('benchmark models:\n' + summary_table(models))
    return summary


def dataset_classes(config: str) -> List[str]:
    """The classes of the config's val dataset, in label order."""
    return list(load_config(config).val_dataloader.dataset.metainfo.classes)


def frame_bootstrap(predictions: str, ann_file: str, classes: List[str],
                    replicates: int) -> dict:
    """:func:`rdprune_mm.demo.bootstrap.bootstrap_map` of one evaluation
    (``classes`` in label order), saved beside its predictions and
    reused."""
    path = osp.join(osp.dirname(predictions), f'bootstrap_{replicates}.json')
    done = read_json(path)
    if done is not None and done.get('classes') == classes and done.get(
            'predictions') == file_digest(predictions):
        return done['result']
    result = bootstrap_map(predictions, ann_file, classes, replicates)
    write_json(
        path,
        dict(predictions=file_digest(predictions),
             classes=classes,
             result=result))
    return result


def summary_table(models: List[dict]) -> str:
    """Markdown: mAP 3D and BEV (moderate AP40) per seed and epoch on the
    val frames, with the bootstrap spread over them of the last epoch."""
    lines = [
        '| seed | epoch | val frames | mAP 3D | mAP BEV | bootstrap std 3D / '
        'BEV | train s |', '|---:|---:|---:|---:|---:|---:|---:|'
    ]
    for model in models:
        last = max(model['evaluations'], default=None)
        spread = model.get('bootstrap')
        for epoch, record in sorted(model['evaluations'].items()):
            ap = record['ap']['Overall']
            std = '-' if spread is None or epoch != last else (
                f'{spread["std"]["3D"]:.2f} / {spread["std"]["BEV"]:.2f}')
            lines.append(f'| {model["seed"]} | {epoch} | '
                         f'{model.get("val_frames", "-")} | '
                         f'{format_ap(ap["3D"])} | {format_ap(ap["BEV"])} | '
                         f'{std} | {model["train_seconds"]:.0f} |')
    return '\n'.join(lines) + '\n'
