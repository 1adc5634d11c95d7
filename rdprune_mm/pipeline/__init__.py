"""The pruning pipeline: the stages every pruner runs and the parts they
share (calibration, importance, cost models, the budget search, setting
checks). See :mod:`.stages`."""
from .budget_search import BudgetSearch, bisect_edge
from .calibration import Calibration, calibrate, check_batches
from .checks import (check_budget, check_choice, check_ignored_settings,
                     check_min_keep, check_num_levels, check_positive_int,
                     check_targets)
from .cost_models import ChannelCost, CostModel, LatencyCost, TableCost
from .importance import (BNScaleImportance, ChannelImportance,
                         L1FilterImportance, L2FilterImportance,
                         MagnitudeImportance, TaylorImportance,
                         WeightImportance, build_importance)
from .stages import PruningPipeline, PruningState

__all__ = [
    'BudgetSearch', 'bisect_edge', 'Calibration', 'calibrate', 'check_batches',
    'check_budget', 'check_choice', 'check_ignored_settings', 'check_min_keep', 'check_num_levels', 'check_positive_int',
    'check_targets',
    'CostModel', 'TableCost', 'ChannelCost', 'LatencyCost',
    'WeightImportance', 'ChannelImportance', 'MagnitudeImportance',
    'TaylorImportance', 'L1FilterImportance', 'L2FilterImportance',
    'BNScaleImportance', 'build_importance', 'PruningPipeline',
    'PruningState'
]
