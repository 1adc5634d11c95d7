"""Channel masks: the masked model that :func:`.slim.slim_model` would
produce, without changing any shape.

Masking channel ``c`` of a group sets to zero the producers' output filters
``c`` and their biases, and the norms' ``weight`` and ``bias`` at the
channel's entries (for a norm without affine parameters, its
``running_mean``). Every producer and norm of the group is masked, and
between them only layers that map 0 to 0 run (:mod:`.rules_common`), so the
channel is exactly 0 wherever it is read (BatchNorm alone would give
``beta``). The consumers then add nothing for it, as the slimmed model,
which does not have it, adds nothing: the masked and the slimmed models
compute the same outputs up to the order of float sums.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

import torch

from .groups import ChannelGroup, check_keeps


def _masked_tensors(group: ChannelGroup, pruned: torch.Tensor
                    ) -> List[Tuple[torch.Tensor, int, torch.Tensor]]:
    """(tensor, axis, entries) to zero for the pruned channels."""
    out = []
    for producer in group.producers:
        entries = producer.entries(pruned)
        module = producer.module
        out.append((module.weight, producer.axis, entries))
        if getattr(module, 'bias', None) is not None:
            out.append((module.bias, 0, entries))
    for norm in group.norms:
        entries = norm.entries(pruned)
        module = norm.module
        if getattr(module, 'weight', None) is not None:
            out.append((module.weight, 0, entries))
            out.append((module.bias, 0, entries))
        elif getattr(module, 'running_mean', None) is not None:
            out.append((module.running_mean, 0, entries))
    return out


@torch.no_grad()
def apply_channel_mask(group: ChannelGroup, keep: torch.Tensor) -> None:
    """Zero the channels of a group that ``keep`` prunes, in place.

    Args:
        group: The channel group.
        keep: bool tensor of ``group.num_channels``; False where pruned.

    Raises:
        PruningInputError: If ``keep`` does not fit the group.
    """
    keep = check_keeps([group], {group.name: keep})[group.name]
    pruned = (~keep).nonzero().flatten()
    if not len(pruned):
        return
    for tensor, axis, entries in _masked_tensors(group, pruned):
        tensor.index_fill_(axis, entries.to(tensor.device), 0.0)


@contextmanager
def masked_channels(groups: Sequence[ChannelGroup],
                    keeps: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Context manager: the groups' channels masked inside, restored after.

    Args:
        groups: The channel groups (``keeps`` names some of them).
        keeps: Keep-masks per group name.

    Example:
        >>> with masked_channels(groups, {g.name: g.keep_mask(8)}):
        ...     outputs = head_outputs(batch)
    """
    by_name = {group.name: group for group in groups}
    keeps = check_keeps(groups, keeps)
    saved: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}
    for name, keep in keeps.items():
        pruned = (~keep).nonzero().flatten()
        for tensor, _, _ in _masked_tensors(by_name[name], pruned):
            saved.setdefault(id(tensor), (tensor, tensor.detach().clone()))
    try:
        for name, keep in keeps.items():
            apply_channel_mask(by_name[name], keep)
        yield
    finally:
        with torch.no_grad():
            for tensor, original in saved.values():
                tensor.copy_(original)

