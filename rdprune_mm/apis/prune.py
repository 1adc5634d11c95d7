"""Prune a detector from its config, or prune and fine-tune it with
mmengine's Runner: what ``rdprune-mm prune`` and ``tools/prune.py`` run."""
from __future__ import annotations

import itertools
import os
import os.path as osp
import time
from typing import Any, Optional, Tuple, Union

from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner.checkpoint import find_latest_checkpoint

import rdprune_mm

from ..calibration import compensation_batches
from ..distributed import get_rank_and_world_size, run_everywhere
from ..errors import PruningInputError
from ..fileio import atomic_write, write_json
from ..finetune import finetune_config, launcher_config, train_with_runner
from ..plots import write_plots
from ..registry import PRUNERS
from ..report import allocation_report
from .checks import build_pruner, check_device
from .detector import load_config, read_checkpoint, save_pruned_checkpoint
from .prepare import prepare_detector

#: What every pruning run writes into its work dir.
OUTPUTS = ('pruned.pth', 'allocation.json', 'config.py', 'curves.png',
           'allocation.png')
_RUNS = itertools.count()


def config_with_name(config: Union[str, Config],
                     overrides: dict,
                     require_pruner: bool = True) -> Tuple[Config, str]:
    """The config with ``overrides`` merged, and the name it was given by
    (its file for a loaded config; empty for one made from a dict)."""
    cfg = load_config(config, overrides, require_pruner)
    return cfg, config if isinstance(config, str) else cfg.filename or ''


def default_work_dir(cfg: Config, name: str) -> str:
    """``cfg.work_dir``, else ``work_dirs/<config name>``."""
    if cfg.get('work_dir'):
        return cfg.work_dir
    if not name:
        raise PruningInputError(
            'the config was not read from a file; give a work dir')
    return osp.join('work_dirs', osp.splitext(osp.basename(name))[0])


def pruning_outputs(cfg: Config) -> tuple:
    """The files a run writes: a channel pruner adds the slim model."""
    # imported here, as in _prune
    from ..channels.export import SLIM_OUTPUTS
    from ..pruners import RDChannelPruner
    pruner = PRUNERS.get(cfg.get('pruner', {}).get('type', ''))
    if isinstance(pruner, type) and issubclass(pruner, RDChannelPruner):
        return OUTPUTS + SLIM_OUTPUTS
    return OUTPUTS


def check_outputs(work_dir: str, overwrite: bool,
                  outputs: tuple = OUTPUTS) -> None:
    """Refuse to replace the outputs of an earlier run unless asked to."""
    existing = [f for f in outputs if osp.exists(osp.join(work_dir, f))]
    if existing and not overwrite:
        raise PruningInputError(
            f'{work_dir} already holds {", ".join(existing)} from an earlier '
            'run; pass --overwrite to replace them or choose another '
            '--work-dir')


def prune_detector(config: Union[str, Config],
                   checkpoint: Optional[str] = None,
                   work_dir: Optional[str] = None,
                   device: Optional[str] = None,
                   overwrite: bool = False,
                   trust_checkpoint: bool = False,
                   **overrides: Any) -> dict:
    """RD-prune (or baseline-prune) a detector as its config says.

    Builds the model and loads ``checkpoint`` (random weights with BatchNorm
    statistics from the calibration frames without one), measures or reads
    the distortion curves (cached in ``<work_dir>/curves``), allocates under
    the config's budget and writes ``pruned.pth``, ``allocation.json``,
    ``config.py``, ``curves.png``, ``allocation.png``, a log file and, for
    a channel pruner, the slim model (``slim.pth``, ``structure.json``,
    ``slim_config.py``).

    Under a launcher (:func:`rdprune_mm.distributed.init_distributed`) every
    rank runs this on the same frames: the curves are split across the
    ranks, rank 0 allocates, and only rank 0 writes the outputs; an error on
    one rank stops every rank with its message.

    Example::

        >>> import rdprune_mm
        >>> from rdprune_mm.apis import prune_detector
        >>> report = prune_detector(
        ...     'rdprune_mm::centerpoint/'
        ...     'rd-weight_centerpoint_voxel02-quick_nus.py',
        ...     work_dir='work_dirs/quick', **{'pruner.budget': 0.4},
        ...     calibration=dict(dataset=dict(data_root='data/lidar/')))

    Args:
        config: A pruning config: a file, ``'<package>::<path>'`` or a
            :class:`~mmengine.config.Config`.
        checkpoint: The trained checkpoint to prune, or None.
        work_dir: Output folder; default: the config's ``work_dir``, else
            ``work_dirs/<config name>``.
        device: ``'cpu'`` or ``'cuda'``; default: CUDA when available.
        overwrite: Replace the outputs of an earlier run in ``work_dir``.
        trust_checkpoint: Load ``checkpoint`` with full unpickling
            (``weights_only=False``); only for a file you trust.
        **overrides: Config settings to merge, as ``--cfg-options`` does:
            dotted keys (``**{'pruner.budget': 0.5}``) or nested dicts
            (``pruner=dict(budget=0.5)``), merged in the order given.

    Returns:
        dict: The report written to ``allocation.json``.

    Raises:
        PruningInputError: On bad input (config, checkpoint, budget, data,
            outputs of an earlier run), with a one-line message.
    """
    cfg, name = config_with_name(config, overrides)
    device = check_device(device)
    pruner = build_pruner(cfg.pruner)
    work_dir = work_dir or default_work_dir(cfg, name)

    def check() -> None:
        check_outputs(work_dir, overwrite, pruning_outputs(cfg))
        os.makedirs(work_dir, exist_ok=True)

    run_everywhere(check)
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    logger = MMLogger.get_instance(
        f'rdprune_mm_{timestamp}_{next(_RUNS)}',
        logger_name='rdprune_mm',
        log_file=osp.join(work_dir, f'prune_{timestamp}.log'))
    try:
        return _prune(cfg, name, pruner, checkpoint, work_dir, device,
                      logger, trust_checkpoint)
    finally:
        for handler in logger.handlers[:]:
            handler.close()
            logger.removeHandler(handler)


