"""Finding a model's channel groups."""
from __future__ import annotations

import importlib
from typing import Iterable, List, Optional

from torch import nn

from ..errors import PruningInputError
from ..patterns import matches_any
from .groups import ChannelGroup
from .registry import exact_channel_rule, inherited_channel_rule
from .tracer import ChannelTracer

#: Modules of built-in rules; each is skipped if its library is missing.
BUILTIN_RULES = ('rules_common', 'rules_mmdet', 'rules_mmdet3d',
                 'rules_pointpillars', 'rules_pv_rcnn')
_loaded = False


def load_builtin_rules() -> None:
    """Register the built-in channel rules (once)."""
    global _loaded
    if _loaded:
        return
    for name in BUILTIN_RULES:
        try:
            importlib.import_module(f'{__package__}.{name}')
        except ImportError:  # mmdet / mmdet3d not installed
            pass
    _loaded = True


def trace_channel_groups(model: nn.Module,
                         exclude: Optional[Iterable[str]] = None
                         ) -> List[ChannelGroup]:
    """Every channel group of a model, unfiltered.

    Args:
        model: The model; its class needs a channel rule.
        exclude: Regular expressions over module names; a module without a
            channel rule that matches one is a black box whose channels are
            kept (instead of an error).

    Returns:
        list[ChannelGroup]: In forward order of their first producer.

    Raises:
        PruningInputError: If a module with parameters has no rule (and is
            not excluded), or the rules do not reach every layer.
    """
    load_builtin_rules()
    cls = type(model)
    rule, reason = inherited_channel_rule(cls)
    if exact_channel_rule(cls) is None and rule is None:
        why = f' ({reason})' if reason else ''
        raise PruningInputError(
            f'no channel rule for the model class {cls.__name__}{why}; '
            'register one with rdprune_mm.channels.register_channel_rule('
            f'{cls.__name__}) (see rdprune_mm/channels/rules_mmdet3d.py for '
            'VoxelNet and MVXTwoStageDetector)')
    tracer = ChannelTracer(model, opaque=exclude)
    outputs = tracer.call(model)
    tracer.fix(outputs, reason='model output')
    tracer.check_reached()
    return tracer.groups()


def find_channel_groups(model: nn.Module,
                        include: Optional[Iterable[str]] = None,
                        exclude: Optional[Iterable[str]] = None
                        ) -> List[ChannelGroup]:
    """Find the sets of channels that must be pruned together.

    The model's inputs and outputs (the heads' prediction convs) are never
    in a group, nor are channels read by a module without a channel rule.

    Args:
        model: An mmdet3d or mmdet detector (any model whose classes have
            channel rules, see :func:`register_channel_rule`).
        include: Regular expressions over module names (``re.search``); a
            group is kept when one of its producers matches. None keeps all.
        exclude: Regular expressions; a group is dropped when one of its
            producers matches. A module without a channel rule that matches
            is treated as a black box whose channels are kept.

    Returns:
        list[ChannelGroup]: The selected groups, in forward order.

    Raises:
        PruningInputError: If a module with parameters has no channel rule
            and is not excluded, or the patterns select no group.
    """
    include = list(include) if include else []
    exclude = list(exclude) if exclude else []
    found = trace_channel_groups(model, exclude)
    selected = [
        group for group in found
        if (not include or any(matches_any(p.name, include)
                               for p in group.producers))
        and not any(matches_any(p.name, exclude) for p in group.producers)
    ]
    if not selected:
        examples = ', '.join(g.name for g in found[:5]) or 'none'
        raise PruningInputError(
            f'the patterns include={include} exclude={exclude} select no '
            f'channel group out of {len(found)} (e.g. {examples}); fix '
            'include / exclude')
    return selected
