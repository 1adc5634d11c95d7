"""Channel groups: the output channels that must be pruned together.

A :class:`ChannelGroup` is one vector of ``num_channels`` channels that
several layers share:

* **producers** write it: their output channels (the ``out`` axis of their
  weight, see :mod:`rdprune_mm.targets`) are the group's channels, in order.
  Layers whose outputs meet in a residual add, or one layer run on several
  inputs, produce the same group;
* **norms** (BatchNorm) scale it channel by channel;
* **consumers** read it: group channel ``c`` is read through the input
  channels ``index[c]`` of the consumer's weight (its ``in`` axis). The index
  map is the identity for a plain chain, ``offset + c`` where the group is
  one part of a concatenation, and ``c * D .. c * D + D - 1`` where a sparse
  tensor of ``C`` channels and depth ``D`` is flattened into ``C * D`` BEV
  channels.

Removing channel ``c`` removes the producers' output filters ``c``, the
norms' entries ``index[c]`` and the consumers' input slices ``index[c]``.

Some modules without weights size a tensor from a stored channel count
(``PointPillarsScatter`` builds its BEV canvas with ``in_channels``
channels): such a count is a group's :class:`ChannelAttribute`, lowered by
:func:`~.slim.slim_model` with the channels it removes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

import torch
from torch import nn

from ..errors import PruningInputError
from ..masks import mask_from_order

#: Axis of the input channels in a layer's weight, per kind of
#: :func:`rdprune_mm.targets.layer_kind`.
IN_AXES: Dict[str, int] = {
    'conv': 1,  # (out, in, k...)
    'linear': 1,  # (out, in)
    'deconv': 0,  # (in, out, k...)
    'spconv': -1,  # (out, k..., in)
    'mmcv_spconv': -2,  # (k..., in, out)
}

#: Score kinds of :meth:`ChannelGroup.channel_scores`.
SCORE_KINDS = ('l2', 'l1', 'bn')


@dataclass(eq=False)
class ChannelLayer:
    """One layer's part in a channel group.

    Args:
        name: The module's name in the model.
        module: The module.
        kind: ``conv``, ``linear``, ``deconv``, ``spconv``, ``mmcv_spconv``
            (weights) or ``norm`` (BatchNorm).
        axis: The axis of ``module.weight`` that the group indexes (the out
            axis of a producer, the in axis of a consumer; 0 for norms),
            non-negative.
        index: ``[num_channels, width]`` long tensor: group channel ``c`` is
            entry ``index[c]`` of that axis.
    """

    name: str
    module: nn.Module
    kind: str
    axis: int
    index: torch.Tensor

    @property
    def width(self) -> int:
        """How many entries of the axis one group channel occupies."""
        return self.index.shape[1]

    @property
    def axis_size(self) -> int:
        """The length of the axis (all channels, not only this group's)."""
        if self.kind == 'norm':
            return self.module.num_features
        return self.module.weight.shape[self.axis]

    def entries(self, channels: torch.Tensor) -> torch.Tensor:
        """Flat axis entries of the given group channels (sorted)."""
        return self.index[channels].flatten().sort().values

    def describe(self) -> dict:
        """JSON-able summary: name, kind, axis and the index map's shape."""
        first = self.index[0].tolist() if len(self.index) else []
        return dict(name=self.name, kind=self.kind, axis=self.axis,
                    width=self.width, first=first)


@dataclass(eq=False)
class ChannelAttribute:
    """A module attribute that stores the channel count of a tensor which
    holds a group's channels (e.g. ``PointPillarsScatter.in_channels``).

    Args:
        name: The module's name in the model.
        module: The module.
        attr: The attribute's name.
        index: ``[num_channels, width]`` long tensor: the tensor channels
            that group channel ``c`` occupies.
    """

    name: str
    module: nn.Module
    attr: str
    index: torch.Tensor

    @property
    def axis_size(self) -> int:
        """The attribute's value: the tensor's channel count."""
        return int(getattr(self.module, self.attr))

    def entries(self, channels: torch.Tensor) -> torch.Tensor:
        """Flat tensor channels of the given group channels (sorted)."""
        return self.index[channels].flatten().sort().values

    def describe(self) -> dict:
        """JSON-able summary: name, attribute and the index map's shape."""
        return dict(name=self.name, attr=self.attr,
                    width=self.index.shape[1])


@dataclass(eq=False)
class ChannelGroup:
    """Output channels that must be pruned together (see the module doc).

    Args:
        name: The first producer's module name (unique in a model).
        num_channels: Number of channels of the group.
        producers: Layers whose output channels are the group's channels.
        norms: Normalization layers over the group's channels.
        consumers: Layers that read the group's channels.
        attributes: Stored channel counts of tensors that hold the group's
            channels (not layers: no weight is sliced).
    """

    name: str
    num_channels: int
    producers: List[ChannelLayer] = field(default_factory=list)
    norms: List[ChannelLayer] = field(default_factory=list)
    consumers: List[ChannelLayer] = field(default_factory=list)
    attributes: List[ChannelAttribute] = field(default_factory=list)

    @property
    def layers(self) -> List[ChannelLayer]:
        return [*self.producers, *self.norms, *self.consumers]

    def __repr__(self) -> str:
        return (f'ChannelGroup({self.name!r}, num_channels='
                f'{self.num_channels}, producers='
                f'{[p.name for p in self.producers]}, norms='
                f'{[n.name for n in self.norms]}, consumers='
                f'{[c.name for c in self.consumers]}'
                + (f', attributes='
                   f"{[f'{a.name}.{a.attr}' for a in self.attributes]}"
                   if self.attributes else '') + ')')

    @torch.no_grad()
    def channel_scores(self, kind: str = 'l2') -> torch.Tensor:
        """Importance of every channel (the larger, the more important).

        Args:
            kind: ``'l2'``: the sum over producers of the squared L2 norm of
                the channel's output filter (the whole slice of the weight at
                that output channel); ``'l1'``: the sum over producers of the
                filter's L1 norm; ``'bn'``: the sum over norms of
                ``|gamma|`` at the channel's entries (network slimming),
                falling back to ``'l2'`` for a group without affine norms.

        Returns:
            torch.Tensor: float64 CPU tensor of ``num_channels`` scores.
        """
        if kind not in SCORE_KINDS:
            raise PruningInputError(
                f'unknown channel score kind {kind!r}; use one of '
                f'{SCORE_KINDS}')
        scores = torch.zeros(self.num_channels, dtype=torch.float64)
        if kind == 'bn':
            norms = [n for n in self.norms
                     if getattr(n.module, 'weight', None) is not None]
            if not norms:
                return self.channel_scores('l2')
            for norm in norms:
                gamma = norm.module.weight.detach().abs().to(
                    'cpu', torch.float64)
                scores += gamma[norm.index].sum(1)
            return scores
        for producer in self.producers:
            weight = producer.module.weight.detach().to('cpu', torch.float64)
            rows = weight.movedim(producer.axis, 0).reshape(
                weight.shape[producer.axis], -1)[producer.index[:, 0]]
            scores += (rows.pow(2) if kind == 'l2' else rows.abs()).sum(1)
        return scores

    def channel_order(self, kind: str = 'l2') -> torch.Tensor:
        """Channel indices, least important first (ties: lower index first).

        Args:
            kind: See :meth:`channel_scores`.

        Returns:
            torch.Tensor: long tensor, a permutation of the channels.
        """
        return torch.argsort(self.channel_scores(kind), stable=True)

    def keep_mask(self, num_keep: int, kind: str = 'l2') -> torch.Tensor:
        """Keep-mask of the ``num_keep`` most important channels.

        Args:
            num_keep: How many channels to keep, ``0 <= num_keep <=
                num_channels``.
            kind: See :meth:`channel_scores`.

        Returns:
            torch.Tensor: bool tensor of ``num_channels``; True where kept.
        """
        if not 0 <= num_keep <= self.num_channels:
            raise PruningInputError(
                f'group {self.name} has {self.num_channels} channels, '
                f'cannot keep {num_keep}; keep between 0 and '
                f'{self.num_channels}')
        return mask_from_order(self.channel_order(kind),
                               (self.num_channels, ),
                               self.num_channels - num_keep)

    @property
    def params_per_channel(self) -> int:
        """Weights removed with one channel while every other group keeps
        all of its channels: the producers' output filters plus the
        consumers' input slices (biases and norms are not counted, as in
        :class:`rdprune_mm.targets.PruningTarget`)."""
        total = 0
        for layer in (*self.producers, *self.consumers):
            weight = layer.module.weight
            total += weight.numel() // weight.shape[layer.axis] * layer.width
        return total

    def describe(self) -> dict:
        """JSON-able summary of the group."""
        return dict(
            name=self.name,
            num_channels=self.num_channels,
            producers=[p.describe() for p in self.producers],
            norms=[n.describe() for n in self.norms],
            consumers=[c.describe() for c in self.consumers],
            attributes=[a.describe() for a in self.attributes])


def check_keeps(groups: Sequence[ChannelGroup],
                keeps: Mapping[str, torch.Tensor],
                allow_empty: bool = True) -> Dict[str, torch.Tensor]:
    """Validate keep-masks against groups; return them as CPU bool tensors.

    Raises:
        PruningInputError: If a mask names no group, has the wrong length
            or dtype, or (``allow_empty=False``) keeps no channel.
    """
    by_name = {group.name: group for group in groups}
    checked = {}
    for name, keep in keeps.items():
        group = by_name.get(name)
        if group is None:
            raise PruningInputError(
                f'keep-mask for unknown channel group {name!r}; use the '
                'names of find_channel_groups(model) (e.g. '
                f'{list(by_name)[:3]})')
        keep = torch.as_tensor(keep).to('cpu')
        if keep.dtype != torch.bool or keep.shape != (group.num_channels, ):
            raise PruningInputError(
                f'the keep-mask of group {name} must be a bool tensor of '
                f'shape ({group.num_channels},), got {keep.dtype} '
                f'{tuple(keep.shape)}; use group.keep_mask(num_keep)')
        if not allow_empty and not keep.any():
            raise PruningInputError(
                f'the keep-mask of group {name} keeps no channel, which '
                'would leave layers without channels; keep at least one')
        checked[name] = keep
    return checked


def layer_fractions(groups: Sequence[ChannelGroup],
                    keep_counts: Mapping[str, int]
                    ) -> Dict[str, Tuple[float, float]]:
    """Kept shares of every weight layer's output and input channels.

    Args:
        groups: The channel groups.
        keep_counts: Channels kept per group name; groups left out keep all.

    Returns:
        dict[str, tuple[float, float]]: Per layer name that some group
        touches, ``(kept out / all out, kept in / all in)``.
    """
    removed_out: Dict[str, int] = {}
    removed_in: Dict[str, int] = {}
    sizes: Dict[str, Tuple[int, int]] = {}
    for group in groups:
        removed = group.num_channels - int(
            keep_counts.get(group.name, group.num_channels))
        for role, layers, totals in (('out', group.producers, removed_out),
                                     ('in', group.consumers, removed_in)):
            for layer in layers:
                weight = layer.module.weight
                out_size, in_size = sizes.get(layer.name, (None, None))
                if role == 'out':
                    out_size = weight.shape[layer.axis]
                else:
                    in_size = weight.shape[layer.axis]
                sizes[layer.name] = (out_size, in_size)
                totals[layer.name] = totals.get(layer.name,
                                                0) + removed * layer.width
    fractions = {}
    for name, (out_size, in_size) in sizes.items():
        out_share = 1.0 if out_size is None else (
            out_size - removed_out.get(name, 0)) / out_size
        in_share = 1.0 if in_size is None else (
            in_size - removed_in.get(name, 0)) / in_size
        fractions[name] = (out_share, in_share)
    return fractions


def cost_after(groups: Sequence[ChannelGroup],
               keep_counts: Mapping[str, int],
               dense_costs: Mapping[str, float]) -> Dict[str, float]:
    """Per-layer cost once the groups keep the given channel counts.

    A layer's cost (weights, or FLOPs measured on the unpruned model with
    :func:`rdprune_mm.flops.measure_flops`) scales with the kept share of
    its output channels times the kept share of its input channels. For
    sparse convolutions this keeps the measured active pairs: pruning
    channels removes no voxel.

    Args:
        groups: The channel groups.
        keep_counts: Channels kept per group name; groups left out keep all.
        dense_costs: Unpruned cost per layer name (e.g.
            ``{t.name: t.num_params for t in find_targets(model)}``).

    Returns:
        dict[str, float]: The cost of every layer of ``dense_costs``.
    """
    fractions = layer_fractions(groups, keep_counts)
    costs = {}
    for name, cost in dense_costs.items():
        out_share, in_share = fractions.get(name, (1.0, 1.0))
        costs[name] = float(cost) * out_share * in_share
    return costs


def total_cost_after(groups: Sequence[ChannelGroup],
                     keep_counts: Mapping[str, int],
                     dense_costs: Mapping[str, float]) -> float:
    """Sum of :func:`cost_after` over the layers."""
    return sum(cost_after(groups, keep_counts, dense_costs).values())

