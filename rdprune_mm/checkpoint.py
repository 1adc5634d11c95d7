"""Reading mmengine checkpoints with torch's weights-only unpickler.

torch >= 2.6 loads with ``weights_only=True`` by default and mmengine 0.10.7
calls ``torch.load`` without the argument, so ``load_from`` and ``resume``
refuse the checkpoints that mmengine's own Runner saves: they pickle the
message hub (``HistoryBuffer`` objects holding numpy arrays, numpy scalars
in its runtime info). :data:`MMENGINE_SAFE_GLOBALS` lists what such a
checkpoint holds beyond tensors and plain containers, and
:func:`mmengine_safe_globals` allows that while a block runs, nothing else.

The module imports only torch, numpy and mmengine, so a script can load it
from its file without importing :mod:`rdprune_mm`.
"""
from __future__ import annotations

import contextlib
import os.path as osp
import pickle
import re
from typing import Any, Callable, Iterator, List, Mapping, Tuple, Union

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray

_PLAIN_TYPES = (str, bytes, bool, int, float, complex)

# numpy scalars whose dtype a Runner checkpoint may pickle: booleans,
# numbers and strings (mmdet3d's KITTI ``dataset_meta`` has ``np.str_`` keys)
_NUMPY_SCALARS = (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                  np.uint32, np.int64, np.uint64, np.longlong, np.ulonglong,
                  np.float16, np.float32, np.float64, np.longdouble,
                  np.complex64, np.complex128, np.clongdouble, np.str_,
                  np.bytes_)

#: The statistics that ``HistoryBuffer.__getstate__`` pickles by reference.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def history_buffer_method(owner: type, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` while unpickling.

    ``HistoryBuffer`` pickles its statistics methods as
    ``getattr(HistoryBuffer, 'min')`` and so on; this resolves those and
    refuses every other attribute, so the unpickler never gets a general
    ``getattr``.

    Raises:
        pickle.UnpicklingError: For anything but a statistics method of
            ``HistoryBuffer``.
    """
    if owner is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed: only the statistics '
        'methods of mmengine.logging.history_buffer.HistoryBuffer are')


def _numpy_names(obj: Any, name: str) -> List[Tuple[Any, str]]:
    """``obj`` under the module path of numpy 2 and of numpy 1, so that
    checkpoints saved with either load."""
    return [(obj, f'numpy._core.multiarray.{name}'),
            (obj, f'numpy.core.multiarray.{name}')]


#: What a checkpoint of mmengine's Runner holds beyond tensors and plain
#: containers: found by saving Runner checkpoints after a few training
#: iterations (``torch.serialization.get_unsafe_globals_in_checkpoint``)
#: and loading them with ``weights_only=True``; ``tests/test_checkpoint.py``
#: repeats both.
MMENGINE_SAFE_GLOBALS: List[Union[Any, Tuple[Any, str]]] = [
    HistoryBuffer,
    (history_buffer_method, 'builtins.getattr'),
    *_numpy_names(_multiarray.scalar, 'scalar'),
    *_numpy_names(_multiarray._reconstruct, '_reconstruct'),
    (np.ndarray, 'numpy.ndarray'),
    (np.dtype, 'numpy.dtype'),
    # the class of each of their dtypes (``numpy.dtypes.*``), whose state
    # the unpickler sets
    *(type(np.dtype(scalar)) for scalar in _NUMPY_SCALARS),
]


@contextlib.contextmanager
def mmengine_safe_globals() -> Iterator[None]:
    """Let ``torch.load(weights_only=True)`` read mmengine's Runner
    checkpoints inside the block (:data:`MMENGINE_SAFE_GLOBALS`).

    Re-entrant: inside an enclosing block it adds and removes nothing.
    """
    active = torch.serialization.get_safe_globals()
    if all(item in active for item in MMENGINE_SAFE_GLOBALS):
        yield
        return
    with torch.serialization.safe_globals(MMENGINE_SAFE_GLOBALS):
        yield


#: ``load_from='trusted://<path>'`` in a config: mmengine's Runner loads
#: that one file with full unpickling (``weights_only=False``).
TRUSTED_PREFIX = 'trusted://'


# force: a script may load this file beside the package
@CheckpointLoader.register_scheme(prefixes=TRUSTED_PREFIX, force=True)
def load_trusted_checkpoint(filename: str,
                            map_location: Any = None) -> dict:
    """mmengine's loader of ``trusted://<path>``: ``torch.load`` of the
    local file with ``weights_only=False``, for a checkpoint that holds
    Python objects its owner trusts.

    Raises:
        FileNotFoundError: If the file does not exist.
    """
    path = osp.expanduser(filename[len(TRUSTED_PREFIX):])
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    return torch.load(path, map_location=map_location, weights_only=False)


def strip_module_prefix(key: str) -> str:
    """A state-dict key without the ``module.`` of a DataParallel or DDP
    wrapper, as mmengine's ``load_checkpoint`` revises it."""
    return key[len('module.'):] if key.startswith('module.') else key


