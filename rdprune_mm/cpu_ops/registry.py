"""Where the CPU kernels register themselves.

Two kinds of entries:

* :func:`cpu_kernel` stands in for one function of mmcv's compiled ``_ext``
  module and keeps its contract exactly: same arguments, same output
  tensors filled in place, same return value. It is called only when the
  op's first tensor argument is on the CPU.
* :func:`cpu_override` replaces a Python-level function or autograd
  ``forward`` of ``mmcv.ops`` for CPU inputs, where mmcv's Python code
  itself touches CUDA (``torch.cuda.IntTensor``, ``torch.cuda.set_device``)
  before it reaches the compiled op.

Dispatchers look both tables up on every call, so an entry can be wrapped
(e.g. timed by ``benchmarks/bench_cpu_ops.py``) after installation.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

CPU_KERNELS: Dict[str, Callable] = {}
CPU_OVERRIDES: Dict[Tuple[str, str], Callable] = {}


def cpu_kernel(ext_name: str) -> Callable[[Callable], Callable]:
    """Register ``func`` as the CPU kernel of mmcv's ``_ext.<ext_name>``."""

    def register(func: Callable) -> Callable:
        if ext_name in CPU_KERNELS:
            raise KeyError(f'a CPU kernel for {ext_name} is already registered')
        CPU_KERNELS[ext_name] = func
        return func

    return register


def cpu_override(module: str, qualname: str) -> Callable[[Callable], Callable]:
    """Register ``func`` to replace ``module.qualname`` for CPU inputs.

    Args:
        module: Dotted module path, e.g. ``'mmcv.ops.points_in_boxes'``.
        qualname: Attribute path inside the module, e.g.
            ``'points_in_boxes_part'`` or ``'FurthestPointSampling.forward'``.
    """

    def register(func: Callable) -> Callable:
        if (module, qualname) in CPU_OVERRIDES:
            raise KeyError(f'a CPU override of {module}.{qualname} is '
                           'already registered')
        CPU_OVERRIDES[(module, qualname)] = func
        return func

    return register
