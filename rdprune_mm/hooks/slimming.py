"""Slimming the model of a running mmengine Runner: the optimizer, the EMA
copy and the DDP wrapper are handed the model's new, smaller parameters."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from mmengine.hooks import EMAHook
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from torch import nn

from ..channels.export import slim_in_place
from ..channels.slim import apply_structure, channel_structure
from ..errors import PruningInputError


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or other) wrapper, or the model itself."""
    return model.module if is_model_wrapper(model) else model


def replace_parameters(runner, before: Dict[str, nn.Parameter],
                       model: nn.Module) -> int:
    """Put the model's parameters in the optimizers in place of the ones it
    had (``before``, by name), keeping every param group's settings.

    Called before the optimizers have state for them (in ``before_train``,
    or while loading a checkpoint, before its optimizer state is loaded).

    Returns:
        int: How many parameters were replaced.
    """
    after = dict(model.named_parameters())
    new_of = {
        id(old): after[name]
        for name, old in before.items()
        if name in after and after[name] is not old
    }
    wrapper = runner.optim_wrapper
    wrappers = (wrapper.values()
                if isinstance(wrapper, OptimWrapperDict) else [wrapper])
    for optim_wrapper in wrappers:
        optimizer = optim_wrapper.optimizer
        for group in optimizer.param_groups:
            for param in group['params']:
                if id(param) in new_of and optimizer.state.get(param):
                    raise PruningInputError(
                        'the optimizer already holds state for parameters '
                        'that channel slimming replaces; slim before the '
                        'first optimizer step (RDPruneHook round at=0)')
            group['params'] = [new_of.get(id(p), p) for p in group['params']]
    return len(new_of)


def _slim_ema_copies(runner, structure: dict) -> None:
    for hook in runner.hooks:
        if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model'):
            averaged = hook.ema_model
            apply_structure(averaged.module, structure,
                            structure.get('exclude'))
            # mmengine's averaged models cache what they update at build
            averaged.avg_parameters = (averaged.module.state_dict()
                                       if averaged.update_buffers else dict(
                                           averaged.module.named_parameters()))


def _rewrap(runner, model: nn.Module) -> None:
    """DDP registers the parameters it syncs when built: wrap the slimmed
    module again with the config's wrapper settings."""
    if is_model_wrapper(runner.model):
        runner.model = runner.wrap_model(runner.cfg.get('model_wrapper_cfg'),
                                         model)


def slim_runner_model(runner,
                      keeps: Optional[Dict[str, torch.Tensor]] = None,
                      exclude: Optional[list] = None,
                      structure: Optional[dict] = None) -> dict:
    """Slim the runner's model (and its EMA copy) to kept channels, hand
    the optimizers the new parameters and wrap it again under DDP.

    Args:
        runner: mmengine's Runner, after its optimizer is built.
        keeps: bool keep-mask per channel group (a pruner's
            ``result.keeps``) ...
        exclude: ... with the ``exclude`` patterns of its groups; or
        structure: a channel structure (``structure.json``, or a
            checkpoint's) to slim the unpruned model to.

    Returns:
        dict: The model's structure, with ``exclude``.

    Raises:
        PruningInputError: If the model is slimmed to another structure
            already, or the structure does not fit it.
    """
    model = unwrap(runner.model)
    present = channel_structure(model)['groups']
    if structure is not None and present:
        if present != structure['groups']:
            raise PruningInputError(
                'the model is slimmed to another channel structure than the '
                "checkpoint's; load the checkpoint into the config it was "
                'saved with')
        return dict(channel_structure(model),
                    exclude=list(structure.get('exclude') or []))
    before = dict(model.named_parameters())
    if structure is None:
        structure = slim_in_place(model, keeps, exclude)
    else:
        apply_structure(model, structure, structure.get('exclude'))
        structure = dict(channel_structure(model),
                         exclude=list(structure.get('exclude') or []))
    replace_parameters(runner, before, model)
    _slim_ema_copies(runner, structure)
    _rewrap(runner, model)
    return structure
