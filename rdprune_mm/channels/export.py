"""Exporting a channel-pruned detector: a physically smaller model that
mmdet3d's (or mmdet's) own tools build from a config.

* :func:`slim_copy` slims a copy of a masked model to its kept channels,
  :func:`slim_in_place` the model itself;
* :func:`slim_config` wraps a config's model in ``type='SlimDetector'``;
* :func:`write_slim_outputs` writes ``slim.pth``, ``structure.json`` and
  ``slim_config.py`` into a work dir;
* ``SlimDetector`` (:func:`build_slim_detector`, registered in mmengine's
  root ``MODELS``, so it resolves under any default scope) builds the
  original detector from its config and slims it to a structure file,
  after which the slim checkpoint loads with ``strict=True``::

    custom_imports = dict(imports=['rdprune_mm'])
    model = dict(type='SlimDetector',
                 detector=dict(type='CenterPoint', ...),
                 structure='{{ fileDirname }}/structure.json')

  ``{{ fileDirname }}`` is mmengine's predefined config variable: the
  folder of the config file, so the work dir can be moved as a whole.
"""
from __future__ import annotations

import copy
import json
import os.path as osp
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from torch import nn

from ..apis import save_pruned_checkpoint
from ..errors import PruningInputError
from ..fileio import atomic_write, write_json
from .discover import trace_channel_groups
from .slim import apply_structure, slim_model

#: Files that :func:`write_slim_outputs` writes.
SLIM_OUTPUTS = ('slim.pth', 'structure.json', 'slim_config.py')
#: How ``slim_config.py`` names the structure file next to it.
STRUCTURE_IN_CONFIG = '{{ fileDirname }}/structure.json'
#: Hooks that :func:`slim_config` leaves out of ``custom_hooks``.
PRUNING_HOOKS = ('RDPruneHook', 'HeadDistillationHook')


def _read_structure(structure: Union[str, dict]) -> dict:
    if isinstance(structure, dict):
        return copy.deepcopy(structure)
    if not osp.isfile(structure):
        raise PruningInputError(
            f'channel structure file {structure} does not exist; give the '
            'structure.json that tools/prune.py wrote next to slim.pth')
    with open(structure) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise PruningInputError(
                f'channel structure file {structure} is not JSON ({error}); '
                'give the structure.json that tools/prune.py wrote') from None


@MODELS.register_module(name='SlimDetector')
def build_slim_detector(detector: dict,
                        structure: Union[str, dict],
                        exclude: Optional[Sequence[str]] = None,
                        data_preprocessor: Optional[dict] = None
                        ) -> nn.Module:
    """Build a detector from its config and slim it to a channel structure.

    Registered as ``type='SlimDetector'`` in mmengine's root ``MODELS``.

    Args:
        detector: The original (unpruned) model config.
        structure: Path of a ``structure.json`` (what
            :func:`.slim.channel_structure` returned, plus optionally
            ``exclude``), or the dict itself.
        exclude: The ``exclude`` patterns the channel groups were found
            with (None: the structure's own ``exclude``, if any).
        data_preprocessor: Set by mmengine's Runner from a top-level
            ``data_preprocessor``; handed to the detector if it has none.

    Returns:
        nn.Module: The detector (its own class), slimmed: its
        ``state_dict`` is that of the slim checkpoint.
    """
    structure = _read_structure(structure)
    if exclude is None:
        exclude = structure.get('exclude')
    detector = copy.deepcopy(detector)
    if data_preprocessor is not None:
        detector.setdefault('data_preprocessor', data_preprocessor)
    model = MODELS.build(detector)
    apply_structure(model, structure, exclude)
    return model


@torch.no_grad()
def slim_copy(model: nn.Module,
              keeps: Dict[str, torch.Tensor],
              exclude: Optional[Iterable[str]] = None
              ) -> Tuple[nn.Module, dict]:
    """A slimmed copy of a model (the model itself is left as it is).

    Args:
        model: The (masked or unpruned) model.
        keeps: bool keep-mask per channel group name.
        exclude: The ``exclude`` patterns the groups were found with.

    Returns:
        tuple: The slimmed copy and its structure (JSON-able, with
        ``exclude`` added so that ``SlimDetector`` can rebuild it).
    """
    slim = copy.deepcopy(model)
    return slim, slim_in_place(slim, keeps, exclude)


