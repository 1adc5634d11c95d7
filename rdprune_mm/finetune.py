"""Pruning and fine-tuning through mmengine's Runner (``--finetune``)."""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, Optional

import torch
from mmengine.config import Config
from mmengine.runner import Runner, find_latest_checkpoint

from .checkpoint import TRUSTED_PREFIX, mmengine_checkpoints
from .errors import PruningInputError
from .logging_utils import quiet_known_warnings

_HOOK_TYPES = ('RDPruneHook', 'rdprune_mm.RDPruneHook')


def has_prune_hook(cfg: Config) -> bool:
    """Whether ``cfg.custom_hooks`` already holds an ``RDPruneHook``."""
    return any(
        hook.get('type') in _HOOK_TYPES
        for hook in cfg.get('custom_hooks', None) or [])


def finetune_config(cfg: Config,
                    work_dir: str,
                    checkpoint: Optional[str] = None,
                    resume: bool = False,
                    trust_checkpoint: bool = False) -> Config:
    """The config to prune and fine-tune with ``Runner.from_cfg``.

    An ``RDPruneHook`` in ``custom_hooks`` is used as it is; otherwise one
    is added from the config's ``pruner``, ``calibration`` and
    ``prune_schedule`` (:func:`schedule_of`).

    Args:
        cfg: A pruning config (or any training config with the hook).
        work_dir: The runner's work dir (checkpoints, logs, curves).
        checkpoint: Trained checkpoint to start from (``load_from``).
        resume: Resume the latest checkpoint in ``work_dir``: masks and
            rounds come back from it, nothing is calibrated again. Without
            one, training starts from ``checkpoint``.
        trust_checkpoint: Load ``checkpoint`` with full unpickling
            (``load_from='trusted://<path>'``,
            :data:`rdprune_mm.checkpoint.TRUSTED_PREFIX`).
    """
    cfg = copy.deepcopy(cfg)
    hooks = list(cfg.get('custom_hooks', None) or [])
    if has_prune_hook(cfg) and cfg.get('prune_schedule', None):
        raise PruningInputError(
            'the config has both an RDPruneHook in custom_hooks and a '
            'prune_schedule; give the rounds to the hook (rounds=..., '
            'by_epoch=...) and drop prune_schedule')
    if not has_prune_hook(cfg):
        if 'pruner' not in cfg:
            raise PruningInputError(
                'the config has neither a pruner nor an RDPruneHook in '
                "custom_hooks; add _base_ = ['<configs>/_base_/"
                "rd_weight_pruning.py'] or custom_hooks = "
                "[dict(type='RDPruneHook', ...)]")
        hooks.append(
            dict(type='RDPruneHook',
                 pruner=cfg.pruner,
                 calibration=cfg.get('calibration',
                                     dict(dataloader='train_dataloader')),
                 **schedule_of(cfg)))
    if checkpoint is not None and trust_checkpoint:
        checkpoint = TRUSTED_PREFIX + checkpoint
    hooks += distillation_hooks(cfg, hooks, checkpoint)
    cfg.custom_hooks = hooks
    cfg.work_dir = work_dir
    # mmengine resumes load_from when it is set, not the latest checkpoint
    latest = find_latest_checkpoint(work_dir) if resume else None
    cfg.load_from = latest or checkpoint
    cfg.resume = latest is not None
    return cfg


#: The keys of a config's ``prune_schedule``: ``RDPruneHook`` arguments.
SCHEDULE_KEYS = ('rounds', 'by_epoch')


def schedule_of(cfg: Config) -> dict:
    """The config's ``prune_schedule`` (``rounds``, ``by_epoch``): the
    iterative rounds of the ``RDPruneHook`` that :func:`finetune_config`
    adds; empty without one (one round at 0 with ``pruner.budget``)."""
    schedule = dict(cfg.get('prune_schedule', None) or {})
    unknown = sorted(set(schedule) - set(SCHEDULE_KEYS))
    if unknown:
        raise PruningInputError(
            f'prune_schedule has unknown keys {unknown}; give '
            "prune_schedule=dict(rounds=[dict(at=0, budget=0.7), dict(at=2, "
            "budget=0.5)], by_epoch=True)")
    return schedule


