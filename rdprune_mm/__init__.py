"""rdprune_mm: rate-distortion optimal pruning for MMDetection3D.

Importing the package registers its pruners, distortion measures and
``RDPruneHook`` and changes nothing else. CPU support for mmdet3d's LiDAR
detectors is switched on by importing :mod:`rdprune_mm.cpu`; the model parts
of the benchmark detectors register by importing :mod:`rdprune_mm.models`
(their configs list it in ``custom_imports``).
"""
from . import decoded_distortion, distortion, hooks, pruners  # noqa: F401
from .allocator import Allocation, InfeasibleBudgetError, allocate
from .errors import PruningInputError
from .hooks import RDPruneHook
from .mim import register_config_package
from .pruners import PruningResult, RDWeightPruner
from .registry import DISTORTIONS, PRUNERS

register_config_package()  # 'rdprune_mm::<config>' in _base_

__version__ = '0.1.0'

__all__ = [
    'allocate', 'Allocation', 'InfeasibleBudgetError', 'PruningInputError',
    'RDWeightPruner', 'PruningResult', 'RDPruneHook', 'PRUNERS', 'DISTORTIONS',
    '__version__'
]
