"""Importance: the order in which a unit's elements are pruned.

An importance object ranks the elements of one unit, least important first:
the weights of a layer (``granularity = 'weights'``) or the channels of a
channel group (``'channels'``). Pruners name one with their ``ranking``
setting, by alias (``'magnitude'``, ``'l2'``) or as a config
(``dict(type='TaylorImportance')``).
"""
from __future__ import annotations

from typing import List, Optional, Union

import torch

from ..channels import ChannelGroup
from ..errors import PruningInputError
from ..masks import magnitude_order
from ..registry import IMPORTANCES
from ..sketch import GradientSketch
from ..targets import PruningTarget


class WeightImportance:
    """Ranks the weights of a layer.

    Attributes:
        needs_sketch: Whether :meth:`order` reads a gradient sketch.
    """

    granularity = 'weights'
    needs_sketch = False

    def order(self, target: PruningTarget,
              sketch: Optional[GradientSketch] = None) -> torch.Tensor:
        """Flat weight indices, the first to prune first."""
        raise NotImplementedError


@IMPORTANCES.register_module(name=['MagnitudeImportance', 'magnitude'])
class MagnitudeImportance(WeightImportance):
    """Smallest ``|w|`` first (ties: lower flat index first)."""

    def order(self, target: PruningTarget,
              sketch: Optional[GradientSketch] = None) -> torch.Tensor:
        return magnitude_order(target.weight)


@IMPORTANCES.register_module(name=['TaylorImportance', 'taylor'])
class TaylorImportance(WeightImportance):
    """Smallest ``w_i^2 * diag(J^T J)_i`` first, read off the gradient
    sketch (:mod:`rdprune_mm.sketch`)."""

    needs_sketch = True

    def order(self, target: PruningTarget,
              sketch: Optional[GradientSketch] = None) -> torch.Tensor:
        return torch.argsort(
            sketch.diagonal_scores(target.name, target.weight).flatten(),
            stable=True)


class ChannelImportance:
    """Ranks the channels of a group by one of
    :meth:`ChannelGroup.channel_scores`' kinds."""

    granularity = 'channels'
    needs_sketch = False
    score_kind = 'l2'

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        """Importance of every channel (the larger, the more
        important)."""
        return group.channel_scores(self.score_kind)

    def order(self, group: ChannelGroup) -> torch.Tensor:
        """Channel indices, least important first."""
        return group.channel_order(self.score_kind)


@IMPORTANCES.register_module(name=['L2FilterImportance', 'l2'])
class L2FilterImportance(ChannelImportance):
    """Squared L2 norm of the channel's filters, summed over producers."""

    score_kind = 'l2'


@IMPORTANCES.register_module(name=['L1FilterImportance', 'l1'])
class L1FilterImportance(ChannelImportance):
    """L1 norm of the channel's filters, summed over producers."""

    score_kind = 'l1'


@IMPORTANCES.register_module(name=['BNScaleImportance', 'bn'])
class BNScaleImportance(ChannelImportance):
    """BatchNorm ``|gamma|`` of the channel (network slimming); filter
    norms for a group without affine norms."""

    score_kind = 'bn'


def importance_names(granularity: str) -> List[str]:
    """Aliases of the registered importances of a granularity."""
    return [
        name for name, cls in IMPORTANCES.module_dict.items()
        if cls.granularity == granularity and name.islower()
    ]


def build_importance(ranking: Union[str, dict], granularity: str,
                     key: str = 'pruner.ranking'):
    """The importance object a ``ranking`` setting names.

    Raises:
        PruningInputError: If it names no importance of ``granularity``.
    """
    cfg = dict(type=ranking) if isinstance(ranking, str) else dict(ranking)
    kind = cfg.get('type')
    cls = kind if isinstance(kind, type) else IMPORTANCES.module_dict.get(
        kind)
    if getattr(cls, 'granularity', None) != granularity:
        raise PruningInputError(
            f'ranking {ranking!r} is not one of '
            f'{tuple(importance_names(granularity))} (or a registered '
            f'{granularity} importance); fix {key}')
    return IMPORTANCES.build(cfg)
