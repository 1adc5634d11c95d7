"""Route CPU tensors of mmcv ops to :mod:`rdprune_mm.cpu_ops` kernels.

CUDA tensors are passed to mmcv's own functions untouched: every dispatcher
looks at the device of the op's first tensor argument and calls the CPU
kernel only when it is ``cpu``.
"""
from __future__ import annotations

import functools
import importlib
import sys
from typing import Any, Callable, Dict, Iterable

import torch

from .registry import CPU_KERNELS, CPU_OVERRIDES

_INSTALLED_FLAG = '_rdprune_mm_cpu_fallback'


def _first_tensor(args: Iterable[Any], kwargs: Dict[str, Any]):
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _on_cpu(args, kwargs) -> bool:
    tensor = _first_tensor(args, kwargs)
    return tensor is not None and tensor.device.type == 'cpu'


def _dispatcher(original: Callable, table: Dict[Any, Callable],
                key: Any) -> Callable:

    @functools.wraps(original)
    def dispatch(*args, **kwargs):
        if _on_cpu(args, kwargs):
            return table[key](*args, **kwargs)
        return original(*args, **kwargs)

    setattr(dispatch, _INSTALLED_FLAG, True)
    return dispatch


class CpuFallbackExt:
    """Stands in for mmcv's compiled ``_ext`` module inside ``mmcv.ops``.

    Functions with a registered CPU kernel dispatch on the device of their
    first tensor argument; every other attribute is mmcv's own.

    Args:
        ext: mmcv's ``_ext`` extension module.
    """

    def __init__(self, ext) -> None:
        self._ext = ext

    def __getattr__(self, name: str):
        original = getattr(self._ext, name)
        if name not in CPU_KERNELS:
            return original
        return _dispatcher(original, CPU_KERNELS, name)


def _install_ext_proxies() -> None:
    import mmcv.ops  # noqa: F401  (imports every op module)
    for name, module in list(sys.modules.items()):
        if not name.startswith('mmcv.ops.'):
            continue
        ext = getattr(module, 'ext_module', None)
        if ext is None or isinstance(ext, CpuFallbackExt):
            continue
        module.ext_module = CpuFallbackExt(ext)


def _replace_references(original: Callable, replacement: Callable) -> None:
    """Point every loaded module's ``from ... import`` of ``original`` at
    ``replacement``; modules loaded later import it from ``mmcv.ops``."""
    for module in list(sys.modules.values()):
        namespace = getattr(module, '__dict__', None)
        if not namespace:
            continue
        for attr, value in list(namespace.items()):
            if value is original:
                setattr(module, attr, replacement)


def _install_override(module_name: str, qualname: str) -> None:
    owner = importlib.import_module(module_name)
    *parents, attr = qualname.split('.')
    for parent in parents:
        owner = getattr(owner, parent)
    raw = owner.__dict__[attr]
    is_static = isinstance(raw, staticmethod)
    original = raw.__func__ if is_static else raw
    if getattr(original, _INSTALLED_FLAG, False):
        return
    dispatch = _dispatcher(original, CPU_OVERRIDES, (module_name, qualname))
    if is_static:
        setattr(owner, attr, staticmethod(dispatch))
    else:
        _replace_references(original, dispatch)


def install_dispatch() -> None:
    """Install the CPU dispatchers. Idempotent."""
    _install_ext_proxies()
    for module_name, qualname in list(CPU_OVERRIDES):
        _install_override(module_name, qualname)
