"""Prune a trained MMDetection3D (or MMDetection) detector.

Example::

    python tools/prune.py \
        configs/centerpoint/rd-weight_centerpoint_voxel01_second_secfpn_nus.py \
        --checkpoint centerpoint.pth --work-dir work_dirs/centerpoint
"""
from __future__ import annotations

import argparse
import itertools
import os
import os.path as osp
import sys
import time

from mmengine.config import DictAction
from mmengine.logging import MMLogger

import rdprune_mm
from rdprune_mm.apis import (build_detector, default_device, load_config,
                             save_pruned_checkpoint)
from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.channels.export import SLIM_OUTPUTS, write_slim_outputs
from rdprune_mm.errors import PruningInputError, run_tool
from rdprune_mm.finetune import finetune_config
from rdprune_mm.fileio import atomic_write, write_json
from rdprune_mm.plots import write_plots
from rdprune_mm.pruners import ChannelPruningResult, RDChannelPruner
from rdprune_mm.registry import PRUNERS
from rdprune_mm.report import allocation_report

OUTPUTS = ('pruned.pth', 'allocation.json', 'config.py', 'curves.png',
           'allocation.png')
_RUNS = itertools.count()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='RD-prune a detector: measure per-layer distortion of '
        'the head outputs, allocate pruning under a budget, apply masks.')
    parser.add_argument('config', help='pruning config file')
    parser.add_argument('--checkpoint', help='trained checkpoint to prune')
    parser.add_argument(
        '--work-dir',
        help='output folder (default: work_dirs/<config name>)')
    parser.add_argument(
        '--device', default=None, help='cpu or cuda (default: cuda if '
        'available)')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace pruned.pth / allocation.json of an earlier run')
    parser.add_argument(
        '--finetune',
        action='store_true',
        help="prune and fine-tune with mmengine's Runner (RDPruneHook): the "
        "config's train_dataloader, optim_wrapper and train_cfg are used")
    parser.add_argument(
        '--resume',
        action='store_true',
        help='with --finetune: resume the latest checkpoint in the work dir '
        '(masks restored, nothing calibrated again)')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. pruner.budget=0.25')
    return parser.parse_args(argv)


def _work_dir(args: argparse.Namespace, cfg) -> str:
    if args.work_dir:
        return args.work_dir
    if cfg.get('work_dir'):
        return cfg.work_dir
    return osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])


def _outputs(cfg) -> tuple:
    """The files a run writes: a channel pruner adds the slim model."""
    pruner = PRUNERS.get(cfg.get('pruner', {}).get('type', ''))
    if isinstance(pruner, type) and issubclass(pruner, RDChannelPruner):
        return OUTPUTS + SLIM_OUTPUTS
    return OUTPUTS


def _check_outputs(work_dir: str, overwrite: bool,
                   outputs: tuple = OUTPUTS) -> None:
    existing = [f for f in outputs if osp.exists(osp.join(work_dir, f))]
    if existing and not overwrite:
        raise PruningInputError(
            f'{work_dir} already holds {", ".join(existing)} from an earlier '
            'run; pass --overwrite to replace them or choose another '
            '--work-dir')


def finetune(args: argparse.Namespace) -> None:
    """Prune and fine-tune through mmengine's Runner."""
    from mmengine.runner import Runner
    cfg = load_config(args.config, args.cfg_options, require_pruner=False)
    work_dir = _work_dir(args, cfg)
    if (osp.exists(osp.join(work_dir, 'last_checkpoint'))
            and not (args.resume or args.overwrite)):
        raise PruningInputError(
            f'{work_dir} holds checkpoints of an earlier run; pass --resume '
            'to continue it, --overwrite to start again, or another '
            '--work-dir')
    cfg = finetune_config(cfg, work_dir, args.checkpoint, args.resume)
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        raise PruningInputError(
            f'checkpoint {args.checkpoint} does not exist; fix --checkpoint')
    Runner.from_cfg(cfg).train()


def run(args: argparse.Namespace) -> dict:
    if args.resume and not args.finetune:
        raise PruningInputError('--resume needs --finetune')
    cfg = load_config(args.config, args.cfg_options)
    work_dir = _work_dir(args, cfg)
    _check_outputs(work_dir, args.overwrite, _outputs(cfg))
    os.makedirs(work_dir, exist_ok=True)
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    logger = MMLogger.get_instance(
        f'rdprune_mm_{timestamp}_{next(_RUNS)}',
        logger_name='rdprune_mm',
        log_file=osp.join(work_dir, f'prune_{timestamp}.log'))
    try:
        return _prune(args, cfg, work_dir, logger)
    finally:
        for handler in logger.handlers[:]:
            handler.close()
            logger.removeHandler(handler)


def _prune(args: argparse.Namespace, cfg, work_dir: str,
           logger: MMLogger) -> dict:
    pruner = PRUNERS.build(cfg.pruner)
    seed = cfg.get('randomness', {}).get('seed') or 0
    device = args.device or default_device()
    model, meta = build_detector(cfg, args.checkpoint, device, seed)
    batches = calibration_batches(cfg, model, cfg.get('calibration', {}))
    if args.checkpoint is None:
        count = recalibrate_batchnorm(model, batches)
        logger.warning(
            'no --checkpoint given: the weights are random (seed '
            f'{seed}; {count} BatchNorm layers set from the calibration '
            'frames), so the allocation only demonstrates the method; '
            'pass --checkpoint to prune a trained detector')
    result = pruner.prune(
        model, batches, cache_dir=osp.join(work_dir, 'curves'))

    report = allocation_report(
        result,
        config=args.config,
        checkpoint=args.checkpoint,
        random_weights=args.checkpoint is None,
        device=device,
        rdprune_mm_version=rdprune_mm.__version__)
    channels = isinstance(result, ChannelPruningResult)
    if channels:
        report.update(result.report_fields())
    meta['rdprune_mm'] = dict(
        version=rdprune_mm.__version__,
        config=args.config,
        budget=result.budget,
        achieved=result.achieved_budget)
    save_pruned_checkpoint(model, osp.join(work_dir, 'pruned.pth'), meta)
    if channels:  # the masked model above, the slim model here
        write_slim_outputs(model, result.keeps, cfg, work_dir, meta,
                           result.exclude)
    write_json(osp.join(work_dir, 'allocation.json'), report)
    atomic_write(osp.join(work_dir, 'config.py'), cfg.dump)
    write_plots(report, result.curves, work_dir)
    written = OUTPUTS + SLIM_OUTPUTS if channels else OUTPUTS
    logger.info(f'wrote {", ".join(written)} to {work_dir}')
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool('prune.py',
                    lambda: finetune(args) if args.finetune else run(args))


if __name__ == '__main__':
    sys.exit(main())
