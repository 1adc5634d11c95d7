"""Exact, deterministic spconv 2 on CPU.

The CPU build of spconv 2.3.x has two faults on CPU tensors:

* ``SpconvOps.scatter_add_cpu`` races when OpenMP runs several threads, so
  forward outputs and input gradients differ from run to run;
* ``indice_conv_backward`` asks for the current CUDA stream before it checks
  the device, so backward fails on a torch built without CUDA.

:func:`patch_spconv_cpu` swaps the CPU gather and scatter-add for torch's
``index_select`` and ``index_add_`` and makes the stream lookup return the
null stream when CUDA is unavailable. CUDA tensors never reach the swapped
functions, so a CUDA run computes exactly what it did before.
"""
from __future__ import annotations

import torch

_PATCHED_FLAG = '_rdprune_mm_cpu_patched'


def _as_torch(tensor) -> torch.Tensor:
    """View a CPU ``cumm.tensorview.Tensor`` as a torch tensor (no copy)."""
    return torch.from_numpy(tensor.numpy_view())


class ExactCpuSpconvOps:
    """``SpconvOps`` whose CPU gather and scatter-add are done by torch.

    Every other attribute is looked up on the wrapped ``SpconvOps``.

    Args:
        ops: spconv's ``SpconvOps`` class.
    """

    def __init__(self, ops) -> None:
        self._ops = ops

    def __getattr__(self, name: str):
        return getattr(self._ops, name)

    @staticmethod
    def gather_cpu(out, inputs, indices) -> None:
        """``out[i] = inputs[indices[i]]`` for every ``i < len(indices)``."""
        index = _as_torch(indices).long()
        target = _as_torch(out)[:index.numel()]
        torch.index_select(_as_torch(inputs), 0, index, out=target)

    @staticmethod
    def scatter_add_cpu(out, inputs, indices) -> None:
        """``out[indices[i]] += inputs[i]`` for every ``i < len(indices)``."""
        index = _as_torch(indices).long()
        _as_torch(out).index_add_(0, index, _as_torch(inputs)[:index.numel()])


def _stream_lookup(original):

    def current_stream_or_null() -> int:
        if torch.cuda.is_available():
            return original()
        return 0

    return current_stream_or_null


def patch_spconv_cpu() -> bool:
    """Make spconv 2's CPU convolutions exact and deterministic.

    Idempotent. Does nothing when spconv 2 is not installed.

    Returns:
        bool: Whether spconv 2 is installed (and now patched).
    """
    try:
        from spconv.pytorch import ops as spconv_ops
    except ImportError:
        return False
    if getattr(spconv_ops, _PATCHED_FLAG, False):
        return True
    spconv_ops.SpconvOps = ExactCpuSpconvOps(spconv_ops.SpconvOps)
    spconv_ops.get_current_stream = _stream_lookup(
        spconv_ops.get_current_stream)
    setattr(spconv_ops, _PATCHED_FLAG, True)
    return True
