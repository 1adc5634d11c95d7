"""Render a KITTI LiDAR frame into its camera image plane as an RGB image.

The projected points are coloured by depth (near: warm, far: cool) and
shaded by reflectance, which gives 2D detectors and backbones a real-scene
calibration image where no camera image can be downloaded.

Example::

    python tools/render_lidar_image.py  # the KITTI frame in ../shared
"""
from __future__ import annotations

import argparse
import os.path as osp
import pickle
import sys

import matplotlib
import mmcv
import numpy as np

LIDAR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '..',
                 'shared', 'data', 'lidar')
DEFAULT_OUT = 'data/calibration/kitti_000008_lidar.png'


def render(points: np.ndarray, lidar2img: np.ndarray, height: int,
           width: int, splat: int = 2) -> np.ndarray:
    """Project points (x, y, z, reflectance) into an ``(H, W, 3)`` image."""
    xyz1 = np.concatenate([points[:, :3], np.ones((len(points), 1))], 1)
    uvz = xyz1 @ np.asarray(lidar2img, dtype=np.float64).T
    depth = uvz[:, 2]
    front = depth > 0.5
    u = (uvz[front, 0] / depth[front]).astype(int)
    v = (uvz[front, 1] / depth[front]).astype(int)
    depth, reflect = depth[front], points[front, 3]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, depth, reflect = u[inside], v[inside], depth[inside], reflect[
        inside]
    colour = matplotlib.colormaps['turbo'](
        1 - np.clip(depth / 60.0, 0, 1))[:, :3]
    colour *= (0.5 + 0.5 * np.clip(reflect, 0, 1))[:, None]
    image = np.zeros((height, width, 3), dtype=np.float64)
    far_first = np.argsort(-depth)
    for du in range(splat):
        for dv in range(splat):
            image[np.clip(v[far_first] + dv, 0, height - 1),
                  np.clip(u[far_first] + du, 0, width - 1)] = colour[
                      far_first]
    return (image[..., ::-1] * 255).astype(np.uint8)  # BGR for mmcv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--points', default=osp.join(LIDAR, '000008.bin'))
    parser.add_argument('--info', default=osp.join(LIDAR, '000008.pkl'))
    parser.add_argument('--camera', default='CAM2')
    parser.add_argument('--out', default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in (args.points, args.info):
        if not osp.isfile(path):
            print(f'render_lidar_image.py: error: {path} does not exist; '
                  'fix --points / --info', file=sys.stderr)
            return 2
    with open(args.info, 'rb') as f:
        camera = pickle.load(f)['data_list'][0]['images'][args.camera]
    points = np.fromfile(args.points, dtype=np.float32).reshape(-1, 4)
    image = render(points, camera['lidar2img'], camera['height'],
                   camera['width'])
    mmcv.imwrite(image, args.out, auto_mkdir=True)
    print(f'wrote {args.out} ({camera["width"]}x{camera["height"]})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
