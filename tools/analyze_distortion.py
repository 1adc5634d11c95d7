"""Which distortion measure follows detection accuracy, for one config.

Draws random allocations at several FLOPs budgets, prunes the trained
detector to each one (one-shot, magnitude masks inside each layer),
computes every distortion measure on the calibration frames and measures
the mAP with the config's KittiMetric. Writes ``distortion_study.json``,
``.md`` and a scatter plot ``.png`` to the work dir and prints the Spearman
correlation of each measure with the mAP loss. Each allocation is saved as
it finishes; a rerun with the same settings continues.

Example::

    python tools/analyze_distortion.py \
        configs/kitti_like/rd-weight_centerpoint_kitti-like.py \
        --checkpoint work_dirs/centerpoint_bench/seed0/dense/epoch_6.pth \
        --data-root data/kitti_like_bench --val-frames 100
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Distortion measures against the one-shot mAP loss of '
        'random allocations (Spearman correlation).')
    parser.add_argument('config', help='weight-pruning config file')
    parser.add_argument('--checkpoint',
                        required=True,
                        help='trained checkpoint')
    parser.add_argument('--work-dir',
                        help='output folder (default: work_dirs/<config>)')
    parser.add_argument(
        '--data-root',
        help="re-point the config's data/kitti_like/ paths to this root")
    parser.add_argument('--budgets',
                        type=float,
                        nargs='+',
                        default=[0.8, 0.65, 0.5],
                        help='shares of the FLOPs to keep')
    parser.add_argument('--samples',
                        type=int,
                        default=10,
                        help='allocations per budget')
    parser.add_argument('--measures',
                        nargs='+',
                        default=['NormalizedMSE', 'DecodedDistortion'],
                        help='registered distortion measures, each Type or '
                        "Type(key=value, ...), e.g. "
                        "'DecodedDistortion(score_weight=0.25)'; measures "
                        'added to a finished study are computed for its '
                        'allocations without evaluating them again')
    parser.add_argument('--val-frames',
                        type=int,
                        help='evaluate on the first N val frames only')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--spread', type=float, default=1.0,
        help='largest std of the log of the random per-layer factors on '
        'the magnitudes (0: global magnitude pruning)')
    parser.add_argument('--device', default=None)
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, e.g. calibration.num_samples=8')
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """Run :func:`rdprune_mm.apis.analyze_detector_distortion` and print
    its table."""
    from rdprune_mm.apis import analyze_detector_distortion, load_config
    from rdprune_mm.demo import data_root_options
    options = dict(args.cfg_options or {})
    if args.data_root:
        options = {**data_root_options(args.config, args.data_root), **options}
    cfg = load_config(args.config, options)
    report = analyze_detector_distortion(cfg,
                                         args.checkpoint,
                                         args.work_dir,
                                         args.device,
                                         budgets=args.budgets,
                                         samples=args.samples,
                                         measures=args.measures,
                                         val_frames=args.val_frames,
                                         seed=args.seed,
                                         spread=args.spread)
    for name, corr in report['correlation'].items():
        print(f'{name}: Spearman {corr["spearman"]:.3f} with the mAP loss '
              f'over {len(report["allocations"])} allocations')
    return report


def main(argv=None) -> int:
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from rdprune_mm.errors import run_tool
    args = parse_args(argv)
    return run_tool('analyze_distortion.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
