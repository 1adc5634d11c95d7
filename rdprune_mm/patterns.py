"""Module-name patterns of the ``include`` / ``exclude`` settings."""
from __future__ import annotations

import re
from typing import Iterable


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """Whether one of the regular expressions matches ``name``
    (``re.search``)."""
    return any(re.search(pattern, name) for pattern in patterns)
