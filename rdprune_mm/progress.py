"""Progress bars of long steps (mmengine's, with an estimate of the time
left)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Union

from mmengine.dist import get_rank
from mmengine.utils import ProgressBar


class SilentProgress:
    """What ranks other than 0 get instead of a bar: the same calls, no
    output, so that several processes do not draw over each other."""

    def update(self, num_tasks: int = 1) -> None:
        """Count nothing."""


@contextmanager
def progress_bar(total: int) -> Iterator[Union[ProgressBar, SilentProgress]]:
    """An mmengine ``ProgressBar`` of ``total`` steps whose line is ended
    when the block is left, so that the next log line starts on its own;
    drawn by rank 0 alone."""
    if get_rank() != 0:
        yield SilentProgress()
        return
    bar = ProgressBar(total)
    try:
        yield bar
    finally:
        bar.file.write('\n')
        bar.file.flush()
