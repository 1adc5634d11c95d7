"""Units of pruning: what one curve of the pipeline prunes.

A unit is a weight layer (unstructured pruning) or a channel group
(structured pruning). The pipeline needs three things of it: its name, what
each level of its curve removes (``level_keys``: levels that remove the same
thing share one measurement, 0 removes nothing) and a way to prune it
temporarily (``pruned``).
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .channels import ChannelGroup, masked_channels
from .masks import mask_from_order
from .targets import PruningTarget


class PruningUnit(metaclass=ABCMeta):
    """One curve's worth of prunable structure.

    Args:
        name: The unit's name (a module name or a channel group name).
        order: Indices of the unit's elements, the first to prune first.
    """

    def __init__(self, name: str, order: torch.Tensor) -> None:
        self.name = name
        self.order = order

    @property
    @abstractmethod
    def level_keys(self) -> np.ndarray:
        """Per level of the curve, how many elements it prunes."""

    @abstractmethod
    def keep_mask(self, num_pruned: int) -> torch.Tensor:
        """Keep-mask that prunes the first ``num_pruned`` of the order."""

    @abstractmethod
    @contextmanager
    def pruned(self, num_pruned: int) -> Iterator[None]:
        """Context manager: the unit pruned inside, restored after."""


class WeightUnit(PruningUnit):
    """A weight layer whose weights are pruned one by one.

    Args:
        target: The layer.
        order: Flat weight indices, the first to prune first.
        counts: Weights pruned at every level.
    """

    def __init__(self, target: PruningTarget, order: torch.Tensor,
                 counts: np.ndarray) -> None:
        super().__init__(target.name, order)
        self.target = target
        self.counts = counts

    @property
    def level_keys(self) -> np.ndarray:
        return self.counts

    def keep_mask(self, num_pruned: int) -> torch.Tensor:
        return mask_from_order(self.order, self.target.weight.shape,
                               int(num_pruned))

    @contextmanager
    @torch.no_grad()
    def pruned(self, num_pruned: int) -> Iterator[None]:
        weight = self.target.weight
        original = weight.detach().clone()
        try:
            weight.copy_(original.masked_fill(~self.keep_mask(num_pruned),
                                              0.0))
            yield
        finally:
            weight.copy_(original)


class ChannelUnit(PruningUnit):
    """A channel group whose channels are pruned together.

    Args:
        group: The channel group.
        order: Channel indices, the least important first.
        kept: Channels kept at every level.
    """

    def __init__(self, group: ChannelGroup, order: torch.Tensor,
                 kept: np.ndarray) -> None:
        super().__init__(group.name, order)
        self.group = group
        self.kept = kept

    @property
    def level_keys(self) -> np.ndarray:
        return self.group.num_channels - self.kept

    def keep_mask(self, num_pruned: int) -> torch.Tensor:
        return mask_from_order(self.order.cpu(), (self.group.num_channels, ),
                               int(num_pruned))

    def keep_at(self, level: int) -> torch.Tensor:
        """Keep-mask of ``level``."""
        return self.keep_mask(int(self.level_keys[level]))

    @contextmanager
    def pruned(self, num_pruned: int) -> Iterator[None]:
        with masked_channels([self.group],
                             {self.name: self.keep_mask(num_pruned)}):
            yield
