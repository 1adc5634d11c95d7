"""Checking channel groups against a real forward pass.

With a group's channels masked, every consumer must read exactly zero at
the input entries that the group's index map names: otherwise a producer or
a norm is missing from the group, a layer between them does not map 0 to 0,
or the index map points at the wrong channels (e.g. a reshape in another
order). :func:`check_channel_groups` runs the model once with the groups
masked and forward pre-hooks on the consumers.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

from .groups import ChannelGroup, check_keeps
from .masking import masked_channels
from .tracer import ChannelRuleError


def _channels(layer_input: Any, kind: str) -> Optional[torch.Tensor]:
    """The input tensor with channels on dim 1 (or last for linear)."""
    features = getattr(layer_input, 'features', layer_input)  # sparse
    if not isinstance(features, torch.Tensor):
        return None
    return features.movedim(-1, 1) if kind == 'linear' else features


@torch.no_grad()
def check_channel_groups(groups: Sequence[ChannelGroup],
                         run: Callable[[], Any],
                         keeps: Optional[Mapping[str, torch.Tensor]] = None
                         ) -> Dict[str, int]:
    """Check that masked channels reach every consumer as exact zeros.

    Args:
        groups: The channel groups.
        run: Runs the model once, e.g. ``lambda: head_outputs(batch)``.
        keeps: Keep-masks per group name; None masks every other channel
            of every group.

    Returns:
        dict[str, int]: Calls seen per consumer name (a consumer that did
        not run is not checked).

    Raises:
        ChannelRuleError: Naming the first consumers that read non-zero
            values at masked entries.
    """
    if keeps is None:
        keeps = {}
        for group in groups:
            keep = torch.ones(group.num_channels, dtype=torch.bool)
            keep[1::2] = False
            keeps[group.name] = keep
    keeps = check_keeps(groups, keeps)
    expected: Dict[int, List] = {}
    for group in groups:
        keep = keeps.get(group.name)
        if keep is None or bool(keep.all()):
            continue
        pruned = (~keep).nonzero().flatten()
        for consumer in group.consumers:
            entry = expected.setdefault(
                id(consumer.module),
                [consumer.name, consumer.kind, consumer.module, []])
            entry[3].append(consumer.entries(pruned))
    calls: Dict[str, int] = {}
    failures: List[str] = []

    def make_hook(name: str, kind: str, entries: torch.Tensor):

        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
            tensor = _channels(args[0], kind)
            if tensor is None:
                return
            values = tensor.index_select(1, entries.to(tensor.device))
            if values.numel() and bool(values.abs().max() > 0):
                failures.append(name)

        return hook

    handles = []
    for name, kind, module, entries in expected.values():
        handles.append(module.register_forward_pre_hook(
            make_hook(name, kind, torch.cat(entries).unique())))
    try:
        with masked_channels(groups, keeps):
            run()
    finally:
        for handle in handles:
            handle.remove()
    if failures:
        unique = list(dict.fromkeys(failures))
        raise ChannelRuleError(
            f'{len(unique)} consumer(s) read non-zero values in masked '
            f'channels (e.g. {unique[:4]}): their channel groups miss a '
            'producer or norm, or map channels wrongly')
    return calls
