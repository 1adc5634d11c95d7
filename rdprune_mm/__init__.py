"""rdprune_mm: rate-distortion optimal pruning for MMDetection3D.

Importing the package registers its pruners and distortion measures, makes
spconv 2 exact and deterministic on CPU and gives mmcv's CUDA-only 3D ops
CPU kernels.
"""
from .threads import limit_numba_threads

limit_numba_threads()

from .cpu_ops import install_cpu_fallbacks  # noqa: E402
from .spconv_cpu import patch_spconv_cpu  # noqa: E402

patch_spconv_cpu()
install_cpu_fallbacks()

from . import distortion, hooks, pruners  # noqa: E402,F401
from .allocator import Allocation, InfeasibleBudgetError, allocate  # noqa
from .errors import PruningInputError  # noqa: E402
from .hooks import RDPruneHook  # noqa: E402
from .pruners import PruningResult, RDWeightPruner  # noqa: E402
from .registry import DISTORTIONS, PRUNERS  # noqa: E402

__version__ = '0.1.0'

__all__ = [
    'allocate', 'Allocation', 'InfeasibleBudgetError', 'PruningInputError',
    'RDWeightPruner', 'PruningResult', 'RDPruneHook', 'PRUNERS', 'DISTORTIONS',
    'patch_spconv_cpu', 'install_cpu_fallbacks', '__version__'
]
