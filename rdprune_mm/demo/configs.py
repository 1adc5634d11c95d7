"""The demo's configs and the options it merges into them."""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os.path as osp
from typing import Any, Dict, Optional, Sequence

from mmengine.config import Config, DictAction

from ..errors import PruningInputError
from ..mim import resolve_config

#: Training and evaluation config of the dense detector (in the package's
#: installed configs, :mod:`rdprune_mm.mim`).
TRAIN_CONFIG = 'rdprune_mm::kitti_like/second_tiny_kitti-like-3class.py'
#: Pruning (and fine-tuning) config.
PRUNE_CONFIG = 'rdprune_mm::kitti_like/rd-weight_second_tiny_kitti-like.py'
#: Where the demo writes its simulated dataset by default.
DATA_ROOT = 'data/kitti_like'
#: The classes the detector is trained on and evaluated for.
CLASSES = ('Car', 'Pedestrian', 'Cyclist')
#: The data the configs name (their ``data_root``).
CONFIG_DATA_ROOT = 'data/kitti_like/'

_CONFIG_CACHE: Dict[tuple, Config] = {}


def load_config(config: str, options: Optional[dict] = None) -> Config:
    """The config with ``options`` merged, read once per process.

    ``format_python_code=False``: mmengine's Runner writes the config text
    into its log, its config dump, the visualizer and every checkpoint, and
    formatting it with yapf takes seconds each time; the text stays valid
    Python, only unformatted.

    Args:
        config: Path of the config file, or ``'<package>::<path>'``
            (:func:`rdprune_mm.mim.resolve_config`).
        options: ``--cfg-options`` to merge (dotted keys).

    Returns:
        Config: A copy the caller may change (the file is read again when
        it was modified since).
    """
    path = resolve_config(config)
    key = (osp.abspath(path), osp.getmtime(path),
           json.dumps(options or {}, sort_keys=True, default=str))
    if key not in _CONFIG_CACHE:
        cfg = Config.fromfile(path, format_python_code=False)
        if options:
            cfg.merge_from_dict(options)
        _CONFIG_CACHE[key] = cfg
    return copy.deepcopy(_CONFIG_CACHE[key])


def config_digest(config: str, options: Optional[dict]) -> str:
    """Fingerprint of a config with its options merged.

    It covers the config's content, not its path: an edited config is a
    different config.

    Args:
        config: Path of the config file.
        options: ``--cfg-options`` merged into it.

    Returns:
        str: 16 hex digits of a SHA-256.
    """
    cfg = load_config(config, options)
    text = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_root_options(config: str, root: str) -> Dict[str, Any]:
    """``--cfg-options`` that re-point every path of a config from its
    ``data/kitti_like/`` to ``root`` (datasets, database sampler, metric).

    Args:
        config: Path of the config file.
        root: The data root to use instead.

    Returns:
        dict: Dotted paths with list indices, as
        ``Config.merge_from_dict`` takes them (empty for the configs' own
        data root).
    """
    root = osp.normpath(root) + '/'
    if root == CONFIG_DATA_ROOT:
        return {}
    cfg = load_config(config).to_dict()
    options: Dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f'{path}.{key}' if path else str(key))
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, f'{path}.{index}')
        elif isinstance(node, str) and node.startswith(CONFIG_DATA_ROOT):
            options[path] = root + node[len(CONFIG_DATA_ROOT):]

    for key, value in cfg.items():
        if not key.startswith('_'):
            walk(value, key)
    return options


def schedule_options(epochs: Optional[int]) -> Dict[str, int]:
    """Options to train for ``epochs``: the loop, no validation in between,
    and the epoch-based cosine decay stretched to the new length.

    Args:
        epochs: Number of epochs; ``None`` keeps the config's schedule.

    Returns:
        dict: Dotted ``--cfg-options`` (empty for ``None``).
    """
    if epochs is None:
        return {}
    if epochs < 1:
        raise PruningInputError(f'epochs must be at least 1, got {epochs}')
    return {
        'train_cfg.max_epochs': epochs,
        'train_cfg.val_interval': epochs + 1,
        'param_scheduler.1.T_max': epochs,
        'param_scheduler.1.end': epochs,
    }


def parse_cfg_options(pairs: Optional[Sequence[str]]) -> dict:
    """Parse ``key=value`` strings as mmengine's ``--cfg-options`` does.

    Args:
        pairs: Strings such as ``'pruner.num_levels=6'``, or ``None``.

    Returns:
        dict: Dotted keys and their parsed values.
    """
    if not pairs:
        return {}
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    return dict(parser.parse_args(['--o', *pairs]).o)


def merge_options(*options: Optional[dict]) -> dict:
    """Merge option dicts, later ones winning; ``None`` counts as empty."""
    merged: dict = {}
    for extra in options:
        merged.update(extra or {})
    return merged


def eval_data_root(args: argparse.Namespace) -> Optional[str]:
    """The data root of the evaluations when ``--eval-num-val`` asks for
    more val frames than the training data root holds: the same simulation
    (seed and train frames) with more val frames, so that its first
    ``--num-val`` val frames are the training root's. ``None``: evaluate on
    the training data root.

    Args:
        args: :func:`rdprune_mm.demo.parse_args` output.
    """
    num_val = getattr(args, 'eval_num_val', None)
    if num_val is None or num_val == args.num_val:
        return None
    if num_val < args.num_val:
        raise PruningInputError(
            f'--eval-num-val {num_val} is fewer than the {args.num_val} val '
            f'frames of {args.data_root}; give more, or leave it out to '
            'evaluate on those')
    return f'{osp.normpath(args.data_root)}_val{num_val}'


def job_options(args: argparse.Namespace) -> Dict[str, dict]:
    """The options of the training config, of its evaluations and of the
    pruning config.

    Args:
        args: :func:`rdprune_mm.demo.parse_args` output.

    Returns:
        dict: ``train``, ``eval`` and ``prune`` options. ``eval`` are the
        training options re-pointed to :func:`eval_data_root` when there is
        one.
    """
    train = merge_options(
        data_root_options(args.train_config, args.data_root),
        schedule_options(args.epochs), parse_cfg_options(args.train_options))
    eval_root = eval_data_root(args)
    evaluation = train if eval_root is None else merge_options(
        train, data_root_options(args.train_config, eval_root))
    prune = merge_options(
        data_root_options(args.prune_config, args.data_root),
        schedule_options(args.finetune_epochs),
        parse_cfg_options(args.prune_options))
    if args.budget is not None:
        prune['pruner.budget'] = args.budget
    if args.budget_by is not None:
        prune['pruner.budget_by'] = args.budget_by
    return dict(train=train, eval=evaluation, prune=prune)


def pruner_settings(config: str, options: dict) -> dict:
    """The ``pruner`` section of a config with ``options`` merged."""
    return load_config(config, options).pruner.to_dict()
