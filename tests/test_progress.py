"""Progress bars: rank 0 draws them, other ranks stay silent."""
import functools
import io

import pytest
from mmengine.utils import ProgressBar

from rdprune_mm import progress


@pytest.mark.parametrize('rank, drawn', [(0, True), (1, False)])
def test_only_rank_zero_draws(rank, drawn, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(progress, 'get_rank', lambda: rank)
    monkeypatch.setattr(progress, 'ProgressBar',
                        functools.partial(ProgressBar, file=out))
    with progress.progress_bar(3) as bar:
        for _ in range(3):
            bar.update()
    assert ('3/3' in out.getvalue()) == drawn
