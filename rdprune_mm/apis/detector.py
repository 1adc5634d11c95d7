"""Building a detector from a config and checkpoint, and saving it again."""
from __future__ import annotations

import copy
import os.path as osp
from typing import Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import set_random_seed
from mmengine.runner.checkpoint import (_load_checkpoint_to_model,
                                        save_checkpoint,
                                        weights_to_cpu)
from torch import nn

from ..checkpoint import checkpoint_misfit, mmengine_checkpoints, plain_meta
from ..errors import PruningInputError
from ..fileio import atomic_write
from ..logging_utils import quiet_known_warnings
from ..mim import resolve_config


def load_config(path: Union[str, Config],
                cfg_options: Optional[dict] = None,
                require_pruner: bool = True) -> Config:
    """Read an OpenMMLab config, with ``--cfg-options`` merged in.

    Args:
        path: A config file, ``'<package>::<path>'`` inside an installed
            package's configs (e.g. ``'rdprune_mm::centerpoint/<config>.py'``)
            or a loaded config, which is copied.
        cfg_options: Settings to merge, dotted keys or nested dicts, each
            merged in turn.
        require_pruner: Refuse a config without a ``pruner``.
    """
    if isinstance(path, Config):
        cfg = copy.deepcopy(path)
        path = cfg.filename
    else:
        resolved = resolve_config(path)
        if not osp.isfile(resolved):
            raise PruningInputError(
                f'config {path} does not exist; give the path of a config '
                'file, e.g. configs/centerpoint/'
                'rd-weight_centerpoint_voxel01_second_secfpn_nus.py, or '
                'rdprune_mm::centerpoint/'
                'rd-weight_centerpoint_voxel01_second_secfpn_nus.py')
        try:
            cfg = Config.fromfile(resolved)
        except (SyntaxError, ValueError, KeyError, TypeError, ImportError,
                OSError) as error:
            raise PruningInputError(
                f'config {path} cannot be read ({type(error).__name__}: '
                f'{str(error).splitlines()[0][:200]}); fix the config file '
                'or its _base_ list') from None
    for key, value in (cfg_options or {}).items():
        cfg.merge_from_dict({key: value})
    if require_pruner and 'pruner' not in cfg:
        raise PruningInputError(
            f'config {path} has no pruner; add '
            "_base_ = ['rdprune_mm::_base_/rd_weight_pruning.py'] to it")
    return cfg


def read_checkpoint(path: str, trust: bool = False) -> dict:
    """Load a checkpoint file onto the CPU with torch's weights-only
    unpickler; mmengine's Runner checkpoints load too
    (:func:`rdprune_mm.checkpoint.mmengine_safe_globals`).

    Args:
        path: The checkpoint file.
        trust: Unpickle anything the file holds (``weights_only=False``):
            only for a file whose source you trust.

    Raises:
        PruningInputError: If the file holds other Python objects and
            ``trust`` is False.
    """
    if trust:
        return torch.load(path, map_location='cpu', weights_only=False)
    with mmengine_checkpoints(f'checkpoint {path}'):
        return torch.load(path, map_location='cpu', weights_only=True)


def build_detector(cfg: Config,
                   checkpoint: Optional[str] = None,
                   device: str = 'cpu',
                   seed: int = 0,
                   trust_checkpoint: bool = False) -> Tuple[nn.Module, dict]:
    """Build the config's model, load a checkpoint, put it in eval mode.

    Args:
        cfg: The config; its ``default_scope`` picks the registry.
        checkpoint: A checkpoint of this model, or None for random weights.
        device: Where the model runs.
        seed: Seed of the random initialisation.
        trust_checkpoint: Load the checkpoint with full unpickling
            (:func:`read_checkpoint`).

    Returns:
        tuple: The model and the checkpoint's ``meta`` (empty without one).

    Raises:
        PruningInputError: If the checkpoint is missing or does not fit.
    """
    if torch.device(device).type == 'cpu':
        from ..cpu import enable_cpu_support
        enable_cpu_support()
    quiet_known_warnings()
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    set_random_seed(seed)
    model = MODELS.build(cfg.model)
    meta: dict = {}
    if checkpoint is not None:
        if not osp.isfile(checkpoint):
            raise PruningInputError(
                f'checkpoint {checkpoint} does not exist; fix --checkpoint '
                'or leave it out to prune random weights')
        try:
            loaded = read_checkpoint(checkpoint, trust_checkpoint)
        except PruningInputError:
            raise
        except Exception as error:  # not a torch file, truncated, ...
            raise PruningInputError(
                f'checkpoint {checkpoint} cannot be read '
                f'({type(error).__name__}: {str(error)[:200]}); give a '
                'checkpoint saved by mmengine or torch.save') from None
        if not isinstance(loaded, dict):
            raise PruningInputError(
                f'checkpoint {checkpoint} holds a {type(loaded).__name__}, '
                'not a dict of weights; give a checkpoint saved by mmengine '
                'or torch.save(model.state_dict())')
        misfit = checkpoint_misfit(model.state_dict(), loaded)
        if misfit:
            raise PruningInputError(
                f'checkpoint {checkpoint} does not fit the model of the '
                f'config ({misfit}); give a checkpoint trained with this '
                'config')
        _load_checkpoint_to_model(model, loaded, strict=True)
        meta = dict(loaded.get('meta', {}))
    model.cfg = cfg
    return model.to(device).eval(), meta


def save_pruned_checkpoint(model: nn.Module, path: str, meta: dict) -> None:
    """Atomically save an ordinary mmengine checkpoint of ``model``."""
    checkpoint = dict(
        meta=plain_meta(meta), state_dict=weights_to_cpu(model.state_dict()))
    atomic_write(path, lambda tmp: save_checkpoint(checkpoint, tmp))


def default_device() -> str:
    """``'cuda'`` when a GPU is available, else ``'cpu'``."""
    return 'cuda' if torch.cuda.is_available() else 'cpu'
