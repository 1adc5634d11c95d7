"""Pruning on several processes (torch.distributed through mmengine.dist).

One job: the process group and what the ranks agree on. Every helper is a
plain call in a single process (no process group), so the code that uses
them runs unchanged without a launcher.

* :func:`init_distributed` starts the process group of a launcher
  (``pytorch``: torchrun, ``slurm``), with gloo where CUDA is absent;
* :func:`split_round_robin` gives each rank its share of the curve units;
* :func:`run_everywhere` runs a step on every rank and, if it raises on any
  rank, raises on every rank with the message and the rank it came from;
* :func:`on_rank_zero` computes on rank 0 and broadcasts the result;
* :func:`check_same_everywhere` refuses ranks that hold different inputs.
"""
from __future__ import annotations

import os
import traceback
from typing import Any, Callable, List, Sequence, Tuple, TypeVar
from unittest import mock

import torch
from mmengine import dist
from mmengine.logging import MMLogger

from .errors import PruningInputError

T = TypeVar('T')

#: Launchers of ``--launcher`` (the OpenMMLab names).
LAUNCHERS = ('none', 'pytorch', 'slurm')

#: Environment variables that each launcher sets for every process.
_LAUNCHER_ENV = dict(
    pytorch=('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR',
             'MASTER_PORT'),
    slurm=('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'))
_LAUNCHER_FIX = dict(
    pytorch='run with torchrun --nproc_per_node N tools/prune.py ... '
    '--launcher pytorch, or drop --launcher',
    slurm='run with srun (as mmdet3d\'s tools/slurm_train.sh does), or drop '
    '--launcher')


class RankError(PruningInputError):
    """An error raised on one rank and re-raised on every rank."""


def get_rank_and_world_size() -> Tuple[int, int]:
    """This process's rank and the number of ranks (0 and 1 alone)."""
    return dist.get_dist_info()


def is_distributed() -> bool:
    """Whether more than one rank runs."""
    return dist.get_world_size() > 1


def choose_backend(backend: str | None = None, log: bool = True) -> str:
    """``backend`` (default nccl) where CUDA is available, else gloo, with
    one log line that says so (``log``)."""
    if torch.cuda.is_available():
        return backend or 'nccl'
    if log:
        asked = '' if backend in (None, 'gloo') else f' instead of {backend}'
        MMLogger.get_current_instance().info(
            f'torch.distributed: CUDA is not available, so the backend is '
            f'gloo{asked} (one process per CPU)')
    return 'gloo'


def check_launcher_env(launcher: str) -> None:
    """Refuse a launcher whose environment is missing, naming the fix."""
    if launcher not in LAUNCHERS:
        raise PruningInputError(
            f'--launcher {launcher} is not one of {", ".join(LAUNCHERS)}')
    missing = [k for k in _LAUNCHER_ENV.get(launcher, ())
               if k not in os.environ]
    if missing:
        raise PruningInputError(
            f'--launcher {launcher} needs the environment its launcher sets '
            f'({", ".join(missing)} missing); {_LAUNCHER_FIX[launcher]}')


def init_distributed(launcher: str, backend: str | None = None,
                     timeout: int | None = None) -> bool:
    """Start the process group of ``launcher`` with mmengine's
    :func:`~mmengine.dist.init_dist`.

    Without CUDA the backend is gloo, one process per CPU, and the device
    is not set (mmengine calls ``torch.cuda.set_device``, which a CPU build
    of torch lacks).

    Args:
        launcher: ``'none'``, ``'pytorch'`` (torchrun) or ``'slurm'``.
        backend: The backend to ask for (default nccl with CUDA).
        timeout: Seconds a collective waits for the other ranks (None:
            torch's default).

    Returns:
        bool: Whether a process group was started here (False for
        ``'none'`` or when one already runs).

    Raises:
        PruningInputError: If the launcher's environment is missing.
    """
    check_launcher_env(launcher)
    if launcher == 'none' or dist.is_distributed():
        return False
    if launcher == 'slurm' and not torch.cuda.is_available():
        raise PruningInputError(
            '--launcher slurm needs CUDA devices (mmengine gives each task '
            'one); on CPU start the processes with torchrun and --launcher '
            'pytorch')
    backend = choose_backend(backend)
    kwargs = {} if timeout is None else dict(timeout=timeout)
    if torch.cuda.is_available():
        dist.init_dist(launcher, backend=backend, **kwargs)
    else:
        with mock.patch.object(torch.cuda, 'set_device', lambda device: None):
            dist.init_dist(launcher, backend=backend, **kwargs)
    rank, world_size = get_rank_and_world_size()
    MMLogger.get_current_instance().info(
        f'torch.distributed: rank {rank} of {world_size} ({backend})')
    return True


