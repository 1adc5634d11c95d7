"""Per-group and per-layer records of a channel allocation (the report
stage of channel pruning)."""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..results import GroupAllocation, LayerCost
from ..targets import PruningTarget
from .costs import separable_costs
from .groups import ChannelGroup, cost_after, layer_fractions
from .latency import LatencyModel


def layer_costs(targets: Sequence[PruningTarget],
                groups: Sequence[ChannelGroup], counts: Mapping[str, int],
                params: Mapping[str, float], flops: Mapping[str, float],
                latency: Optional[LatencyModel] = None) -> List[LayerCost]:
    """The exact cost of every weight layer once the groups keep
    ``counts`` channels."""
    fractions = layer_fractions(groups, counts)
    params_after = cost_after(groups, counts, params)
    flops_after = cost_after(groups, counts, flops)
    latency_before: Dict[str, float] = {}
    latency_after: Dict[str, float] = {}
    if latency is not None:
        latency_before = latency.dense
        latency_after = latency.after(groups, counts)
    return [
        LayerCost(
            name=t.name,
            kind=t.kind,
            out_kept=fractions.get(t.name, (1.0, 1.0))[0],
            in_kept=fractions.get(t.name, (1.0, 1.0))[1],
            params_before=t.num_params,
            params_after=params_after[t.name],
            flops_before=flops[t.name],
            flops_after=flops_after[t.name],
            latency_before=latency_before.get(t.name),
            latency_after=latency_after.get(t.name)) for t in targets
    ]


def group_allocations(groups: Sequence[ChannelGroup],
                      counts: Sequence[np.ndarray], levels: Sequence[int],
                      params: Mapping[str, float], flops: Mapping[str, float],
                      curves: Mapping[str, np.ndarray]
                      ) -> List[GroupAllocation]:
    """What every group keeps, with its separable share of the cost."""
    param_tables, _ = separable_costs(groups, counts, params)
    flop_tables, _ = separable_costs(groups, counts, flops)
    out = []
    for i, (group, level) in enumerate(zip(groups, levels)):
        kept = int(counts[i][level])
        out.append(
            GroupAllocation(
                name=group.name,
                kind='channels',
                level=int(level),
                sparsity=1 - kept / group.num_channels,
                channels_before=group.num_channels,
                channels_after=kept,
                kept_share=kept / group.num_channels,
                params_before=float(param_tables[i][0]),
                params_after=float(param_tables[i][level]),
                flops_before=float(flop_tables[i][0]),
                flops_after=float(flop_tables[i][level]),
                predicted_distortion=float(curves[group.name][level])))
    return out