def slim_in_place(model: nn.Module,
                  keeps: Dict[str, torch.Tensor],
                  exclude: Optional[Iterable[str]] = None) -> dict:
    """Slim a (masked or unpruned) model to its kept channels, in place.

    Its parameters are replaced: an optimizer that holds the old ones must
    be given the new ones.

    Args:
        model: The model.
        keeps: bool keep-mask per channel group name.
        exclude: The ``exclude`` patterns the groups were found with.

    Returns:
        dict: The structure (JSON-able, with ``exclude`` added so that
        ``SlimDetector`` can rebuild it).
    """
    exclude = list(exclude or [])
    groups = trace_channel_groups(model, exclude)
    structure = slim_model(model, groups, keeps)
    structure['exclude'] = exclude
    return structure


def slim_config(cfg: Config, structure: str = STRUCTURE_IN_CONFIG,
                exclude: Optional[Sequence[str]] = None) -> Config:
    """A copy of ``cfg`` whose model is wrapped in ``SlimDetector``,
    without the pruning hooks (:data:`PRUNING_HOOKS`) and ``load_from``.

    Args:
        cfg: The config the model was built from.
        structure: The structure file as the config names it.
        exclude: Passed to ``SlimDetector`` (None: the structure's own).

    Returns:
        Config: The wrapped config (everything else unchanged).
    """
    wrapped = copy.deepcopy(cfg)
    model = wrapped.model
    if hasattr(model, 'to_dict'):
        model = model.to_dict()
    if model.get('type') == 'SlimDetector':
        raise PruningInputError(
            'the config builds a SlimDetector already; prune the original '
            "config (its model.detector) instead of a slim model's config")
    slim = dict(type='SlimDetector', detector=model, structure=structure)
    if exclude is not None:
        slim['exclude'] = list(exclude)
    wrapped.model = slim
    # the slim model is pruned already, and a dense checkpoint misfits it
    hooks = wrapped.get('custom_hooks', None) or []
    wrapped.custom_hooks = [
        hook for hook in hooks
        if str(hook.get('type', '')).split('.')[-1] not in PRUNING_HOOKS
    ]
    wrapped.load_from = None
    wrapped.resume = False
    custom = wrapped.get('custom_imports', {}) or {}
    imports = list(custom.get('imports', []))
    if 'rdprune_mm' not in imports:
        wrapped.custom_imports = dict(
            imports=[*imports, 'rdprune_mm'],
            allow_failed_imports=custom.get('allow_failed_imports', False))
    return wrapped


def write_slim_outputs(model: nn.Module,
                       keeps: Dict[str, torch.Tensor],
                       cfg: Config,
                       work_dir: str,
                       meta: Optional[dict] = None,
                       exclude: Optional[Iterable[str]] = None
                       ) -> nn.Module:
    """Write ``slim.pth``, ``structure.json`` and ``slim_config.py``.

    Args:
        model: The channel-masked model (left unchanged).
        keeps: bool keep-mask per channel group name.
        cfg: The config the model was built from.
        work_dir: The output folder.
        meta: ``meta`` of the checkpoint; the structure is added under
            ``meta['rdprune_mm']['channel_structure']``.
        exclude: The ``exclude`` patterns the groups were found with.

    Returns:
        nn.Module: The slimmed copy.
    """
    slim, structure = slim_copy(model, keeps, exclude)
    meta = copy.deepcopy(meta or {})
    meta.setdefault('rdprune_mm', {})['channel_structure'] = structure
    save_pruned_checkpoint(slim, osp.join(work_dir, 'slim.pth'), meta)
    write_json(osp.join(work_dir, 'structure.json'), structure)
    atomic_write(osp.join(work_dir, 'slim_config.py'),
                 slim_config(cfg).dump)
    return slim
