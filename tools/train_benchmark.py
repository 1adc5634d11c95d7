"""Train the benchmark CenterPoint (configs/kitti_like/
centerpoint_kitti-like-3class.py) on built-in KITTI-layout data, one model
per training seed, and evaluate the last epochs' checkpoints with
KittiMetric. Every finished step is reused, so an interrupted run continues
where it stopped. Example::

    python tools/train_benchmark.py                 # seeds 0 1 2
    python tools/train_benchmark.py --seeds 0       # one model
"""
from __future__ import annotations

import os.path as osp
import sys
from typing import Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run it; 0, or 2 with one error line on bad input."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rdprune_mm.demo.benchmark_model import parse_args, run
    from rdprune_mm.errors import run_tool
    args = parse_args(argv)
    return run_tool('train_benchmark.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
