"""Checks of what a user gives the tools, before any expensive work."""
from __future__ import annotations

import inspect
from typing import Optional

import torch

from ..errors import PruningInputError
from ..registry import PRUNERS


def build_pruner(pruner_cfg: dict):
    """The config's pruner, with an unknown type or setting named.

    Raises:
        PruningInputError: If ``type`` is not a registered pruner or a key
            is not one of its settings.
    """
    cfg = dict(pruner_cfg)
    kind = cfg.get('type')
    cls = kind if isinstance(kind, type) else PRUNERS.module_dict.get(kind)
    if cls is None:
        raise PruningInputError(
            f'pruner.type={kind!r} is not a pruner; use one of '
            f'{sorted(PRUNERS.module_dict)}')
    parameters = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(k for k in set(cfg) - {'type'} - set(parameters)
                     if not k.startswith('_'))
    if unknown and not takes_any:
        known = sorted(set(parameters) - {'self'})
        raise PruningInputError(
            f'{cls.__name__} has no setting {unknown[0]!r}; fix the '
            f'pruner config (its settings: {", ".join(known)})')
    cfg.pop('_scope_', None)
    return PRUNERS.build(dict(cfg, type=cls))


def check_device(device: Optional[str]) -> str:
    """A device torch can use here (default: CUDA when there is one)."""
    if device is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise PruningInputError(
            f'--device {device!r} is not a device; use cpu or cuda '
            '(cuda:N)') from None
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise PruningInputError(
                f'--device {device} asked, but torch sees no CUDA device '
                'here; use --device cpu')
        if parsed.index is not None and \
                parsed.index >= torch.cuda.device_count():
            raise PruningInputError(
                f'--device {device}: there are only '
                f'{torch.cuda.device_count()} CUDA devices; use cuda:0')
    elif parsed.type != 'cpu':
        raise PruningInputError(
            f'--device {device} is not supported; use cpu or cuda')
    return str(parsed)
