"""Physical slimming: remove pruned channels from a model, in place.

:func:`slim_model` gives every producer, norm and consumer of the pruned
groups new, smaller parameters (and BatchNorm buffers) and updates the
attributes that describe their sizes (``in_channels`` / ``out_channels``,
``in_features`` / ``out_features``, ``num_features``, spconv's
``weight_shape``). The modules' ``forward`` methods read channel counts
from the tensors, not from stored config values, so the slimmed detector
runs as before; container attributes such as ``SECONDFPN.out_channels`` or
``CenterHead.in_channels`` keep their config values. Stored counts that a
``forward`` does read (a group's :class:`~.groups.ChannelAttribute`, e.g.
``PointPillarsScatter.in_channels``) are lowered with the channels removed.

The slimmed model remembers which of its original channels every group
keeps (:func:`channel_structure`, JSON-able); :func:`apply_structure`
slims a freshly built model of the same config to that structure, after
which a slim checkpoint's ``state_dict`` loads with ``strict=True``.
Parameters are replaced, so an optimizer must be built after slimming.
"""
from __future__ import annotations

import copy
from typing import (Dict, Iterable, List, Mapping, Optional, Sequence,
                    Tuple)

import torch
from torch import nn

from ..errors import PruningInputError
from ..targets import layer_kind
from .discover import trace_channel_groups
from .groups import IN_AXES, ChannelGroup, check_keeps

STRUCTURE_TYPE = 'rdprune_mm.channel_structure'
STRUCTURE_VERSION = 1
_STRUCTURE_ATTR = '_rdprune_mm_channel_structure'


