"""The ``rdprune-mm`` command (``rdprune-mm prune CONFIG ...``), whose
``prune`` arguments are those of ``tools/prune.py``.

Example::

    rdprune-mm prune \
        rdprune_mm::centerpoint/rd-weight_centerpoint_voxel02-quick_nus.py \
        --work-dir work_dirs/quick --cfg-options pruner.budget=0.4
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from mmengine.config import DictAction

from .distributed import (LAUNCHERS, check_launcher_env, close_distributed,
                          init_distributed)
from .errors import PruningInputError, run_tool


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rdprune-mm prune`` and ``tools/prune.py``."""
    parser.add_argument(
        'config',
        help='pruning config file, or rdprune_mm::<path> / '
        'mmdet3d::<path> inside an installed package\'s configs')
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
        '--distill',
        type=float,
        metavar='WEIGHT',
        help='with --finetune: add a distillation loss of this weight '
        'between the pruned model\'s head outputs and the dense '
        '--checkpoint\'s (HeadDistillationHook; the config\'s '
        'distillation dict sets the rest)')
    parser.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='load --checkpoint with full unpickling (weights_only=False), '
        'for a file that holds Python objects beside its weights; it can '
        'run code: only for a file you trust')
    parser.add_argument(
        '--launcher',
        choices=LAUNCHERS,
        default='none',
        help='job launcher, as in mmdet3d\'s tools: pytorch under torchrun '
        '(the curves are split across the processes; rank 0 writes the '
        'outputs), slurm under srun')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. pruner.budget=0.25')


_PRUNE_DESCRIPTION = (
    'RD-prune a detector: measure per-layer distortion of the head outputs, '
    'allocate pruning under a budget, apply masks.')


def parse_prune_args(argv: Optional[Sequence[str]] = None,
                     prog: Optional[str] = None) -> argparse.Namespace:
    """Parse the arguments of a pruning run (``sys.argv`` for None)."""
    parser = argparse.ArgumentParser(prog=prog,
                                     description=_PRUNE_DESCRIPTION)
    add_prune_arguments(parser)
    return parser.parse_args(argv)


def run_prune(args: argparse.Namespace) -> Optional[dict]:
    """Prune, or prune and fine-tune, as the parsed arguments say.

    Returns:
        dict, optional: The ``allocation.json`` report of a pruning run;
        None after fine-tuning.
    """
    from .apis import finetune_detector, load_config, prune_detector
    if args.resume and not args.finetune:
        raise PruningInputError('--resume needs --finetune')
    distill = getattr(args, 'distill', None)
    if distill is not None and not args.finetune:
        raise PruningInputError('--distill needs --finetune')
    launcher = getattr(args, 'launcher', 'none')
    check_launcher_env(launcher)
    # loaded here so that any --cfg-options key merges, work_dir included
    cfg = load_config(
        args.config, args.cfg_options, require_pruner=not args.finetune)
    if distill is not None:
        cfg.merge_from_dict({'distillation.loss_weight': distill})
    dist_cfg = (cfg.get('env_cfg', None) or {}).get('dist_cfg', None) or {}
    started = init_distributed(launcher, dist_cfg.get('backend'))
    try:
        if args.finetune:
            finetune_detector(
                cfg, args.checkpoint, args.work_dir, resume=args.resume,
                overwrite=args.overwrite, launcher=launcher,
                trust_checkpoint=args.trust_checkpoint)
            return None
        return prune_detector(cfg, args.checkpoint, args.work_dir,
                              args.device, overwrite=args.overwrite,
                              trust_checkpoint=args.trust_checkpoint)
    finally:
        close_distributed(started)


def prune_main(argv: Optional[Sequence[str]] = None,
               prog: str = 'prune.py') -> int:
    """``tools/prune.py``: 0, or 2 with one error line on bad input."""
    args = parse_prune_args(argv)
    return run_tool(prog, lambda: run_prune(args))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``rdprune-mm`` console command."""
    parser = argparse.ArgumentParser(
        prog='rdprune-mm',
        description='Rate-distortion optimal pruning of OpenMMLab '
        'detectors.')
    commands = parser.add_subparsers(dest='command', required=True)
    add_prune_arguments(
        commands.add_parser(
            'prune', help='prune a detector', description=_PRUNE_DESCRIPTION))
    args = parser.parse_args(argv)
    return run_tool(f'rdprune-mm {args.command}', lambda: run_prune(args))


if __name__ == '__main__':
    sys.exit(main())
