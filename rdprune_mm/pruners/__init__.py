from ..results import (ChannelPruningResult, GroupAllocation,
                       LayerAllocation, PruningResult)
from .channel_baseline_pruner import ChannelBaselinePruner
from .channel_pruner import RDChannelPruner
from .magnitude_pruner import MagnitudeWeightPruner
from .weight_pruner import RDWeightPruner

__all__ = [
    'RDWeightPruner', 'MagnitudeWeightPruner', 'PruningResult', 'RDChannelPruner',
    'ChannelBaselinePruner', 'ChannelPruningResult', 'GroupAllocation',
    'LayerAllocation'
]
