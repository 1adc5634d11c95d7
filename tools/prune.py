"""Prune a trained MMDetection3D (or MMDetection) detector.

The repository's entry point of ``rdprune-mm prune`` (:mod:`rdprune_mm.cli`),
with the same arguments; :func:`rdprune_mm.apis.prune_detector` does the
work.

Example::

    python tools/prune.py \
        configs/centerpoint/rd-weight_centerpoint_voxel01_second_secfpn_nus.py \
        --checkpoint centerpoint.pth --work-dir work_dirs/centerpoint

On 8 GPUs (the curves split across the processes, docs/distributed.md)::

    torchrun --nproc_per_node 8 tools/prune.py CONFIG \
        --checkpoint centerpoint.pth --work-dir work_dirs/centerpoint \
        --launcher pytorch
"""
from __future__ import annotations

import argparse
import sys

from rdprune_mm.cli import parse_prune_args, prune_main


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments of ``rdprune-mm prune``."""
    return parse_prune_args(argv)


def main(argv=None) -> int:
    """Prune; 0, or 2 with one ``prune.py: error:`` line on bad input."""
    return prune_main(argv, prog='prune.py')


if __name__ == '__main__':
    sys.exit(main())
