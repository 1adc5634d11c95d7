"""Trained models kept in a folder that outlives work dirs (a committed one,
say), so that a later run on a fresh machine reuses them instead of
training again.

A stored model is ``<name>.pth`` (the final weights only: mmengine's
``meta`` and ``state_dict``, no optimizer state) and ``<name>.json`` (the
training step's settings, the data it was trained on, its training record
and the weights' digest). It is used only where all of these match.
"""
from __future__ import annotations

import os.path as osp
import shutil
from typing import Any, Callable, Optional

import torch

from ..fileio import atomic_write, read_json, write_json
from .step_dir import changed_keys, file_digest


class ModelStore:
    """A folder of trained models, each keyed by the settings it was
    trained with.

    Args:
        root: The folder (made when a model is first saved).
        log: Progress messages.
    """

    def __init__(self, root: str, log: Callable[[str], Any]) -> None:
        self.root = root
        self.log = log

    def _paths(self, name: str) -> tuple:
        weights = osp.join(self.root, f'{name}.pth')
        return weights, osp.join(self.root, f'{name}.json')

    def save(self, name: str, settings: dict, data: dict,
             record: dict) -> None:
        """Keep the final weights of a finished training.

        Args:
            name: The model's file name, without extension.
            settings: The training step's settings (its ``StepDir``'s).
            data: What identifies the training data (frame and label
                counts of the simulation).
            record: The training step's result; its ``checkpoint`` is read.
        """
        weights, info = self._paths(name)
        checkpoint = torch.load(record['checkpoint'],
                                map_location='cpu',
                                weights_only=False)
        slim = dict(meta=checkpoint.get('meta', {}),
                    state_dict=checkpoint['state_dict'])
        atomic_write(weights, lambda tmp: torch.save(slim, tmp))
        write_json(
            info,
            dict(settings=settings,
                 data=data,
                 record={
                     k: v
                     for k, v in record.items()
                     if k not in ('checkpoint', 'checkpoint_digest')
                 },
                 checkpoint=osp.basename(record['checkpoint']),
                 weights_digest=file_digest(weights)))
        self.log(f'trained model kept in {weights} (commit it to reuse it '
                 'on another machine)')

    def _matching(self, name: str, settings: dict, data: dict,
                  log: Callable[[str], Any]) -> Optional[dict]:
        """The stored model's record when it was trained with ``settings``
        on ``data`` and its weights are intact, else ``None`` (the reason
        goes to ``log``)."""
        weights, info = self._paths(name)
        stored = read_json(info)
        if stored is None or not osp.isfile(weights):
            return None
        saved = stored.get('settings') or {}
        if saved != settings:
            changed = changed_keys(saved, settings)
            log(f'{weights} was trained with other settings (changed: '
                f'{", ".join(changed)}): not used')
            return None
        if stored.get('data') != data:
            log(f'{weights} was trained on other data ({stored.get("data")} '
                f'against {data} here): not used')
            return None
        if file_digest(weights) != stored.get('weights_digest'):
            log(f'{weights} does not match its digest in {info} (a Git LFS '
                'pointer or a damaged copy?): not used')
            return None
        return stored

    def holds(self, name: str, settings: dict, data: dict) -> bool:
        """Whether a model trained with ``settings`` on ``data`` is kept
        under ``name``."""
        return self._matching(name, settings, data, lambda _: None) is not None

    def restore(self, name: str, settings: dict, data: dict,
                folder: str) -> Optional[dict]:
        """Copy a stored model into ``folder`` when it was trained with
        ``settings`` on the same data.

        Args:
            name: The model's file name, without extension.
            settings: The training step's settings.
            data: What identifies the training data.
            folder: The training step's folder.

        Returns:
            dict, optional: The training record, its ``checkpoint`` the
            copy, or ``None`` when no stored model matches (the reason is
            logged).
        """
        stored = self._matching(name, settings, data, self.log)
        if stored is None:
            return None
        weights, _ = self._paths(name)
        checkpoint = osp.join(folder, stored['checkpoint'])
        atomic_write(checkpoint, lambda tmp: shutil.copyfile(weights, tmp))
        self.log(f'dense model restored from {weights} (trained in '
                 f'{stored["record"]["seconds"]:.0f} s by an earlier run)')
        return dict(stored['record'],
                    checkpoint=checkpoint,
                    checkpoint_digest=file_digest(checkpoint),
                    restored_from=weights)
