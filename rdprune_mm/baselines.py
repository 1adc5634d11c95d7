"""Baseline layer-wise allocations for unstructured magnitude pruning.

The RD allocation is compared against four common rules. All of them prune
by magnitude inside a layer (its smallest ``|w|`` first, ties in flat index
order, as :func:`rdprune_mm.masks.magnitude_order`); they differ only in how
many weights every layer keeps:

* ``uniform``: every layer keeps the same share ``s`` of its weights,
  ``floor(s * n_l)``;
* ``global``: one threshold on ``|w|`` across all layers;
* ``lamp``: LAMP (Lee et al., ICLR 2021): with a layer's weights sorted by
  ascending magnitude, the score of weight ``u`` is
  ``w_u^2 / sum_{v >= u} w_v^2`` (itself and every weight after it in that
  order); then one threshold on the scores across all layers. The largest
  weight of every layer scores 1 (see :func:`lamp_scores`);
* ``erk``: Erdős–Rényi-Kernel (Evci et al., ICML 2020, RigL): layer ``l``
  has density ``min(1, eps * sum(dims_l) / prod(dims_l))``, i.e. keeps
  ``min(n_l, floor(eps * sum(dims_l)))`` weights, where ``dims_l`` is the
  weight's shape (``(out, in, k...)`` for a conv, ``(out, in)`` for a linear
  layer; the layout does not matter for a sum and a product). Raising
  ``eps`` until the budget is met caps the densest layers at 1 and
  re-scales the others, the fixed point of RigL's iterative redistribution.

Budget:
    Every weight has a cost (1 for a parameter budget, its uses for a FLOPs
    budget, see :mod:`rdprune_mm.flops`). A layer's kept cost is the float64
    cumulative sum of its kept weights' costs, largest magnitude first; the
    kept cost of the model is the ``math.fsum`` of these over the layers,
    and the total cost is the same sum with every weight kept. The result
    always satisfies ``kept cost <= budget * total`` in float64 with these
    sums; another summation order may differ by float rounding.

    ``uniform`` and ``erk`` take the largest scalar (``s`` or ``eps``, to the
    resolution of a float64) whose kept cost fits; ``global`` and ``lamp``
    keep the longest run of the highest scores whose cost fits, so that
    adding the next-ranked weight would exceed the budget.

Earlier rounds and floors:
    ``keep_within`` holds the keep-masks of an earlier round: a weight
    pruned there counts as magnitude 0, is pruned first and is never kept
    again. ``min_keep`` keeps at least ``ceil(min_keep * n_l)`` weights of
    every layer (its largest), or every weight the earlier round kept if
    that is fewer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .errors import PruningInputError
from .masks import magnitude_order, mask_from_order
from .pipeline.checks import check_budget, check_min_keep

__all__ = [
    'BASELINE_METHODS', 'baseline_keep_counts', 'baseline_masks',
    'kept_shares', 'lamp_scores', 'prune_order'
]

BASELINE_METHODS = ('uniform', 'global', 'lamp', 'erk')

# ``ceil(min_keep * n)`` ignores this relative excess, the float error of
# products that are integers in exact arithmetic (0.1 * 30)
_CEIL_RTOL = 1e-12

Cost = Union[torch.Tensor, float]


@dataclass
class _Layer:
    """One layer prepared for the allocation.

    Attributes:
        shape: The weight's shape.
        order: Flat indices, the first to prune first (on the weight's
            device), see :func:`prune_order`.
        available: Weights the earlier round kept (all without one).
        forced: Weights ``min_keep`` keeps.
        costs: float64 cost of every weight along :attr:`order`.
        keep_cost: float64, entry ``k`` is the cost of keeping the ``k``
            largest weights; ``numel + 1`` entries, the last is the
            layer's total cost.
    """

    shape: torch.Size
    order: torch.Tensor
    available: int
    forced: int
    costs: torch.Tensor
    keep_cost: np.ndarray

    @property
    def numel(self) -> int:
        return self.order.numel()

    def candidates(self) -> slice:
        """Positions in :attr:`order` of the weights the method may add,
        smallest magnitude first."""
        return slice(self.numel - self.available, self.numel - self.forced)


def prune_order(weight: torch.Tensor,
                keep_within: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Flat weight indices, the first to prune first.

    Without ``keep_within`` this is :func:`~rdprune_mm.masks.magnitude_order`.
    With it, the weights it prunes come first (treated as magnitude 0), then
    the others by ascending magnitude; each part keeps the stable order.

    Args:
        weight: The layer's weight.
        keep_within: Keep-mask of an earlier round (False = pruned).

    Returns:
        torch.Tensor: int64 indices on the weight's device.
    """
    order = magnitude_order(weight)
    if keep_within is None:
        return order
    kept = keep_within.to(order.device, torch.bool).flatten()[order]
    return torch.cat([order[~kept], order[kept]])


