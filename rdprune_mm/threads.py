"""Thread settings that must be made before numba is imported."""
import os


def limit_numba_threads() -> None:
    """Keep numba to ``OMP_NUM_THREADS`` when that is set.

    mmdet3d's KITTI evaluation runs a ``parallel=True`` numba kernel; numba's
    OpenMP layer then sets the process's OpenMP threads to
    ``NUMBA_NUM_THREADS`` (all cores by default), and torch follows, so a run
    asked to use one thread would use all of them after the first
    evaluation. numba reads the variable when it is imported, so this runs
    first when ``rdprune_mm`` is imported. An explicit ``NUMBA_NUM_THREADS``
    is left alone.
    """
    if os.environ.get('OMP_NUM_THREADS') and \
            'NUMBA_NUM_THREADS' not in os.environ:
        os.environ['NUMBA_NUM_THREADS'] = os.environ['OMP_NUM_THREADS']