def _prune(cfg: Config, name: str, pruner, checkpoint: Optional[str],
           work_dir: str, device: str, logger: MMLogger,
           trust_checkpoint: bool) -> dict:
    # imported here: rdprune_mm.pruners imports rdprune_mm.apis through
    # channels.export
    from ..channels.export import SLIM_OUTPUTS, write_slim_outputs
    from ..pruners import ChannelPruningResult
    model, meta, batches = run_everywhere(
        lambda: prepare_detector(cfg, checkpoint, device,
                                 trust_checkpoint=trust_checkpoint))
    frames = run_everywhere(
        lambda: compensation_batches(cfg, model, cfg.get('calibration', {}),
                                     pruner.compensation.frames_wanted))
    result = pruner.prune(model,
                          batches,
                          cache_dir=osp.join(work_dir, 'curves'),
                          compensation_batches=frames)

    report = allocation_report(
        result,
        config=name,
        checkpoint=checkpoint,
        random_weights=checkpoint is None,
        device=device,
        rdprune_mm_version=rdprune_mm.__version__)
    channels = isinstance(result, ChannelPruningResult)
    if channels:
        report.update(result.report_fields())
    meta['rdprune_mm'] = dict(
        version=rdprune_mm.__version__,
        config=name,
        budget=result.budget,
        achieved=result.achieved_budget)

    def write() -> None:
        save_pruned_checkpoint(model, osp.join(work_dir, 'pruned.pth'),
                               meta)
        if channels:  # the masked model above, the slim model here
            write_slim_outputs(model, result.keeps, cfg, work_dir, meta,
                               result.exclude)
        write_json(osp.join(work_dir, 'allocation.json'), report)
        atomic_write(osp.join(work_dir, 'config.py'), cfg.dump)
        write_plots(report, result.curves, work_dir)
        written = OUTPUTS + SLIM_OUTPUTS if channels else OUTPUTS
        logger.info(f'wrote {", ".join(written)} to {work_dir}')

    rank, _ = get_rank_and_world_size()
    run_everywhere(write if rank == 0 else lambda: None)
    return report


def finetune_detector(config: Union[str, Config],
                      checkpoint: Optional[str] = None,
                      work_dir: Optional[str] = None,
                      resume: bool = False,
                      overwrite: bool = False,
                      trust_checkpoint: bool = False,
                      launcher: str = 'none',
                      **overrides: Any) -> Optional[str]:
    """Prune and fine-tune with mmengine's Runner and ``RDPruneHook``.

    The config's ``train_dataloader``, ``optim_wrapper`` and ``train_cfg``
    are used; an ``RDPruneHook`` is added from its ``pruner`` and
    ``calibration`` unless ``custom_hooks`` has one
    (:func:`rdprune_mm.finetune.finetune_config`).

    Args:
        config: A pruning (or training) config: a file,
            ``'<package>::<path>'`` or a :class:`~mmengine.config.Config`.
        checkpoint: The trained checkpoint to start from, or None.
        work_dir: The Runner's work dir; default as :func:`prune_detector`.
        resume: Resume the latest checkpoint in ``work_dir`` (masks
            restored, nothing calibrated again).
        overwrite: Start again in a work dir that holds checkpoints.
        trust_checkpoint: Load ``checkpoint`` with full unpickling
            (``weights_only=False``); only for a file you trust.
        launcher: ``'none'``, or the launcher of a distributed run
            (``'pytorch'``, ``'slurm'``), which mmengine's Runner is given
            (:func:`rdprune_mm.finetune.launcher_config`).
        **overrides: Config settings to merge, as for
            :func:`prune_detector`.

    Returns:
        str, optional: The last checkpoint the Runner saved.

    Raises:
        PruningInputError: On bad input, with a one-line message.
    """
    cfg, name = config_with_name(config, overrides, require_pruner=False)
    work_dir = work_dir or default_work_dir(cfg, name)
    if (osp.exists(osp.join(work_dir, 'last_checkpoint'))
            and not (resume or overwrite)):
        raise PruningInputError(
            f'{work_dir} holds checkpoints of an earlier run; pass --resume '
            'to continue it, --overwrite to start again, or another '
            '--work-dir')
    cfg = launcher_config(
        finetune_config(cfg, work_dir, checkpoint, resume,
                        trust_checkpoint), launcher)
    if checkpoint is not None and not osp.isfile(checkpoint):
        raise PruningInputError(
            f'checkpoint {checkpoint} does not exist; fix --checkpoint')
    if checkpoint is not None and not trust_checkpoint:
        read_checkpoint(checkpoint)  # refused now, not after the data
    train_with_runner(cfg)
    return find_latest_checkpoint(work_dir)
