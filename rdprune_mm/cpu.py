"""CPU support for mmdet3d's LiDAR detectors; importing this module
switches it on.

``import rdprune_mm`` only registers modules. A config that trains or
tests on a machine without CUDA imports this module as well::

    custom_imports = dict(
        imports=['rdprune_mm', 'rdprune_mm.cpu'], allow_failed_imports=False)

``rdprune_mm.apis.build_detector`` (for ``device='cpu'``) and
``rdprune_mm.finetune.train_with_runner`` (without CUDA) switch it on
themselves.

Importing it also registers :mod:`rdprune_mm.models` (the benchmark
detectors' parts, which import mmdet3d's models): the configs that train
those detectors here list this module, not that one.
"""
from . import models  # noqa: F401
from .threads import limit_numba_threads


def enable_cpu_support() -> None:
    """Let mmdet3d's LiDAR detectors predict, train and evaluate on CPU.

    Idempotent. CUDA tensors still reach mmcv's and spconv's own kernels.
    It changes, for the whole process:

    * ``os.environ['NUMBA_NUM_THREADS']``: set to ``OMP_NUM_THREADS`` when
      that is set and the former is not (see
      :func:`rdprune_mm.threads.limit_numba_threads`).
    * ``spconv.pytorch.ops.SpconvOps``: wrapped so that the CPU gather and
      scatter-add run in torch (exact and deterministic), and
      ``spconv.pytorch.ops.get_current_stream``: returns the null stream
      when CUDA is unavailable (:mod:`rdprune_mm.spconv_cpu`).
    * ``ext_module`` of every ``mmcv.ops.*`` module: a proxy that sends
      CPU inputs of the ops in :data:`rdprune_mm.cpu_ops.CPU_KERNELS` to
      the kernels of :mod:`rdprune_mm.cpu_ops`.
    * The ``mmcv.ops`` functions and autograd ``forward`` methods in
      :data:`rdprune_mm.cpu_ops.CPU_OVERRIDES`: replaced by dispatchers, on
      their class (static methods) or in every loaded module that holds
      them (functions).
    * ``sys.meta_path``: a finder, first, that serves mmdet3d's
      ``kitti_utils.rotate_iou`` from the CPU when numba finds no CUDA GPU
      (:mod:`rdprune_mm.cpu_ops.kitti_eval`).
    """
    limit_numba_threads()
    # numba reads NUMBA_NUM_THREADS when it is imported, so the kernels
    # (which import numba) are imported after the line above.
    from .cpu_ops import install_cpu_fallbacks
    from .spconv_cpu import patch_spconv_cpu
    patch_spconv_cpu()
    install_cpu_fallbacks()


enable_cpu_support()
