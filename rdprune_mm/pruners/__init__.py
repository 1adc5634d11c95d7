from .channel_pruner import (ChannelPruningResult, GroupAllocation,
                             RDChannelPruner)
from .magnitude_pruner import MagnitudeWeightPruner
from .weight_pruner import PruningResult, RDWeightPruner

__all__ = [
    'RDWeightPruner', 'MagnitudeWeightPruner', 'PruningResult', 'RDChannelPruner',
    'ChannelPruningResult', 'GroupAllocation'
]
