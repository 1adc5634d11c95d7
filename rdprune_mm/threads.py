"""Thread settings that must be made before numba starts its threads."""
import os
import sys


def limit_numba_threads() -> None:
    """Keep numba to ``OMP_NUM_THREADS`` when that is set.

    mmdet3d's KITTI evaluation runs a ``parallel=True`` numba kernel; numba's
    OpenMP layer then sets the process's OpenMP threads to
    ``NUMBA_NUM_THREADS`` (all cores by default), and torch follows, so a run
    asked to use one thread would use all of them after the first
    evaluation. This sets ``NUMBA_NUM_THREADS``, which numba reads when it
    is imported; when numba was imported before but has not started its
    threads yet, numba's configuration is read again. An explicit
    ``NUMBA_NUM_THREADS`` is left alone.
    """
    count = os.environ.get('OMP_NUM_THREADS')
    if not count or 'NUMBA_NUM_THREADS' in os.environ:
        return
    os.environ['NUMBA_NUM_THREADS'] = count
    parallel = sys.modules.get('numba.np.ufunc.parallel')
    if parallel is not None and not getattr(parallel, '_is_initialized', True):
        from numba.core import config
        config.reload_config()
        parallel.NUM_THREADS = config.NUMBA_NUM_THREADS
