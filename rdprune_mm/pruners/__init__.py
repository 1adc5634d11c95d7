from .weight_pruner import PruningResult, RDWeightPruner

__all__ = ['RDWeightPruner', 'PruningResult']
