"""Pruning and fine-tuning through mmengine's Runner (``--finetune``)."""
from __future__ import annotations

import copy
import os
from typing import Optional

from mmengine.config import Config

from .errors import PruningInputError

_HOOK_TYPES = ('RDPruneHook', 'rdprune_mm.RDPruneHook')


def has_prune_hook(cfg: Config) -> bool:
    """Whether ``cfg.custom_hooks`` already holds an ``RDPruneHook``."""
    return any(
        hook.get('type') in _HOOK_TYPES
        for hook in cfg.get('custom_hooks', None) or [])


def finetune_config(cfg: Config,
                    work_dir: str,
                    checkpoint: Optional[str] = None,
                    resume: bool = False) -> Config:
    """The config to prune and fine-tune with ``Runner.from_cfg``.

    An ``RDPruneHook`` in ``custom_hooks`` is used as it is; otherwise one
    is added from the config's ``pruner`` and ``calibration``.

    Args:
        cfg: A pruning config (or any training config with the hook).
        work_dir: The runner's work dir (checkpoints, logs, curves).
        checkpoint: Trained checkpoint to start from (``load_from``).
        resume: Resume the latest checkpoint in ``work_dir``: masks and
            rounds come back from it, nothing is calibrated again.
    """
    cfg = copy.deepcopy(cfg)
    hooks = list(cfg.get('custom_hooks', None) or [])
    if not has_prune_hook(cfg):
        if 'pruner' not in cfg:
            raise PruningInputError(
                'the config has neither a pruner nor an RDPruneHook in '
                "custom_hooks; add _base_ = ['<configs>/_base_/"
                "rd_weight_pruning.py'] or custom_hooks = "
                "[dict(type='RDPruneHook', ...)]")
        hooks.append(
            dict(
                type='RDPruneHook',
                pruner=cfg.pruner,
                calibration=cfg.get('calibration',
                                    dict(dataloader='train_dataloader'))))
    cfg.custom_hooks = hooks
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.resume = resume
    if resume:
        # mmengine 0.10.7 resumes with torch.load's default, which is
        # weights_only=True since torch 2.6; its message hub needs pickle.
        os.environ.setdefault('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    return cfg