def lamp_scores(weight: torch.Tensor,
                keep_within: Optional[torch.Tensor] = None) -> torch.Tensor:
    """LAMP scores of a layer's weights.

    With the weights in :func:`prune_order` (ascending magnitude, ties in
    flat index order), weight ``u`` scores ``w_u^2 / sum_{v >= u} w_v^2``,
    the sum running over itself and every later weight. The scores are
    non-decreasing along that order, the last weight scores exactly 1 and
    weights of magnitude 0 score 0. Of tied weights the later one in flat
    order scores more, as in the authors' code.

    Args:
        weight: The layer's weight.
        keep_within: Keep-mask of an earlier round; the weights it prunes
            count as 0.

    Returns:
        torch.Tensor: float64 scores of the weight's shape and device.
    """
    order = prune_order(weight, keep_within)
    sorted_scores = _sorted_lamp_scores(weight, order, keep_within)
    scores = torch.empty_like(sorted_scores)
    scores[order] = sorted_scores
    return scores.view(weight.shape)


def _sorted_lamp_scores(weight: torch.Tensor, order: torch.Tensor,
                        keep_within: Optional[torch.Tensor]) -> torch.Tensor:
    """LAMP scores along ``order`` (see :func:`lamp_scores`)."""
    squares = _magnitudes(weight, keep_within)[order].square()
    # flip-cumsum-flip: the last suffix sum is the last square itself, so
    # the largest weight scores exactly 1
    suffix = squares.flip(0).cumsum(0).flip(0)
    # a zero suffix has zero squares: score 0
    return squares / torch.where(suffix > 0, suffix, torch.ones_like(suffix))


def _magnitudes(weight: torch.Tensor,
                keep_within: Optional[torch.Tensor]) -> torch.Tensor:
    """Flat float64 ``|w|``, 0 where an earlier round pruned."""
    magnitudes = weight.detach().abs().flatten().to(torch.float64)
    if keep_within is not None:
        magnitudes = magnitudes * keep_within.to(
            magnitudes.device).flatten()
    return magnitudes


def baseline_keep_counts(
        method: str,
        weights: Sequence[torch.Tensor],
        budget: float,
        costs: Optional[Sequence[Optional[Cost]]] = None,
        min_keep: float = 0.0,
        keep_within: Optional[Sequence[Optional[torch.Tensor]]] = None
) -> List[int]:
    """How many weights every layer keeps under a baseline allocation.

    See the module docstring for the methods and the budget rule.

    Args:
        method: One of :data:`BASELINE_METHODS`.
        weights: The layers' weights, any shapes and devices.
        budget: Share of the total cost to keep, in (0, 1].
        costs: Per layer, the cost of each weight, broadcastable to the
            weight (e.g. :class:`~rdprune_mm.flops.UseCounter` uses for a
            FLOPs budget). None, or None for a layer: 1 per weight.
        min_keep: Every layer keeps at least ``ceil(min_keep * n_l)`` of
            its weights, in [0, 1].
        keep_within: Per layer, the keep-mask of an earlier round (None:
            no earlier round for the layer).

    Returns:
        list[int]: Kept weights per layer; the kept ones are the largest in
        :func:`prune_order`.

    Raises:
        PruningInputError: If the method, budget or ``min_keep`` is
            invalid, a weight is not finite, the total cost is 0, or
            ``min_keep`` alone exceeds the budget.
        ValueError: If ``costs`` or ``keep_within`` do not match the
            weights.
    """
    counts, _ = _plan(method, weights, budget, costs, min_keep, keep_within)
    return counts


