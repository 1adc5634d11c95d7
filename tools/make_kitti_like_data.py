"""Write a simulated LiDAR dataset in KITTI's object-detection layout.

Street scenes (cars, pedestrians, cyclists, buildings, poles, trees) are ray
cast with a 64-beam spinning LiDAR 1.73 m above the ground and labeled like
KITTI (camera-frame boxes, truncation, occlusion, 2D boxes by P2). With
``--create-infos`` mmdet3d's own converter then writes
``kitti_infos_{train,val,trainval,test}.pkl``, ``training/velodyne_reduced``,
``kitti_dbinfos_train.pkl`` and ``kitti_gt_database/``, as
``tools/create_data.py kitti`` would.

Example::

    python tools/make_kitti_like_data.py --out-dir data/kitti_like \
        --num-train 32 --num-val 8 --seed 0 --create-infos
"""
from __future__ import annotations

import argparse
import sys
import time

from rdprune_mm.errors import run_tool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Simulate LiDAR frames in KITTI layout (and run '
        "mmdet3d's KITTI converter on them).")
    parser.add_argument(
        '--out-dir', default='data/kitti_like', help='dataset root')
    parser.add_argument(
        '--num-train', type=int, default=32, help='frames in train.txt')
    parser.add_argument(
        '--num-val', type=int, default=8, help='frames in val.txt')
    parser.add_argument(
        '--num-test',
        type=int,
        default=1,
        help="unlabeled frames in testing/ (test.txt); mmdet3d's converter "
        'needs at least one')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    parser.add_argument(
        '--azimuth-res',
        type=float,
        default=0.16,
        help='azimuth step of the sweep in degrees (0.16: ~130k points a '
        'frame, ~18k in the camera view, like KITTI)')
    parser.add_argument(
        '--object-density',
        type=float,
        default=1.0,
        help='scales the number of cars, pedestrians and cyclists')
    parser.add_argument(
        '--min-points',
        type=int,
        default=5,
        help='returns in the camera view an object needs to be labeled')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace a dataset of this tool written with other arguments, '
        'or write beside the files of a non-empty folder (a dataset this '
        'tool did not write is never replaced)')
    parser.add_argument(
        '--create-infos',
        action='store_true',
        help="run mmdet3d's KITTI converter on the dataset (info files, "
        'reduced point clouds, ground-truth database)')
    parser.add_argument(
        '--extra-tag',
        default='kitti',
        help='prefix of the converter outputs, as create_data.py')
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from rdprune_mm.datasets import (create_kitti_infos, infos_exist,
                                     write_kitti_like_dataset)
    summary = write_kitti_like_dataset(
        args.out_dir,
        args.num_train,
        args.num_val,
        seed=args.seed,
        num_test=args.num_test,
        azimuth_res=args.azimuth_res,
        object_density=args.object_density,
        min_points=args.min_points,
        overwrite=args.overwrite)
    if not args.create_infos:
        return
    if summary['skipped'] and infos_exist(args.out_dir, args.extra_tag):
        print(f'{args.out_dir}: converter outputs exist, skipped')
        return
    start = time.perf_counter()
    outputs = create_kitti_infos(args.out_dir, args.extra_tag)
    print(f"mmdet3d's converter took {time.perf_counter() - start:.1f} s: " +
          ', '.join(outputs.values()))


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_tool('make_kitti_like_data.py', lambda: run(args))


if __name__ == '__main__':
    sys.exit(main())