def checkpoint_misfit(model_state: Mapping[str, torch.Tensor],
                      checkpoint: Mapping[str, Any]) -> str:
    """How ``checkpoint`` fails to fit a model with ``model_state``.

    Args:
        model_state: The model's ``state_dict()``.
        checkpoint: A loaded checkpoint, with or without a ``state_dict``.

    Returns:
        str: Empty when every key is there with its shape and there are no
        others; else e.g. ``'2 missing keys (e.g. head.weight), 1 shape
        mismatches (e.g. conv.weight: 16x4 in the checkpoint, 8x4 in the
        model)'``.
    """
    state = checkpoint.get('state_dict', checkpoint)
    state = {strip_module_prefix(k): v for k, v in state.items()}
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    mismatched = [
        f'{key}: {_shape(state[key])} in the checkpoint, '
        f'{_shape(model_state[key])} in the model'
        for key in sorted(set(model_state) & set(state))
        if _shape(state[key]) != _shape(model_state[key])
    ]
    return ', '.join(
        f'{len(keys)} {what} (e.g. {keys[0]})'
        for what, keys in (('missing keys', missing),
                           ('unexpected keys', unexpected),
                           ('shape mismatches', mismatched)) if keys)


def _shape(value: Any) -> str:
    shape = getattr(value, 'shape', None)
    return 'x'.join(map(str, shape)) if shape is not None else 'a non-tensor'


def unsafe_checkpoint_message(source: str, error: BaseException) -> str:
    """One line naming what ``source`` holds that the weights-only
    unpickler refused (from torch's ``error``), and the fix."""
    text = str(error)
    found = re.search(r'GLOBAL (\S+) was not an allowed global', text) or \
        re.search(r'unrecognized function (\S+)', text) or \
        re.search(r"but got <class '([^']+)'>", text)
    what = f'the Python object {found.group(1)}' if found else \
        'Python objects'
    return (f'{source} holds {what}, which torch.load(weights_only=True) '
            "does not load beside weights and mmengine's checkpoint "
            'contents; if you trust the file, pass --trust-checkpoint '
            f"(in a config: load_from='{TRUSTED_PREFIX}<path>') to load it "
            'with full unpickling, this file only')


@contextlib.contextmanager
def mmengine_checkpoints(source: str) -> Iterator[None]:
    """:func:`mmengine_safe_globals`, and torch's refusal of any other
    object becomes a one-line :class:`~rdprune_mm.errors.PruningInputError`.

    Args:
        source: The checkpoint(s) loaded in the block, for the message,
            e.g. ``'checkpoint work_dirs/x/epoch_1.pth'``.
    """
    with mmengine_safe_globals():
        try:
            yield
        except pickle.UnpicklingError as error:
            # torch's weights-only refusal, not e.g. a corrupt pickle
            if not str(error).startswith('Weights only load failed'):
                raise
            # imported here: scripts load this module from its file alone
            from .errors import PruningInputError
            raise PruningInputError(unsafe_checkpoint_message(source,
                                                              error)) from None


def plain_meta(value: Any) -> Any:
    """``value`` made of plain types only, so that a checkpoint's ``meta``
    loads with torch's default ``weights_only=True`` and no allowed globals.

    Dicts (``OrderedDict`` and other subclasses too) become dicts, lists and
    tuples (named tuples too) lists and tuples, numpy scalars and arrays
    Python numbers and lists; strings, bytes, numbers, booleans, None and
    tensors stay; any other object becomes its ``repr``.
    """
    if isinstance(value, dict):
        return {plain_meta(k): plain_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain_meta(v) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if value is None or type(value) in _PLAIN_TYPES or \
            isinstance(value, torch.Tensor):
        return value
    return repr(value)
