"""Atomic writes and fingerprints."""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import tempfile
from typing import Any, Callable, Iterable, Optional

import torch


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write a file through a temporary sibling and rename it into place.

    Args:
        path: The file to write.
        write: Called with a temporary path in the same folder.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder,
        prefix=f'.{osp.basename(path)}.',
        suffix=osp.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path: str) -> Optional[dict]:
    """A JSON object from a file, or ``None`` when the file is missing,
    unreadable or holds something other than an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str, data: Any) -> None:
    """Atomically write ``data`` as indented JSON."""

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=2)
            f.write('\n')

    atomic_write(path, write)


def fingerprint(tensors: Iterable[tuple[str, torch.Tensor]],
                extra: Any = None) -> str:
    """SHA-256 of named tensors (names, shapes, dtypes and values) + JSON."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f'{name}|{tuple(tensor.shape)}|{tensor.dtype}'.encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b'')
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def write_text(path: str, text: str) -> None:
    """Atomically write ``text``."""

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)

    atomic_write(path, write)
