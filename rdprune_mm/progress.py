"""Progress bars of long steps (mmengine's, with an estimate of the time
left)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from mmengine.utils import ProgressBar


@contextmanager
def progress_bar(total: int) -> Iterator[ProgressBar]:
    """An mmengine ``ProgressBar`` of ``total`` steps whose line is ended
    when the block is left, so that the next log line starts on its own."""
    bar = ProgressBar(total)
    try:
        yield bar
    finally:
        bar.file.write('\n')
        bar.file.flush()
