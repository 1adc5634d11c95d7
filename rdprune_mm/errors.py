"""The error that rdprune_mm raises for bad input.

Its message is one line that names the problem and the fix; the command-line
tools print it without a traceback.
"""


class PruningInputError(ValueError):
    """Bad input from the user: a config, a checkpoint, a budget, data."""
