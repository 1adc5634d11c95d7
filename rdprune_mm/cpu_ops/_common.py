"""Tensor plumbing shared by the point-op kernels.

Every ``@cpu_kernel`` function of :mod:`.sampling`, :mod:`.neighbours` and
:mod:`.grouping` keeps the contract of the compiled ``_ext`` function of the
same name: same arguments, output tensors filled in place, ``None``
returned. Indices that would make a CUDA kernel read or write outside its
tensors (undefined behaviour there) raise :class:`IndexError` here
(:func:`check_index_range`). Numba kernels take float32/64 as they are and
other floating types in float32 (:func:`float_array`, :func:`float_output`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor


def as_array(tensor: Tensor) -> np.ndarray:
    """Zero-copy numpy view of a contiguous CPU tensor."""
    if not tensor.is_contiguous():
        raise ValueError('mmcv point ops expect contiguous tensors')
    return tensor.detach().numpy()


def float_array(tensor: Tensor) -> np.ndarray:
    """Floating input of a numba kernel: float32/64 as it is, other
    floating types as float32."""
    if tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()
    return as_array(tensor.contiguous())


def check_index_range(index: Tensor, low: int, high: int, op: str) -> None:
    """Raise where the CUDA kernel would access memory outside a tensor."""
    if index.numel() == 0:
        return
    smallest, largest = int(index.min()), int(index.max())
    if smallest < low or largest >= high:
        raise IndexError(f'{op}: index range [{smallest}, {largest}] lies '
                         f'outside [{low}, {high})')


def float_output(tensor: Tensor) -> Tuple[np.ndarray, Optional[Tensor]]:
    """Floating output of a numba kernel, and for tensors other than
    float32/64 the float32 stand-in the kernel fills, to be copied back with
    :func:`copy_back`."""
    if tensor.dtype in (torch.float32, torch.float64):
        return as_array(tensor), None
    stand_in = tensor.float().contiguous()
    return stand_in.numpy(), stand_in


def copy_back(tensor: Tensor, stand_in: Optional[Tensor]) -> None:
    if stand_in is not None:
        tensor.copy_(stand_in)