def baseline_masks(
        method: str,
        weights: Sequence[torch.Tensor],
        budget: float,
        costs: Optional[Sequence[Optional[Cost]]] = None,
        min_keep: float = 0.0,
        keep_within: Optional[Sequence[Optional[torch.Tensor]]] = None
) -> List[torch.Tensor]:
    """Keep-masks of a baseline allocation.

    Takes the arguments of :func:`baseline_keep_counts`. Without
    ``keep_within`` a mask equals ``mask_from_order(magnitude_order(w),
    w.shape, n - k)``, the RD pruner's mask at the same count.

    Returns:
        list[torch.Tensor]: ``bool`` masks of the weights' shapes, on their
        devices; False where pruned. They never keep a weight that
        ``keep_within`` prunes.
    """
    counts, layers = _plan(method, weights, budget, costs, min_keep,
                           keep_within)
    return [
        mask_from_order(layer.order, layer.shape, layer.numel - count)
        for layer, count in zip(layers, counts)
    ]


def kept_shares(masks: Sequence[torch.Tensor]) -> List[float]:
    """Share of every layer's weights that a list of keep-masks keeps."""
    return [int(mask.sum()) / max(mask.numel(), 1) for mask in masks]


def _plan(method: str, weights: Sequence[torch.Tensor], budget: float,
          costs: Optional[Sequence[Optional[Cost]]], min_keep: float,
          keep_within: Optional[Sequence[Optional[torch.Tensor]]]
          ) -> Tuple[List[int], List[_Layer]]:
    """Validate, prepare the layers and return ``(counts, layers)``."""
    weights = list(weights)
    _check_arguments(method, weights, budget, min_keep)
    costs = _per_layer(costs, len(weights), 'costs')
    keep_within = [
        _check_mask(index, weight, mask) for index, (weight, mask) in
        enumerate(zip(weights, _per_layer(keep_within, len(weights),
                                          'keep_within')))
    ]
    layers = [
        _prepare(index, weight, cost, mask, min_keep)
        for index, (weight, cost, mask) in enumerate(
            zip(weights, costs, keep_within))
    ]
    total = math.fsum(float(layer.keep_cost[-1]) for layer in layers)
    if total <= 0:
        raise PruningInputError(
            'the layers cost nothing (every per-weight cost is 0), so no '
            'budget share can be taken of them; budget by params instead')
    limit = budget * total
    forced = _kept_cost(layers, [layer.forced for layer in layers])
    if forced > limit:
        least = math.ceil(forced / total * 1e4) / 1e4
        raise PruningInputError(
            f'budget {budget} is below {forced / total:.6f}, the share of '
            f'the cost that min_keep={min_keep} keeps (the largest '
            f'ceil({min_keep} * n) weights of every layer); raise the budget '
            f'to at least {least} or lower min_keep')
    counts = _ALLOCATORS[method](layers, weights, keep_within, limit)
    if _kept_cost(layers, counts) > limit:
        raise RuntimeError(f'the {method} allocation exceeds the budget; '
                           'this is a bug in rdprune_mm.baselines')
    return counts, layers


