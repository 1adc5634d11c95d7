"""Symbolic tracing of channels through a model, rule by rule.

The tracer runs a model's channel rules (:mod:`.registry`) instead of its
``forward``. What flows between rules is a :class:`Feature`: the channels of
one tensor, described as segments. Each segment is a *space* (a vector of
channels that one or more layers produce) and an index map from the space's
channels to the tensor's channels. Layers that must see the same channels
(residual adds, one layer run on several inputs) unite their spaces. Every
space that survives the trace with producers and consumers, and that is not
*fixed* (the model's inputs and outputs, channels read by a module without a
rule), becomes a :class:`~.groups.ChannelGroup`. A layer that reads one
space at several places of its input (``torch.cat([x, x])``) is one entry
of the group whose index map has one column per place.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import (Any, Dict, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from ..errors import PruningInputError
from ..patterns import matches_any
from ..targets import layer_kind
from .groups import IN_AXES, ChannelAttribute, ChannelGroup, ChannelLayer
from .registry import exact_channel_rule, inherited_channel_rule


class ChannelRuleError(RuntimeError):
    """A channel rule contradicts the model (a bug in the rule)."""


def _identity(size: int) -> torch.Tensor:
    return torch.arange(size, dtype=torch.long)[:, None]


@dataclass(frozen=True)
class Feature:
    """The channels of one tensor.

    Args:
        segments: ``(space, index)`` pairs: channel ``c`` of ``space`` is
            tensor channel ``index[c]`` (``index`` is ``[size, width]``).
        num_channels: The tensor's channel count; None when unknown (the
            output of a module without a rule).
    """

    segments: Tuple[Tuple[int, torch.Tensor], ...]
    num_channels: Optional[int]

    @classmethod
    def unknown(cls) -> 'Feature':
        return cls((), None)

    @property
    def is_unknown(self) -> bool:
        return self.num_channels is None

    @staticmethod
    def cat(features: Sequence['Feature']) -> 'Feature':
        """The feature of ``torch.cat(tensors, dim=1)``."""
        if any(f.is_unknown for f in features):
            return Feature.unknown()
        segments, offset = [], 0
        for feature in features:
            segments += [(space, index + offset)
                         for space, index in feature.segments]
            offset += feature.num_channels
        return Feature(tuple(segments), offset)

    def flatten_depth(self, depth: int) -> 'Feature':
        """The feature of ``x.view(N, C * depth, H, W)`` for ``x`` of shape
        ``(N, C, depth, H, W)``: channel ``c`` becomes ``c * depth + d``."""
        if self.is_unknown:
            return self
        steps = torch.arange(depth, dtype=torch.long)
        segments = tuple(
            (space, (index[:, :, None] * depth + steps).flatten(1))
            for space, index in self.segments)
        return Feature(segments, self.num_channels * depth)


@dataclass
class _Record:
    role: str  # producer | norm | consumer
    name: str
    module: nn.Module
    kind: str
    axis: int
    space: int
    index: torch.Tensor


def iter_features(value: Any) -> Iterator[Feature]:
    """Every :class:`Feature` in nested lists, tuples and dicts."""
    if isinstance(value, Feature):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_features(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_features(item)


def _owns_parameters(module: nn.Module) -> bool:
    return (next(module.parameters(recurse=False), None) is not None
            or isinstance(module, _NormBase))


class ChannelTracer:
    """Runs the channel rules of a model and collects its channel groups.

    Args:
        model: The model.
        opaque: Regular expressions over module names: a module without a
            rule that matches one is treated as a black box whose input and
            output channels are kept, instead of being refused.
    """

    def __init__(self, model: nn.Module,
                 opaque: Optional[Iterable[str]] = None) -> None:
        self.model = model
        self.opaque = list(opaque or [])
        self._names = {id(m): name for name, m in model.named_modules()}
        self._parent: List[int] = []
        self._size: List[int] = []
        self._fixed: Dict[int, str] = {}
        self._records: List[_Record] = []
        self._attributes: List[Tuple[str, nn.Module, str, int,
                                     torch.Tensor]] = []
        self._produced: Dict[str, Feature] = {}
        self._read: Dict[str, Feature] = {}
        self.visited: set = set()
        self._opaque_prefixes: List[str] = []

    # ------------------------------------------------------------ spaces
    def _new_space(self, size: int) -> int:
        self._parent.append(len(self._parent))
        self._size.append(size)
        return len(self._parent) - 1

    def find(self, space: int) -> int:
        """The representative of a space's union."""
        root = space
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[space] != root:
            self._parent[space], space = root, self._parent[space]
        return root

    def _union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self._size[a] != self._size[b]:
            raise ChannelRuleError(
                f'channel rules unite spaces of {self._size[a]} and '
                f'{self._size[b]} channels')
        self._parent[b] = a
        if b in self._fixed:
            self._fixed.setdefault(a, self._fixed[b])

    def fix(self, *values: Any, reason: str) -> None:
        """Keep every channel of the features in ``values`` (nested)."""
        for feature in iter_features(values):
            for space, _ in feature.segments:
                self._fixed.setdefault(self.find(space), reason)

    def input(self, num_channels: Optional[int] = None) -> Feature:
        """A model input: its channels are never pruned."""
        if num_channels is None:
            return Feature.unknown()
        space = self._new_space(num_channels)
        self._fixed[space] = 'model input'
        return Feature(((space, _identity(num_channels)), ), num_channels)

    # ------------------------------------------------------------ joins
    def unite(self, a: Feature, b: Feature) -> Feature:
        """Declare that two features hold the same channels (a sum, or one
        layer reading both). Features whose segments do not line up, or
        with unknown channels, are kept whole instead."""
        if a.is_unknown or b.is_unknown:
            self.fix(a, b, reason='joined with channels of unknown layout')
            return b if a.is_unknown else a
        if a.num_channels != b.num_channels:
            raise ChannelRuleError(
                f'channel rules join features of {a.num_channels} and '
                f'{b.num_channels} channels')
        aligned = len(a.segments) == len(b.segments) and all(
            ia.shape == ib.shape and torch.equal(ia, ib)
            for (_, ia), (_, ib) in zip(a.segments, b.segments))
        if not aligned:
            self.fix(a, b, reason='joined with a differently laid out '
                     'feature')
            return a
        for (sa, _), (sb, _) in zip(a.segments, b.segments):
            self._union(sa, sb)
        return a

    def add(self, *features: Feature) -> Feature:
        """The feature of an element-wise sum (a residual add)."""
        result = features[0]
        for feature in features[1:]:
            result = self.unite(result, feature)
        return result

    @staticmethod
    def cat(features: Sequence[Feature]) -> Feature:
        """The feature of a concatenation along channels."""
        return Feature.cat(features)

    # ------------------------------------------------------------ layers
    def name_of(self, module: nn.Module) -> str:
        try:
            return self._names[id(module)]
        except KeyError:
            raise ChannelRuleError(
                f'{type(module).__name__} is not a module of the model'
            ) from None

    def _record(self, role: str, name: str, module: nn.Module, kind: str,
                axis: int, feature: Feature) -> None:
        for space, index in feature.segments:
            self._records.append(
                _Record(role, name, module, kind, axis, space, index))

    def _read_once(self, name: str, x: Feature) -> Feature:
        """The feature a layer reads; a layer run again unites its inputs."""
        if name in self._read:
            return self.unite(self._read[name], x)
        self._read[name] = x
        return x

    def weight_layer(self, module: nn.Module, x: Feature) -> Feature:
        """Rule of a convolution, deconvolution or linear layer."""
        name = self.name_of(module)
        kind, out_axis = layer_kind(module)
        weight = module.weight
        in_axis = IN_AXES[kind] % weight.dim()
        out_axis %= weight.dim()
        in_size = getattr(module, 'in_channels',
                          getattr(module, 'in_features', None))
        in_size = weight.shape[in_axis] if in_size is None else in_size
        if x.num_channels is not None and x.num_channels != in_size:
            raise ChannelRuleError(
                f'{name} has {in_size} input channels, but the channel '
                f'rules feed it {x.num_channels}')
        self.visited.add(name)
        if name in self._produced:
            self._read_once(name, x)
            return self._produced[name]
        x = self._read_once(name, x)
        out_size = weight.shape[out_axis]
        space = self._new_space(out_size)
        out = Feature(((space, _identity(out_size)), ), out_size)
        self._produced[name] = out
        if getattr(module, 'groups', 1) != 1:
            self.fix(x, out, reason=f'grouped convolution {name}')
            return out
        self._record('consumer', name, module, kind, in_axis, x)
        self._record('producer', name, module, kind, out_axis, out)
        return out

    def norm_layer(self, module: nn.Module, x: Feature) -> Feature:
        """Rule of a per-channel normalization layer (BatchNorm)."""
        name = self.name_of(module)
        self.visited.add(name)
        if x.num_channels is not None and x.num_channels != \
                module.num_features:
            raise ChannelRuleError(
                f'{name} has {module.num_features} channels, but the '
                f'channel rules feed it {x.num_channels}')
        if name in self._read:
            return self._read_once(name, x)
        x = self._read_once(name, x)
        self._record('norm', name, module, 'norm', 0, x)
        return x

    def channel_count(self, module: nn.Module, attr: str,
                      x: Feature) -> Feature:
        """Declare that ``module.attr`` stores the channel count of ``x``
        (e.g. the canvas channels of ``PointPillarsScatter``): slimming
        lowers it by the channels it removes from ``x``.

        Args:
            module: The module whose ``forward`` reads the attribute.
            attr: The attribute's name.
            x: The feature whose channels it counts.

        Returns:
            Feature: ``x``.
        """
        name = self.name_of(module)
        value = getattr(module, attr)
        if x.is_unknown:
            return x
        if int(value) != x.num_channels:
            raise ChannelRuleError(
                f'{name}.{attr} is {value}, but the channel rules feed it '
                f'{x.num_channels} channels')
        for space, index in x.segments:
            self._attributes.append((name, module, attr, space, index))
        return x

    def passthrough(self, module: nn.Module, x: Any) -> Any:
        """Rule of a layer that keeps channels and maps 0 to 0 (ReLU,
        pooling, upsampling, dropout)."""
        self.visited.add(self.name_of(module))
        return x

    def call(self, module: nn.Module, *inputs: Any, **kwargs: Any) -> Any:
        """Run a module's channel rule on the features it receives.

        A module without a rule (or whose class overrides what an inherited
        rule mirrors) is refused if it holds parameters, unless its name
        matches an ``opaque`` pattern; it is then a black box, like a module
        without parameters: the channels it reads are kept and its output
        has unknown channels. Keyword inputs go to rules only (layers and
        black boxes read them as positional ones).
        """
        name = self.name_of(module)
        cls = type(module)
        rule = exact_channel_rule(cls)
        if rule is not None:
            self.visited.add(name)
            return rule(self, module, *inputs, **kwargs)
        inputs = (*inputs, *kwargs.values())
        if layer_kind(module) is not None:
            return self.weight_layer(module, *inputs)
        if isinstance(module, _BatchNorm):
            return self.norm_layer(module, *inputs)
        rule, reason = inherited_channel_rule(cls)
        if rule is not None:
            self.visited.add(name)
            return rule(self, module, *inputs)
        return self.black_box(module, *inputs, reason=reason)

    def black_box(self, module: nn.Module, *inputs: Any,
                  reason: Optional[str] = None) -> Feature:
        """Treat a module as a black box: refused if it holds parameters
        and its name matches no ``opaque`` pattern; otherwise the channels
        it reads are kept and its output has unknown channels.

        Args:
            module: The module.
            *inputs: The features it reads.
            reason: Why it has no rule (for the error message).

        Returns:
            Feature: An unknown feature.
        """
        name = self.name_of(module)
        has_parameters = any(_owns_parameters(m) for m in module.modules())
        why = f' ({reason})' if reason else ''
        if has_parameters and not matches_any(name, self.opaque):
            raise PruningInputError(
                f'no channel rule for {type(module).__name__} at '
                f"'{name}'{why}, which holds layers with parameters; "
                'register one with rdprune_mm.channels.'
                f'register_channel_rule({type(module).__name__}) or exclude '
                f"it (exclude=[r'^{re.escape(name)}']) to keep its channels")
        self.fix(inputs, reason=f'read by {name} ({type(module).__name__}), '
                 'which has no channel rule')
        self.visited.add(name)
        self._opaque_prefixes.append(name + '.')
        return Feature.unknown()

    # ------------------------------------------------------------ results
    def check_reached(self) -> None:
        """Refuse when a layer with parameters was never traced.

        Raises:
            PruningInputError: Naming the layers and the fix.
        """
        missing = [
            name for name, module in self.model.named_modules()
            if _owns_parameters(module) and name not in self.visited
            and not any(name.startswith(p) for p in self._opaque_prefixes)
            and not matches_any(name, self.opaque)
        ]
        if missing:
            raise PruningInputError(
                f'the channel rules of {type(self.model).__name__} do not '
                f'reach {len(missing)} layer(s) with parameters (e.g. '
                f'{missing[:4]}), so their channels cannot be followed; '
                'register a channel rule for the module that runs them, or '
                'exclude them with exclude=[<pattern>]')

    def groups(self) -> List[ChannelGroup]:
        """The channel groups: united spaces with producers and consumers
        that are not fixed, ordered by their first producer in the trace.

        A layer recorded several times in one group with different index
        maps (it reads the group's channels at several places) becomes one
        entry whose index map puts the places side by side."""
        found: Dict[int, Dict[str, Dict[str, list]]] = {}
        for record in self._records:
            root = self.find(record.space)
            if root in self._fixed:
                continue
            entry = found.setdefault(
                root, dict(producer={}, norm={}, consumer={}))
            layer = entry[record.role].setdefault(
                record.name, [record, []])
            if not any(i.shape == record.index.shape
                       and torch.equal(i, record.index) for i in layer[1]):
                layer[1].append(record.index)
        attributes: Dict[int, Dict[Tuple[str, str], list]] = {}
        for name, module, attr, space, index in self._attributes:
            root = self.find(space)
            if root in self._fixed:
                continue
            item = attributes.setdefault(root, {}).setdefault(
                (name, attr), [module, []])
            if not any(i.shape == index.shape and torch.equal(i, index)
                       for i in item[1]):
                item[1].append(index)

        def layers(records: Dict[str, list]) -> List[ChannelLayer]:
            return [
                ChannelLayer(record.name, record.module, record.kind,
                             record.axis, torch.cat(indices, 1))
                for record, indices in records.values()
            ]

        groups = []
        for root, entry in found.items():
            if not entry['producer'] or not entry['consumer']:
                continue
            producers = layers(entry['producer'])
            groups.append(
                ChannelGroup(
                    producers[0].name, self._size[root], producers,
                    layers(entry['norm']), layers(entry['consumer']), [
                        ChannelAttribute(name, module, attr,
                                         torch.cat(indices, 1))
                        for (name, attr), (module, indices) in
                        attributes.get(root, {}).items()
                    ]))
        first = {}
        for position, record in enumerate(self._records):
            if record.role == 'producer':
                first.setdefault(record.name, position)
        groups.sort(key=lambda g: first[g.name])
        return groups