def distillation_hooks(cfg: Config, hooks: list,
                       checkpoint: Optional[str]) -> list:
    """A ``HeadDistillationHook`` from the config's ``distillation`` dict
    (its keyword arguments), with the dense ``checkpoint`` as the teacher;
    none when the config has no such dict or already names the hook."""
    distillation = cfg.get('distillation', None)
    if not distillation or any(
            h.get('type') == 'HeadDistillationHook' for h in hooks):
        return []
    settings = dict(distillation)
    if settings.get('teacher_checkpoint') is None:
        if checkpoint is None:
            raise PruningInputError(
                'distillation needs the dense detector as its teacher: give '
                '--checkpoint, or distillation.teacher_checkpoint')
        settings['teacher_checkpoint'] = checkpoint
    settings.setdefault('head_modules',
                        (cfg.get('pruner', None) or {}).get('head_modules'))
    return [dict(type='HeadDistillationHook', **settings)]


def launcher_config(cfg: Config, launcher: str = 'none') -> Config:
    """``cfg`` for mmengine's Runner under ``launcher`` (the OpenMMLab
    name): ``launcher`` set, the backend of ``env_cfg.dist_cfg`` replaced
    by gloo without CUDA, and without CUDA a
    ``MMDistributedDataParallel`` with no device ids (one CPU process per
    rank) unless the config names a wrapper."""
    cfg = copy.deepcopy(cfg)
    cfg.launcher = launcher
    if launcher == 'none':
        return cfg
    # imported here: rdprune_mm.distributed logs through MMLogger
    from .distributed import choose_backend
    env_cfg = cfg.get('env_cfg', None) or {}
    dist_cfg = dict(env_cfg.get('dist_cfg', None) or {})
    dist_cfg['backend'] = choose_backend(dist_cfg.get('backend'), log=False)
    cfg.env_cfg = dict(env_cfg, dist_cfg=dist_cfg)
    if not torch.cuda.is_available() and not cfg.get('model_wrapper_cfg'):
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None)
    return cfg


def prepare_runner_process() -> None:
    """What a process that runs mmengine's Runner needs from rdprune_mm:
    CPU support (:mod:`rdprune_mm.cpu`) when torch has no CUDA device, and
    the known harmless warnings quieted."""
    if not torch.cuda.is_available():
        from .cpu import enable_cpu_support
        enable_cpu_support()
    quiet_known_warnings()


def _checkpoints_of(cfg: Config) -> str:
    """The checkpoint that the Runner of ``cfg`` loads, for messages."""
    if cfg.get('load_from'):
        return f'checkpoint {cfg.load_from}'
    return f'the last checkpoint in {cfg.get("work_dir")}'


def train_with_runner(cfg: Config) -> Runner:
    """Build mmengine's Runner from ``cfg`` and train.

    Before the Runner is built, :func:`prepare_runner_process` runs (CPU
    support without CUDA); ``load_from`` and ``resume`` checkpoints are read
    with torch's weights-only unpickler and mmengine's safe globals
    (:func:`rdprune_mm.checkpoint.mmengine_checkpoints`).

    Args:
        cfg: A training config, e.g. :func:`finetune_config`'s.

    Returns:
        Runner: The runner, after training.

    Raises:
        PruningInputError: If a checkpoint to load holds objects other than
            weights and mmengine's checkpoint contents, or a file the config
            names (data, annotations, checkpoint) does not exist.
    """
    prepare_runner_process()
    with _missing_files_named():
        runner = Runner.from_cfg(cfg)
        with mmengine_checkpoints(_checkpoints_of(cfg)):
            runner.train()
    return runner


@contextlib.contextmanager
def _missing_files_named() -> Iterator[None]:
    """A missing file of the config (a dataset's ``ann_file``, the
    database sampler's ``info_path``, ``load_from``) becomes one line."""
    try:
        yield
    except FileNotFoundError as error:
        problem = f'{error.filename} does not exist' if error.filename \
            else str(error).rstrip('.')
        raise PruningInputError(
            f'{problem}; fix the path in the config (e.g. '
            "a dataloader's dataset.data_root / ann_file, the "
            'ObjectSample db_sampler info_path, load_from) or with '
            '--cfg-options') from None


def evaluate_with_runner(cfg: Config) -> dict:
    """Build mmengine's Runner from ``cfg`` and test ``cfg.load_from``, as
    :func:`train_with_runner` trains.

    Args:
        cfg: A config with a test dataloader and evaluator.

    Returns:
        dict: The evaluator's metrics.

    Raises:
        PruningInputError: As :func:`train_with_runner`.
    """
    prepare_runner_process()
    with _missing_files_named():
        runner = Runner.from_cfg(cfg)
        with mmengine_checkpoints(_checkpoints_of(cfg)):
            return runner.test()