def _check_arguments(method: str, weights: List[torch.Tensor],
                     budget: float, min_keep: float) -> None:
    """Raise :class:`PruningInputError` for a bad method, budget, floor."""
    if method not in BASELINE_METHODS:
        raise PruningInputError(
            f'baseline method {method!r} is not one of {BASELINE_METHODS}; '
            'pick one of them')
    if not weights:
        raise PruningInputError(
            'no weights to prune; give at least one layer')
    check_budget(budget, key='budget')
    check_min_keep(min_keep, key='min_keep')


def _per_layer(values: Optional[Sequence], num_layers: int,
               name: str) -> list:
    """One entry per layer (None where not given)."""
    if values is None:
        return [None] * num_layers
    values = list(values)
    if len(values) != num_layers:
        raise ValueError(f'{name} has {len(values)} entries but there are '
                         f'{num_layers} weights; give one per layer')
    return values


def _prepare(index: int, weight: torch.Tensor, cost: Optional[Cost],
             keep_within: Optional[torch.Tensor],
             min_keep: float) -> _Layer:
    """Order a layer's weights and tabulate the cost of keeping them."""
    if not torch.isfinite(weight.detach()).all():
        raise PruningInputError(
            f'weight {index} (shape {tuple(weight.shape)}) has NaN or inf '
            'entries; load a checkpoint with finite weights')
    order = prune_order(weight, keep_within)
    costs = _per_weight_cost(index, weight, cost)[order]
    cumulative = torch.cat([costs.new_zeros(1),
                            costs.flip(0).cumsum(0)]).cpu().numpy()
    numel = weight.numel()
    available = numel if keep_within is None else int(keep_within.sum())
    forced = math.ceil(min_keep * numel * (1 - _CEIL_RTOL))
    return _Layer(weight.shape, order, available, min(forced, available),
                  costs, cumulative)


