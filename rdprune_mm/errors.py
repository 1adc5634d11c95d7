"""The error that rdprune_mm raises for bad input.

Its message is one line that names the problem and the fix; the command-line
tools print it without a traceback.
"""
import sys
from typing import Any, Callable


class PruningInputError(ValueError):
    """Bad input from the user: a config, a checkpoint, a budget, data."""


def run_tool(tool: str, func: Callable[[], Any]) -> int:
    """Run a command-line tool's work; bad input becomes one stderr line.

    Args:
        tool: The tool's file name, e.g. ``'prune.py'``.
        func: The work.

    Returns:
        int: 0, or 2 after a :class:`PruningInputError`.
    """
    try:
        func()
    except PruningInputError as error:
        print(f'{tool}: error: {error}', file=sys.stderr)
        return 2
    return 0
