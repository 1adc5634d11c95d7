"""Separable cost tables of channel groups for the allocator.

The exact cost of a weight layer once channels are removed is
``C * o * i`` (:func:`.groups.cost_after`): its dense cost ``C`` (weights,
or FLOPs measured on the unpruned model) times the kept share ``o`` of its
output channels times the kept share ``i`` of its input channels. A layer
between two groups therefore costs in proportion to the *product* of their
kept shares, which a knapsack over groups cannot express.

On one side of a layer, group ``g`` covers the share ``a_g`` of the axis
(``C_g * width / axis size``) and keeps ``k_g`` of its ``C_g`` channels;
``a_0 = 1 - sum_g a_g`` is the share that no selected group covers (always
kept), so ``o = a_0 + sum_g a_g * s_g`` with ``s_g = k_g / C_g``.
:func:`separable_costs` gives every group one term per layer it touches:

* a layer with groups on one side only (the first layer, the prediction
  convs, layers next to excluded groups) costs ``C * o``, which is linear in
  the shares: its terms ``C * a_g * s_g`` are exact;
* a layer with groups on both sides costs ``C * o * i``, replaced by an
  upper bound that is a sum over groups::

      o * i  <=  (o^2 + i^2) / 2                          (AM-GM)
      o^2    <=  a_0 + sum_g a_g * s_g^2                  (Jensen)

  i.e. half of the layer's cost goes to each side, shared among the
  groups there in proportion to the channels they cover and scaled by the
  square of their kept share. It is exact when both sides keep the same
  share (a uniform share, or one group on both sides, as in residual
  chains).

The terms of ``a_0`` are a constant, ``fixed``. With every channel kept the
tables add up to the dense cost. Because the sum bounds the exact cost from
above, an allocation that meets a budget in separable costs meets it
exactly too; the pruner then raises the budget the allocator sees as far as
the exact cost allows
(:class:`rdprune_mm.pruners.channel_pruner.RDChannelPruner`).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np

from .groups import ChannelGroup


def channel_counts(groups: Sequence[ChannelGroup],
                   kept_shares: Sequence[float],
                   min_keep: float = 0.0) -> List[np.ndarray]:
    """Channels kept by every group at every level of a kept-share grid.

    Args:
        groups: The channel groups.
        kept_shares: Kept share of each level, e.g. ``1, 0.9, ..., 0``.
        min_keep: Smallest share of every group's channels to keep; one
            channel is always kept.

    Returns:
        list[np.ndarray]: Per group, int64 counts per level: the share
        rounded to the nearest channel count, at least ``max(1,
        ceil(min_keep * C))`` and at most ``C``.
    """
    shares = np.asarray(kept_shares, dtype=np.float64)
    counts = []
    for group in groups:
        channels = group.num_channels
        least = max(1, int(np.ceil(min_keep * channels - 1e-9)))
        kept = np.floor(shares * channels + 0.5).astype(np.int64)
        counts.append(np.clip(kept, min(least, channels), channels))
    return counts


def coverage(groups: Sequence[ChannelGroup],
             layer_names: Iterable[str]
             ) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """Per layer of ``layer_names`` that a group touches, and per side
    (``out`` / ``in``): the (group index, axis share) of those groups."""
    layer_names = set(layer_names)
    by_layer: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for index, group in enumerate(groups):
        for side, layers in (('out', group.producers),
                             ('in', group.consumers)):
            for layer in layers:
                if layer.name not in layer_names:
                    continue
                share = group.num_channels * layer.width / layer.axis_size
                sides = by_layer.setdefault(layer.name, {'out': [], 'in': []})
                sides[side].append((index, share))
    return by_layer


def separable_costs(groups: Sequence[ChannelGroup],
                    counts: Sequence[np.ndarray],
                    dense_costs: Mapping[str, float],
                    linear: bool = False
                    ) -> Tuple[List[np.ndarray], float]:
    """Per-group cost tables whose sum bounds the exact cost from above.

    See the module docstring for the bound.

    Args:
        groups: The channel groups.
        counts: Per group, the channels it keeps at every level
            (:func:`channel_counts`).
        dense_costs: Unpruned cost per weight layer name; layers no group
            touches add their whole cost to ``fixed``.
        linear: Costs that grow with the mean kept share of the sides the
            groups prune (``C * (o + i) / 2``, or ``C * o`` with groups on
            one side) instead of the product: the tables are then exact.

    Returns:
        tuple: Per group a float64 table of its cost at every level, and
        the constant ``fixed``. For any choice of levels,
        ``fixed + sum_g table_g[level_g] >= total_cost_after(...)``, with
        equality when every layer with groups on both sides keeps the same
        share on both.
    """
    tables = [np.zeros(len(c), dtype=np.float64) for c in counts]
    kept = [np.asarray(c, dtype=np.float64) / g.num_channels
            for g, c in zip(groups, counts)]
    sides_of = coverage(groups, dense_costs)
    fixed = 0.0
    for name, cost in dense_costs.items():
        sides = [entries for entries in sides_of.get(name, {}).values()
                 if entries]
        if not sides:
            fixed += float(cost)
            continue
        # linear (exact) with groups on one side, the bound with both
        power = 1 if linear or len(sides) == 1 else 2
        weight = float(cost) / len(sides)
        for entries in sides:
            covered = 0.0
            for index, share in entries:
                tables[index] += weight * share * kept[index]**power
                covered += share
            fixed += weight * max(0.0, 1.0 - covered)
    return tables, fixed