def _check_mask(index: int, weight: torch.Tensor,
                mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """An earlier round's mask as ``bool`` on the weight's device."""
    if mask is None:
        return None
    if mask.shape != weight.shape:
        raise ValueError(
            f'keep_within of layer {index} has shape {tuple(mask.shape)}, '
            f'the weight {tuple(weight.shape)}; give the mask of this weight')
    return mask.to(weight.device, torch.bool)


def _per_weight_cost(index: int, weight: torch.Tensor,
                     cost: Optional[Cost]) -> torch.Tensor:
    """Flat float64 cost of every weight, on the weight's device."""
    if cost is None:
        return torch.ones(weight.numel(), dtype=torch.float64,
                          device=weight.device)
    cost = torch.as_tensor(cost).to(weight.device, torch.float64)
    try:
        cost = cost.expand(weight.shape)
    except RuntimeError:
        raise ValueError(
            f'costs of layer {index} have shape {tuple(cost.shape)}, which '
            f'does not broadcast to the weight {tuple(weight.shape)}'
        ) from None
    if not (torch.isfinite(cost).all() and (cost >= 0).all()):
        raise ValueError(f'costs of layer {index} must be finite and >= 0')
    return cost.flatten()


def _kept_cost(layers: Sequence[_Layer], counts: Sequence[int]) -> float:
    """Cost of keeping ``counts[l]`` largest weights of every layer."""
    return math.fsum(
        float(layer.keep_cost[count]) for layer, count in zip(layers, counts))


def _largest_fitting(counts_at: Callable[[float], List[int]], top: float,
                     layers: Sequence[_Layer], limit: float) -> List[int]:
    """Counts at the largest scalar in ``[0, top]`` whose cost fits.

    ``counts_at`` must be non-decreasing in its argument and fit at 0. The
    bisection runs until the bounds are adjacent float64 numbers.
    """
    if _kept_cost(layers, counts_at(top)) <= limit:
        return counts_at(top)
    low, high = 0.0, top
    while True:
        mid = low + (high - low) / 2
        if not low < mid < high:
            return counts_at(low)
        if _kept_cost(layers, counts_at(mid)) <= limit:
            low = mid
        else:
            high = mid


def _scaled_counts(layers: Sequence[_Layer],
                   sizes: Sequence[int]) -> Callable[[float], List[int]]:
    """``x -> min(n_l, floor(x * size_l))``, clipped to the layer bounds."""
    numels = np.array([layer.numel for layer in layers], dtype=np.int64)
    lower = np.array([layer.forced for layer in layers], dtype=np.int64)
    upper = np.array([layer.available for layer in layers], dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.float64)

    def counts_at(scalar: float) -> List[int]:
        scaled = np.floor(scalar * sizes).astype(np.int64)
        return np.clip(np.minimum(scaled, numels), lower, upper).tolist()

    return counts_at


def _uniform(layers: Sequence[_Layer], weights: Sequence[torch.Tensor],
             keep_within: Sequence, limit: float) -> List[int]:
    """The same kept share in every layer."""
    counts_at = _scaled_counts(layers, [layer.numel for layer in layers])
    return _largest_fitting(counts_at, 1.0, layers, limit)


def _erk(layers: Sequence[_Layer], weights: Sequence[torch.Tensor],
         keep_within: Sequence, limit: float) -> List[int]:
    """Erdős–Rényi-Kernel densities, capped at 1."""
    sizes = [sum(layer.shape) for layer in layers]
    # at twice the largest prod/sum every layer is dense
    top = 2.0 * max(layer.numel / max(size, 1)
                    for layer, size in zip(layers, sizes))
    return _largest_fitting(_scaled_counts(layers, sizes), top, layers, limit)


def _global(layers: Sequence[_Layer], weights: Sequence[torch.Tensor],
            keep_within: Sequence, limit: float) -> List[int]:
    """One threshold on the magnitudes."""
    scores = [
        _magnitudes(weight, mask)[layer.order]
        for layer, weight, mask in zip(layers, weights, keep_within)
    ]
    return _highest_scores(layers, scores, limit)


def _lamp(layers: Sequence[_Layer], weights: Sequence[torch.Tensor],
          keep_within: Sequence, limit: float) -> List[int]:
    """One threshold on the LAMP scores."""
    scores = [
        _sorted_lamp_scores(weight, layer.order, mask)
        for layer, weight, mask in zip(layers, weights, keep_within)
    ]
    return _highest_scores(layers, scores, limit)


def _highest_scores(layers: Sequence[_Layer],
                    sorted_scores: Sequence[torch.Tensor],
                    limit: float) -> List[int]:
    """Keep the longest run of the highest scores whose cost fits.

    ``sorted_scores[l]`` holds layer ``l``'s scores along its order, which
    must not decrease. A stable sort of the concatenated candidates keeps
    every layer's own order, so each layer keeps its largest weights; of
    equal scores in different layers the later layer's weight ranks first.
    """
    device = sorted_scores[0].device
    scores, costs, owners = [], [], []
    for index, (layer, layer_scores) in enumerate(zip(layers,
                                                      sorted_scores)):
        part = layer.candidates()
        scores.append(layer_scores[part].to(device))
        costs.append(layer.costs[part].to(device))
        owners.append(
            torch.full((len(costs[-1]), ), index, device=device))
    rank = torch.argsort(torch.cat(scores), stable=True).flip(0)
    cumulative = torch.cat(costs)[rank].cumsum(0)
    owners = torch.cat(owners)[rank]
    base = [layer.forced for layer in layers]
    slack = limit - _kept_cost(layers, base)
    length = int(torch.searchsorted(
        cumulative, torch.tensor([slack], dtype=cumulative.dtype,
                                 device=device), right=True))
    while True:
        added = torch.bincount(owners[:length], minlength=len(layers))
        counts = [b + int(a) for b, a in zip(base, added.tolist())]
        # the per-layer sums may round above the concatenated one
        if length == 0 or _kept_cost(layers, counts) <= limit:
            return counts
        length -= 1


_ALLOCATORS = {
    'uniform': _uniform,
    'global': _global,
    'lamp': _lamp,
    'erk': _erk,
}