def close_distributed(started: bool) -> None:
    """End the process group that :func:`init_distributed` started."""
    if started and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def split_round_robin(items: Sequence[T], rank: int | None = None,
                      world_size: int | None = None) -> List[T]:
    """This rank's share of ``items``: every ``world_size``-th from
    ``rank`` on (all of them alone)."""
    if rank is None or world_size is None:
        rank, world_size = get_rank_and_world_size()
    return list(items[rank::world_size])


def _describe(error: BaseException) -> Tuple[str, bool]:
    """One line of ``error`` and whether it already names its rank."""
    if isinstance(error, RankError):
        return str(error), True
    if not isinstance(error, PruningInputError):
        MMLogger.get_current_instance().error(traceback.format_exc())
        message = f'{type(error).__name__}: {error}'
    else:
        message = str(error)
    lines = message.strip().splitlines() or [type(error).__name__]
    return lines[0], False


def raise_first_error(errors: Sequence[Tuple[str, bool] | None]) -> None:
    """Raise the error of the lowest rank that had one (a no-op if none).

    Args:
        errors: Per rank, None or ``(message, names_its_rank)``.
    """
    for rank, error in enumerate(errors):
        if error is not None:
            message, ranked = error
            raise RankError(
                message if ranked else f'{message} (raised on rank {rank})')


def run_everywhere(step: Callable[[], T]) -> T:
    """Run ``step`` on every rank; if it raises on any rank, every rank
    raises :class:`RankError` with its message and ``(raised on rank N)``.

    The ranks meet after the step (one ``all_gather_object``), so a rank
    whose step failed does not leave the others waiting in a later
    collective. Alone, ``step`` runs as it is. A traceback of an error
    that is not bad input is logged on the rank that raised it.
    """
    if not is_distributed():
        return step()
    result, error = None, None
    try:
        result = step()
    except Exception as raised:  # every rank must hear of it
        error = _describe(raised)
    raise_first_error(dist.all_gather_object(error))
    return result


def on_rank_zero(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, broadcast to every rank (an error on rank
    0 is raised on every rank)."""
    if not is_distributed():
        return compute()
    rank, _ = get_rank_and_world_size()
    box: List[Any] = [None, None]
    if rank == 0:
        try:
            box[0] = compute()
        except Exception as raised:
            box[1] = _describe(raised)
    dist.broadcast_object_list(box, src=0)
    raise_first_error([box[1]])
    return box[0]


def check_same_everywhere(value: Any, what: str, fix: str) -> None:
    """Refuse ranks whose ``value`` differs from rank 0's.

    Args:
        value: A picklable fingerprint (e.g. a SHA-256 string).
        what: What it fingerprints, for the message.
        fix: What to do about a difference.

    Raises:
        RankError: On every rank, naming the first rank that differs.
    """
    if not is_distributed():
        return
    values = dist.all_gather_object(value)
    for rank, other in enumerate(values):
        if other != values[0]:
            raise RankError(
                f'rank {rank} has other {what} than rank 0 '
                f'({str(other)[:16]} vs {str(values[0])[:16]}); {fix}')


@torch.no_grad()
def broadcast_module_state(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module``
    (e.g. BatchNorm statistics that DDP does not keep equal)."""
    if not is_distributed():
        return
    for tensor in module.state_dict().values():
        if isinstance(tensor, torch.Tensor):
            dist.broadcast(tensor, src=0)
