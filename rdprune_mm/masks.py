"""Unstructured weight masks: which weights a pruning level removes."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch


def sparsity_grid(num_levels: int) -> np.ndarray:
    """Pruned shares ``0, 1/K, ..., 1`` of a grid of ``num_levels`` levels."""
    if num_levels < 2:
        raise ValueError(f'num_levels must be at least 2, got {num_levels}')
    return np.linspace(0.0, 1.0, num_levels)


def pruned_counts(numel: int, sparsities: Sequence[float]) -> np.ndarray:
    """Number of weights each level removes from a layer of ``numel``."""
    return np.rint(np.asarray(sparsities) * numel).astype(np.int64)


def magnitude_order(weight: torch.Tensor) -> torch.Tensor:
    """Flat indices of the weights, smallest magnitude first (stable)."""
    return torch.argsort(
        weight.detach().abs().flatten(), stable=True)


def mask_from_order(order: torch.Tensor, shape: torch.Size,
                    num_pruned: int) -> torch.Tensor:
    """Boolean keep-mask that removes the first ``num_pruned`` of ``order``.

    Args:
        order: Flat weight indices, the first to prune first.
        shape: The weight's shape.
        num_pruned: How many weights to remove.

    Returns:
        torch.Tensor: ``bool`` tensor of ``shape``; False where pruned.
    """
    keep = torch.ones(order.numel(), dtype=torch.bool, device=order.device)
    keep[order[:num_pruned]] = False
    return keep.view(shape)


@torch.no_grad()
def apply_masks(modules: Dict[str, torch.nn.Module],
                masks: Dict[str, torch.Tensor]) -> None:
    """Set the pruned weights of every masked module to exactly zero.

    Masks may live on another device than the weights (e.g. restored from a
    checkpoint on the CPU).
    """
    for name, mask in masks.items():
        weight = modules[name].weight
        weight.masked_fill_(~mask.to(weight.device), 0.0)
