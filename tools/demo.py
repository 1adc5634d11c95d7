"""The main job: built-in KITTI-layout LiDAR data, a small SECOND trained on
it, RD pruning, a short fine-tuning with the masks held, KittiMetric and CPU
latency, dense against pruned.

Steps (each skipped when its output exists and was made with the same
settings, so a second run reuses the data and the trained model):

1. simulate the dataset (:mod:`rdprune_mm.datasets`) and run mmdet3d's KITTI
   converter on it (infos, reduced point clouds, ground-truth database);
2. train the dense detector with mmengine's Runner
   (``configs/kitti_like/second_tiny_kitti-like-3class.py``); an interrupted
   training resumes from its last checkpoint;
3. evaluate it with ``KittiMetric`` (``Runner.test``);
4. RD-prune it at the budget of
   ``configs/kitti_like/rd-weight_second_tiny_kitti-like.py`` (``tools/prune.py``,
   calibrated on train frames): ``pruned.pth`` and ``allocation.json``;
5. evaluate the one-shot pruned model;
6. fine-tune it as ``tools/prune.py --finetune`` does (``RDPruneHook`` prunes
   again from the same curve cache, so with the same masks, and re-applies
   them after every optimizer step);
7. evaluate the fine-tuned model and check that its pruned weights are zero;
8. measure CPU latency per frame (median of ``model.test_step``) and write
   ``results.md`` and ``results.json``.

The steps live in :mod:`rdprune_mm.demo`; this file is the command line.

Example::

    python tools/demo.py                      # everything, ~15-20 min on 2 cores
    python tools/demo.py --budget 0.125       # reuses data and dense model
"""
from __future__ import annotations

import os.path as osp
import sys
from typing import Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; 0, or 2 with one error line on bad input."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rdprune_mm.demo import parse_args, run
    from rdprune_mm.errors import run_tool
    args = parse_args(argv)
    return run_tool('demo.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
