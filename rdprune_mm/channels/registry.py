"""The registry of channel rules, keyed by module class.

A channel rule mirrors one module class's ``forward`` at the level of
channels. It is called as ``rule(tracer, module, *inputs)`` with the
:class:`~rdprune_mm.channels.tracer.Feature` s that the module's ``forward``
receives (nested in the same lists, tuples and dicts), runs the module's
children through ``tracer.call(child, ...)`` in forward order, joins
features as ``forward`` does (``tracer.add`` for sums, ``tracer.cat`` for
concatenations, ``Feature.flatten_depth`` for reshapes) and returns the
features that ``forward`` returns::

    from rdprune_mm.channels import register_channel_rule

    @register_channel_rule(MyBlock)
    def my_block(tracer, block, x):
        out = tracer.call(block.conv2, tracer.call(block.conv1, x))
        return tracer.add(out, x)  # a residual: one channel group

A rule registered for a class also serves its subclasses unless a subclass
overrides one of the methods the rule mirrors (``methods``, default
``('forward', )``): such a subclass is refused rather than guessed at.
Convolutions, linear layers and BatchNorm need no rule of their own.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Type

from torch import nn

#: class -> (rule, mirrored methods)
_RULES: Dict[type, Tuple[Callable, Tuple[str, ...]]] = {}


def register_channel_rule(*classes: Type[nn.Module],
                          methods: Sequence[str] = ('forward', ),
                          force: bool = True) -> Callable:
    """Decorator that registers a channel rule for module classes.

    Args:
        *classes: The module classes the rule describes.
        methods: The methods whose code the rule mirrors; a subclass that
            overrides one of them does not inherit the rule.
        force: Replace an existing rule of the same class.

    Returns:
        Callable: The decorator; it returns the rule unchanged.
    """

    def decorator(rule: Callable) -> Callable:
        for cls in classes:
            if cls in _RULES and not force:
                raise KeyError(f'a channel rule for {cls.__name__} exists')
            _RULES[cls] = (rule, tuple(methods))
        return rule

    return decorator


def exact_channel_rule(cls: type) -> Optional[Callable]:
    """The rule registered for exactly ``cls``, or None."""
    entry = _RULES.get(cls)
    return entry[0] if entry else None


def inherited_channel_rule(cls: type) -> Tuple[Optional[Callable],
                                               Optional[str]]:
    """The rule of ``cls`` or of its nearest registered base class.

    Returns:
        tuple: ``(rule, None)``, or ``(None, reason)`` where ``reason`` says
        why an inherited rule does not apply (None when there is none).
    """
    for base in cls.__mro__:
        entry = _RULES.get(base)
        if entry is None:
            continue
        rule, methods = entry
        overridden = [
            m for m in methods
            if getattr(cls, m, None) is not getattr(base, m, None)
        ]
        if overridden:
            return None, (f'{cls.__name__} overrides {overridden} of '
                          f'{base.__name__}, whose channel rule therefore '
                          'does not apply')
        return rule, None
    return None, None
