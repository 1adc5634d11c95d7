"""Step folders that remember the settings their output was made with."""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import shutil
from typing import Optional

from ..errors import PruningInputError
from ..fileio import read_json, write_json  # noqa: F401 (re-exported)

#: The settings a step folder was made with (marks folders the demo owns).
SETTINGS_FILE = 'demo_settings.json'
#: A finished step's settings and result.
DONE_FILE = 'demo_done.json'


def file_digest(path: str) -> str:
    """The first 16 hex digits of a file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()[:16]


def changed_keys(before: dict, after: dict) -> list:
    """The keys whose values differ between two settings dicts, sorted."""
    return sorted(k for k in set(before) | set(after)
                  if before.get(k) != after.get(k))


def last_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint mmengine's ``last_checkpoint`` file points at.

    Args:
        work_dir: A Runner's work dir.

    Returns:
        str, optional: The checkpoint, or ``None`` when there is no
        ``last_checkpoint`` file or its checkpoint is missing.
    """
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        checkpoint = f.read().strip()
    return checkpoint if osp.isfile(checkpoint) else None


class StepDir:
    """A step's folder: the settings it was made with, and a record of its
    finished output.

    Only folders holding the demo's settings file are ever removed.

    Args:
        path: The folder.
        settings: What the step's output depends on (JSON-able; other
            values are stored as their ``str``).
    """

    def __init__(self, path: str, settings: dict) -> None:
        self.path = path
        self.settings = json.loads(json.dumps(settings, default=str))

    @property
    def done(self) -> Optional[dict]:
        """The result of a finished run with these settings, or ``None``."""
        record = read_json(osp.join(self.path, DONE_FILE))
        if record is None or record.get('settings') != self.settings:
            return None
        return record.get('result')

    def prepare(self, replace: bool, what: str) -> bool:
        """Make the folder ready for this step.

        A folder made with other settings is removed when ``replace``,
        else it stops the demo with an error that says how to go on.

        Args:
            replace: Remove a folder made with other settings.
            what: What the folder holds, for the error message.

        Returns:
            bool: Whether an unfinished run of the same settings is in it
            (mmengine's ``last_checkpoint``: resume it).
        """
        saved = read_json(osp.join(self.path, SETTINGS_FILE))
        if osp.isdir(self.path) and os.listdir(self.path):
            if saved is None:
                raise PruningInputError(
                    f'{self.path} exists and was not written by the demo; '
                    'choose another --work-dir')
            if saved != self.settings:
                if not replace:
                    changed = changed_keys(saved, self.settings)
                    raise PruningInputError(
                        f'{self.path} holds {what} made with other settings '
                        f'(changed: {", ".join(changed)}); pass --overwrite '
                        'to redo it or choose another --work-dir')
                shutil.rmtree(self.path)
        os.makedirs(self.path, exist_ok=True)
        write_json(osp.join(self.path, SETTINGS_FILE), self.settings)
        return osp.exists(osp.join(self.path, 'last_checkpoint'))

    def clear(self) -> None:
        """Remove the folder (``--overwrite``), if the demo made it."""
        if osp.isfile(osp.join(self.path, SETTINGS_FILE)):
            shutil.rmtree(self.path)

    def finish(self, result: dict) -> dict:
        """Record the step's result as done with these settings.

        Args:
            result: The step's result (JSON-able).

        Returns:
            dict: ``result``.
        """
        write_json(
            osp.join(self.path, DONE_FILE),
            dict(settings=self.settings, result=result))
        return result
