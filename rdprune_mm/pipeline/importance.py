"""Importance: the order in which a unit's elements are pruned.

An importance object ranks the elements of one unit, least important first:
the weights of a layer (``granularity = 'weights'``) or the channels of a
channel group (``'channels'``). Pruners name one with their ``ranking``
setting, by alias (``'magnitude'``, ``'l2'``) or as a config
(``dict(type='TaylorImportance')``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

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
    :meth:`ChannelGroup.channel_scores`' kinds.

    Attributes:
        needs_calibration: Whether :meth:`measure` must run on the
            calibration frames before the scores are read.
    """

    granularity = 'channels'
    needs_sketch = False
    needs_calibration = False
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


@IMPORTANCES.register_module(name=['ChannelTaylorImportance', 'fisher'])
class ChannelTaylorImportance(ChannelImportance):
    """First-order Taylor (Fisher) importance of a channel, on the head
    outputs instead of a training loss (calibration frames have no labels).

    Removing channel ``c`` removes what the layers reading it (the group's
    consumers; its producers where it has none) receive from it, which
    changes the head outputs by about ``-sum w * dF/dw`` over those
    weights. Projected on random directions ``v`` of the distortion's
    weighted outputs, as the gradient sketch does
    (:mod:`rdprune_mm.sketch`), the squared change averages to the
    channel's distortion: ``E_v[(sum w * d<v, W^(1/2) F>/dw)^2]``, summed
    (or maximized) over frames as the distortion reduces them. This is
    GroupFisher's ``(sum activation * gradient)^2`` and Torch-Pruning's
    group Taylor score with the distortion in place of the loss.

    Args:
        num_projections: Random output directions (backward passes) per
            calibration frame.
        seed: Seed of the directions.
    """

    needs_calibration = True

    def __init__(self, num_projections: int = 16, seed: int = 0) -> None:
        if int(num_projections) < 1:
            raise PruningInputError(
                f'ChannelTaylorImportance num_projections={num_projections}'
                ' must be at least 1')
        self.num_projections = int(num_projections)
        self.seed = int(seed)
        self._scores: Dict[str, torch.Tensor] = {}

    @staticmethod
    def _readers(group: ChannelGroup):
        return group.consumers or group.producers

    def measure(self, groups: Sequence[ChannelGroup],
                targets: Sequence[PruningTarget], batches: Sequence[dict],
                head_outputs: Callable[[dict], Dict[str, torch.Tensor]],
                weights, sample_reduction: str) -> None:
        """Score every channel of ``groups`` on the calibration frames.

        Args:
            groups: The channel groups.
            targets: The weight layers the groups touch.
            batches: Preprocessed calibration batches.
            head_outputs: Maps a batch to the head's named tensors.
            weights: The distortion's ``quadratic_weights``.
            sample_reduction: How the distortion reduces over frames.
        """
        axes: Dict[str, List[int]] = {}
        for group in groups:
            for layer in self._readers(group):
                if layer.axis not in axes.setdefault(layer.name, []):
                    axes[layer.name].append(layer.axis)
        # a target's row: its ``w * grad`` summed onto each axis it is read
        # along, one after the other
        offsets: Dict[Tuple[str, int], int] = {}
        readers = [t for t in targets if t.name in axes]
        for target in readers:
            start = 0
            for axis in axes[target.name]:
                offsets[target.name, axis] = start
                start += target.weight.shape[axis]

        def channel_sums(target: PruningTarget,
                         grad: torch.Tensor) -> torch.Tensor:
            product = target.weight.detach() * grad
            return torch.cat([
                product.sum([d for d in range(product.dim()) if d != axis])
                for axis in axes[target.name]
            ])

        sketch = GradientSketch.measure(readers,
                                        batches,
                                        head_outputs,
                                        weights,
                                        sample_reduction,
                                        num_projections=self.num_projections,
                                        seed=self.seed,
                                        row_of=channel_sums)
        for group in groups:
            change = 0
            for layer in self._readers(group):
                rows = sketch.gradients[layer.name].double().cpu()
                start = offsets[layer.name, layer.axis]
                along = rows[:, start:start + layer.axis_size]
                change = change + along[:, layer.index].sum(-1)
            per_sample = torch.zeros(len(batches),
                                     group.num_channels,
                                     dtype=torch.float64).index_add_(
                                         0, sketch.row_samples,
                                         change.square())
            per_sample /= self.num_projections
            self._scores[group.name] = (per_sample.max(0).values
                                        if sample_reduction == 'max' else
                                        per_sample.sum(0))

    def scores(self, group: ChannelGroup) -> torch.Tensor:
        if group.name not in self._scores:
            raise PruningInputError(
                f'ChannelTaylorImportance has no scores for group '
                f'{group.name}; it is measured on the calibration frames by '
                'the channel pruner (measure) before channels are ranked')
        return self._scores[group.name]

    def order(self, group: ChannelGroup) -> torch.Tensor:
        return torch.argsort(self.scores(group), stable=True)