class _Plan:
    """The entries to keep along each sliced axis of one module."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.keep: Dict[int, torch.Tensor] = {}

    def drop(self, axis: int, size: int, entries: torch.Tensor) -> None:
        keep = self.keep.setdefault(axis, torch.ones(size, dtype=torch.bool))
        keep[entries] = False

    def _indices(self, axis: int, device: torch.device) -> torch.Tensor:
        return self.keep[axis].nonzero().flatten().to(device)

    def apply(self) -> None:
        kind = layer_kind(self.module)
        if kind is None:
            self._apply_norm()
        else:
            self._apply_weight_layer(*kind)

    def _apply_weight_layer(self, kind: str, out_axis: int) -> None:
        module = self.module
        weight = module.weight
        out_axis %= weight.dim()
        in_axis = IN_AXES[kind] % weight.dim()
        new = weight.detach()
        for axis in self.keep:
            new = new.index_select(axis, self._indices(axis, new.device))
        module.weight = nn.Parameter(
            new.contiguous(), requires_grad=weight.requires_grad)
        bias = getattr(module, 'bias', None)
        if out_axis in self.keep and bias is not None:
            module.bias = nn.Parameter(
                bias.detach().index_select(
                    0, self._indices(out_axis, bias.device)),
                requires_grad=bias.requires_grad)
        in_size, out_size = new.shape[in_axis], new.shape[out_axis]
        for attr, value in (('in_channels', in_size), ('out_channels',
                                                       out_size),
                            ('in_features', in_size), ('out_features',
                                                       out_size)):
            if hasattr(module, attr):
                setattr(module, attr, int(value))
        if hasattr(module, 'weight_shape'):  # spconv 2
            module.weight_shape = list(new.shape)

    def _apply_norm(self) -> None:
        module = self.module
        index = self._indices(0, torch.device('cpu'))
        for attr in ('weight', 'bias'):
            param = getattr(module, attr, None)
            if param is not None:
                setattr(module, attr, nn.Parameter(
                    param.detach().index_select(0, index.to(param.device)),
                    requires_grad=param.requires_grad))
        for attr in ('running_mean', 'running_var'):
            buffer = getattr(module, attr, None)
            if buffer is not None:
                setattr(module, attr,
                        buffer.index_select(0, index.to(buffer.device)))
        module.num_features = int(len(index))


def _check_model(model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
    own = {id(module) for module in model.modules()}
    for group in groups:
        for layer in (*group.layers, *group.attributes):
            if id(layer.module) not in own:
                raise PruningInputError(
                    f'channel group {group.name} holds {layer.name}, which '
                    'is not a module of this model; find the groups on the '
                    'model you slim (find_channel_groups(model))')


@torch.no_grad()
def slim_model(model: nn.Module, groups: Sequence[ChannelGroup],
               keeps: Mapping[str, torch.Tensor]) -> dict:
    """Remove the pruned channels of the groups from the model, in place.

    Args:
        model: The model the groups were found on.
        groups: Its channel groups.
        keeps: bool keep-mask per group name (False: removed); groups left
            out keep every channel. Each mask must keep one channel or more.

    Returns:
        dict: The model's channel structure after slimming
        (:func:`channel_structure`).

    Raises:
        PruningInputError: If a mask does not fit its group or keeps no
            channel, or a group belongs to another model.
    """
    keeps = check_keeps(groups, keeps, allow_empty=False)
    _check_model(model, groups)
    plans: Dict[int, _Plan] = {}
    counts: Dict[Tuple[int, str], list] = {}
    changed = []
    for group in groups:
        keep = keeps.get(group.name)
        if keep is None or bool(keep.all()):
            continue
        changed.append((group, keep))
        pruned = (~keep).nonzero().flatten()
        for layer in group.layers:
            plan = plans.setdefault(id(layer.module), _Plan(layer.module))
            plan.drop(layer.axis, layer.axis_size, layer.entries(pruned))
        for attribute in group.attributes:
            entry = counts.setdefault(
                (id(attribute.module), attribute.attr),
                [attribute, set()])
            entry[1].update(attribute.entries(pruned).tolist())
    for plan in plans.values():
        plan.apply()
    for attribute, removed in counts.values():
        setattr(attribute.module, attribute.attr,
                attribute.axis_size - len(removed))
    _record_structure(model, changed)
    return channel_structure(model)


def _record_structure(model: nn.Module, changed: Iterable) -> None:
    """Compose the kept channels with those of earlier slimming."""
    record = dict(getattr(model, _STRUCTURE_ATTR, {}))
    for group, keep in changed:
        kept = keep.nonzero().flatten().tolist()
        earlier = record.get(group.name)
        if earlier is None:
            record[group.name] = dict(
                num_channels=group.num_channels, keep=kept)
        else:
            record[group.name] = dict(
                num_channels=earlier['num_channels'],
                keep=[earlier['keep'][i] for i in kept])
    object.__setattr__(model, _STRUCTURE_ATTR, record)


def channel_structure(model: nn.Module) -> dict:
    """The JSON-able channel structure of a (slimmed) model.

    Returns:
        dict: ``{'type': 'rdprune_mm.channel_structure', 'version': 1,
        'groups': {name: {'num_channels': C, 'keep': [c, ...]}}}``: per
        slimmed group, its channel count in the original model and the
        original channels it keeps (sorted). Empty ``groups`` for a model
        that was never slimmed.
    """
    return dict(
        type=STRUCTURE_TYPE,
        version=STRUCTURE_VERSION,
        groups=copy.deepcopy(getattr(model, _STRUCTURE_ATTR, {})))


def apply_structure(model: nn.Module, structure: dict,
                    exclude: Optional[Iterable[str]] = None
                    ) -> List[ChannelGroup]:
    """Slim an unpruned model (e.g. freshly built from the config) to a
    channel structure, keeping the structure's channels.

    Afterwards the ``state_dict`` of the slimmed model that the structure
    came from loads into ``model`` with ``strict=True``.

    Args:
        model: The unpruned model.
        structure: What :func:`channel_structure` returned.
        exclude: The ``exclude`` patterns the groups were found with, if
            they made modules without channel rules black boxes.

    Returns:
        list[ChannelGroup]: The model's channel groups after slimming.

    Raises:
        PruningInputError: If the structure is not one, or does not fit
            the model.
    """
    if not isinstance(structure, dict) or structure.get(
            'type') != STRUCTURE_TYPE:
        raise PruningInputError(
            'not a channel structure (expected a dict with type '
            f"'{STRUCTURE_TYPE}'); give what channel_structure(model) "
            'returned for the slimmed model')
    if structure.get('version') != STRUCTURE_VERSION:
        raise PruningInputError(
            f"channel structure version {structure.get('version')} is not "
            f'supported (expected {STRUCTURE_VERSION}); slim the model '
            'again with this version of rdprune_mm')
    groups = trace_channel_groups(model, exclude)
    by_name = {group.name: group for group in groups}
    keeps = {}
    for name, entry in structure['groups'].items():
        group = by_name.get(name)
        if group is None:
            raise PruningInputError(
                f'the channel structure slims group {name}, which this '
                'model does not have; build the model from the config the '
                'structure was made with (and pass the same exclude)')
        if group.num_channels != entry['num_channels']:
            raise PruningInputError(
                f'group {name} has {group.num_channels} channels, the '
                f"structure expects {entry['num_channels']}; apply the "
                'structure to an unpruned model of the same config')
        keep = torch.zeros(group.num_channels, dtype=torch.bool)
        keep[torch.as_tensor(entry['keep'], dtype=torch.long)] = True
        keeps[name] = keep
    slim_model(model, groups, keeps)
    return trace_channel_groups(model, exclude)
