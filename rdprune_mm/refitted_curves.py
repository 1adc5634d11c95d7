"""Curves of the distortion that the compensate stage's refit leaves.

With ``pruner.compensate.curves=True`` every level of a layer's curve is
measured with the layer's kept weights refitted as the compensate stage
refits them (:func:`rdprune_mm.compensation.refit_rows` on the unpruned
model's inputs), so that the allocator sees the distortion after the refit
rather than that of the masked weights. A layer pruned alone gets the
unpruned model's inputs, so this is also the sequential refit's result.

A layer's levels are nested (each prunes what the one before it pruned and
more), so in every row the kept entries of each level are a prefix of one
order, the last pruned first. One Cholesky factor of the row's Gram matrix
in that order serves every level: the factor of a leading block is the
leading block of the factor (:func:`refit_levels`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from .compensation import (DenseLayers, refit_ridge, rows_to_weight,
                           weight_rows)
from .errors import PruningInputError
from .units import WeightUnit

#: Bytes of reordered Gram matrices factored at once.
CHUNK_BYTES = 1 << 28


def refit_levels(dense: torch.Tensor, ranks: torch.Tensor, gram: torch.Tensor,
                 damp: float, keys: Sequence[int]) -> Dict[int, torch.Tensor]:
    """:func:`~rdprune_mm.compensation.refit_rows` at every level of a
    nested pruning order, with one Cholesky factor per row.

    Args:
        dense: ``(rows, d)`` unpruned weights.
        ranks: ``(rows, d)`` each weight's place in the pruning order: the
            level that prunes ``key`` weights keeps those of rank >= key.
        gram: ``(d, d)`` Gram matrix of the layer's inputs.
        damp: The refit's ridge, a share of the mean diagonal of ``gram``;
            above 0 unless ``gram`` is positive definite.
        keys: The levels, as numbers of weights pruned.

    Returns:
        dict[int, torch.Tensor]: Per key, the ``(rows, d)`` float64 refit
        (zero where pruned; a row with nothing pruned as it was).
    """
    dense = dense.double()
    gram = gram.double()
    num_rows, width = dense.shape
    ridge = refit_ridge(gram, damp)
    targets = dense @ gram + ridge * dense
    refits = {key: torch.zeros_like(dense) for key in keys}
    kept = {key: (ranks >= key).sum(1).tolist() for key in keys}
    orders = torch.argsort(ranks, dim=1, descending=True)
    partial = [
        row for row in range(num_rows)
        if any(0 < kept[key][row] < width for key in keys)
    ]
    for key in keys:
        full = [row for row in range(num_rows) if kept[key][row] == width]
        refits[key][full] = dense[full]
    chunk = max(1, CHUNK_BYTES // (8 * width * width))
    for start in range(0, len(partial), chunk):
        rows = partial[start:start + chunk]
        order = orders[rows]
        systems = gram[order[:, :, None], order[:, None, :]]
        systems.diagonal(dim1=1, dim2=2).add_(ridge)
        factors, info = torch.linalg.cholesky_ex(systems)
        if bool(info.any()):
            raise PruningInputError(
                'the refit curves cannot factor a layer\'s input Gram matrix '
                '(it is singular); set pruner.compensate.damp above 0, e.g. '
                '0.01')
        for factor, index, row in zip(factors, order, rows):
            for key in keys:
                size = kept[key][row]
                if 0 < size < width:
                    kept_index = index[:size]
                    solution = torch.cholesky_solve(
                        targets[row, kept_index, None], factor[:size, :size])
                    refits[key][row, kept_index] = solution[:, 0]
    return refits


class LevelRefits:
    """The refitted weights of every level of one layer at a time.

    Args:
        dense: The unpruned weights and input Gram matrices
            (:meth:`rdprune_mm.compensation.Compensation.record`).
        damp: The compensate stage's ``damp``.
    """

    def __init__(self, dense: DenseLayers, damp: float) -> None:
        self.dense = dense
        self.damp = damp
        self._name: Optional[str] = None
        self._weights: Dict[int, torch.Tensor] = {}

    def weight(self, unit: WeightUnit, num_pruned: int) -> torch.Tensor:
        """The weight of ``unit``'s layer pruned by ``num_pruned`` and
        refitted; every level of the layer is solved on its first call."""
        if unit.name != self._name:
            self._weights = {}  # one layer's levels held at a time
            target = unit.target
            like = target.weight
            ranks = torch.empty_like(unit.order)
            ranks[unit.order] = torch.arange(unit.order.numel(),
                                             device=unit.order.device)
            keys = [int(k) for k in np.unique(unit.counts) if k]
            levels = refit_levels(
                weight_rows(target, self.dense.weights[unit.name]),
                weight_rows(target, ranks.reshape(like.shape)),
                self.dense.grams[unit.name], self.damp, keys)
            self._weights = {
                key: rows_to_weight(target, rows, like).to(like.dtype)
                for key, rows in levels.items()
            }
            self._name = unit.name
        return self._weights[int(num_pruned)]


class RefittedWeightUnit(WeightUnit):
    """A :class:`~rdprune_mm.units.WeightUnit` whose pruned levels hold the
    refitted kept weights.

    Args:
        target: The layer.
        order: Flat weight indices, the first to prune first.
        counts: Weights pruned at every level.
        refits: Where the refitted weights come from.
    """

    def __init__(self, target, order: torch.Tensor, counts: np.ndarray,
                 refits: LevelRefits) -> None:
        super().__init__(target, order, counts)
        self.refits = refits

    @contextmanager
    @torch.no_grad()
    def pruned(self, num_pruned: int) -> Iterator[None]:
        if not num_pruned:
            yield
            return
        weight = self.target.weight
        original = weight.detach().clone()
        try:
            weight.copy_(self.refits.weight(self, num_pruned))
            yield
        finally:
            weight.copy_(original)
