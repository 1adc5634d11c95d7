"""Checks of the settings every pruner, baseline and hook shares.

Each raises :class:`PruningInputError` with one line that names the setting
and the fix.
"""
from __future__ import annotations

import re
from numbers import Integral, Real
from typing import Any, Sequence

from ..errors import PruningInputError


def check_budget(budget: Any, key: str = 'pruner.budget',
                 what: str = 'the share of the cost to keep') -> float:
    """A budget in (0, 1], the share to keep."""
    if isinstance(budget, bool) or not isinstance(budget, Real):
        raise PruningInputError(
            f'{key}={budget!r} is not a number; it is {what}, e.g. '
            f'{key}=0.5')
    if not 0 < budget <= 1:
        name = key.rsplit('.', 1)[-1]
        raise PruningInputError(
            f'{name} {budget} is outside (0, 1]: it is {what}, e.g. '
            f'{key}=0.25 keeps a quarter')
    return float(budget)


def check_min_keep(min_keep: Any, key: str = 'pruner.min_keep') -> float:
    """A floor in [0, 1], the least share of every unit to keep."""
    if isinstance(min_keep, bool) or not isinstance(min_keep, Real) \
            or not 0 <= min_keep <= 1:
        raise PruningInputError(
            f'min_keep {min_keep} is outside [0, 1]; it is the least share '
            f'of every layer to keep; fix {key}')
    return float(min_keep)


def check_choice(value: Any, choices: Sequence[str], key: str) -> str:
    """One of ``choices``."""
    if value not in choices:
        name = key.rsplit('.', 1)[-1]
        raise PruningInputError(
            f'{name} {value!r} is not one of {tuple(choices)}; fix {key}')
    return value


def check_num_levels(num_levels: Any,
                     key: str = 'pruner.num_levels') -> int:
    """At least two levels per curve (unpruned and fully pruned)."""
    if isinstance(num_levels, bool) or not isinstance(num_levels, Integral) \
            or num_levels < 2:
        raise PruningInputError(
            f'num_levels {num_levels} < 2; set {key} >= 2')
    return int(num_levels)


def check_ignored_settings(settings: dict, ignored: Sequence[str],
                           pruner: str) -> None:
    """Accept the settings of another pruner that a config may still carry
    (``ignored``), refuse any other."""
    unknown = sorted(set(settings) - set(ignored))
    if unknown:
        raise PruningInputError(
            f'{pruner} got unknown settings {unknown}; remove them from the '
            'pruner config')


def check_positive_int(value: Any, key: str, least: int = 1) -> int:
    """An integer of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, Integral) \
            or value < least:
        raise PruningInputError(
            f'{key}={value!r} must be an integer >= {least}; fix {key}')
    return int(value)


def check_targets(targets: Any, key: str = 'pruner.targets') -> dict:
    """``dict(include=[regex...], exclude=[regex...])``, each pattern a
    valid regular expression."""
    targets = dict(targets or {})
    unknown = sorted(set(targets) - {'include', 'exclude'})
    if unknown:
        raise PruningInputError(
            f'{key} has unknown keys {unknown}; it takes include and '
            f"exclude, e.g. {key}=dict(include=['backbone'], exclude=None)")
    for side in ('include', 'exclude'):
        patterns = targets.get(side)
        if patterns is None:
            continue
        if isinstance(patterns, str) or not isinstance(
                patterns, (list, tuple)):
            raise PruningInputError(
                f'{key}.{side}={patterns!r} must be a list of regular '
                f"expressions, e.g. {side}=[{patterns!r}]")
        for pattern in patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise PruningInputError(
                    f'{key}.{side} holds {pattern!r}, which is not a regular '
                    f'expression ({error}); fix or escape it') from None
    return targets
