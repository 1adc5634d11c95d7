"""Simulated LiDAR frames with KITTI labels and calibration.

A frame is a street scene (:mod:`.scene`) seen by a spinning 64-beam sensor
(:mod:`.raycast`) mounted 1.73 m above the ground, like KITTI's Velodyne
HDL-64E. Each ray returns the nearest surface, so occlusion and the fall of
point density with range come from the geometry. The labels follow KITTI's
semantics:

* only cars, pedestrians and cyclists that the camera (P2) sees and that
  have at least ``min_points`` returns inside the image are labeled; objects
  in the image with fewer returns become ``DontCare`` regions;
* ``truncated`` is the fraction of the projected box outside the image,
  ``occluded`` 0/1/2 from the fraction of the object's unoccluded returns
  that reach the sensor (>= 0.8, >= 0.4, less);
* location, dimensions (h, w, l) and rotation_y in rectified camera
  coordinates (bottom center, y down), alpha, and the 2D box from the 3D
  box's corners projected by P2 and clipped to the image.

Label values are rounded to KITTI's two decimals *before* the scene is ray
cast: the object shapes are built from the boxes that mmdet3d's KittiDataset
reads back from the label files (camera box -> LiDAR box with the inverse
of the converter's ``lidar2cam``), so the files and the points agree
exactly. The calibration is that of KITTI's 2011_09_26 drives (the real
frame 000008 in ``shared/data/lidar``).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from mmdet3d.structures import (Box3DMode, CameraInstance3DBoxes,
                                LiDARInstance3DBoxes)

from .raycast import GROUND, BeamGrid, cast_rays, hdl64e_elevations
from .scene import CLASSES, Scene, SceneConfig, object_primitives, sample_scene

#: KITTI's camera image size (width, height).
IMAGE_SIZE = (1242, 375)

# KITTI's 2011_09_26 calibration, 7 significant digits as in its files
_CALIB_VALUES = {
    'P0': (7.215377e+02, 0.0, 6.095593e+02, 0.0, 0.0, 7.215377e+02,
           1.728540e+02, 0.0, 0.0, 0.0, 1.0, 0.0),
    'P1': (7.215377e+02, 0.0, 6.095593e+02, -3.875744e+02, 0.0, 7.215377e+02,
           1.728540e+02, 0.0, 0.0, 0.0, 1.0, 0.0),
    'P2': (7.215377e+02, 0.0, 6.095593e+02, 4.485728e+01, 0.0, 7.215377e+02,
           1.728540e+02, 2.163791e-01, 0.0, 0.0, 1.0, 2.745884e-03),
    'P3': (7.215377e+02, 0.0, 6.095593e+02, -3.395242e+02, 0.0, 7.215377e+02,
           1.728540e+02, 2.199936e+00, 0.0, 0.0, 1.0, 2.729905e-03),
    'R0_rect':
    (9.999239e-01, 9.837760e-03, -7.445048e-03, -9.869795e-03, 9.999421e-01,
     -4.278459e-03, 7.402527e-03, 4.351614e-03, 9.999631e-01),
    'Tr_velo_to_cam':
    (7.533745e-03, -9.999714e-01, -6.166020e-04, -4.069766e-03, 1.480249e-02,
     7.280733e-04, -9.998902e-01, -7.631618e-02, 9.998621e-01, 7.523790e-03,
     1.480755e-02, -2.717806e-01),
    'Tr_imu_to_velo':
    (9.999976e-01, 7.553071e-04, -2.035826e-03, -8.086759e-01, -7.854027e-04,
     9.998898e-01, -1.482298e-02, 3.195559e-01, 2.024406e-03, 1.482454e-02,
     9.998881e-01, -7.997231e-01),
}


def _extend(mat: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:mat.shape[0], :mat.shape[1]] = mat
    return out


@dataclass(frozen=True)
class Calibration:
    """A KITTI calibration file's matrices."""
    values: Dict[str,
                 tuple] = field(default_factory=lambda: dict(_CALIB_VALUES))

    def matrix(self, name: str) -> np.ndarray:
        """``name`` as a 4x4 matrix (P*, R0_rect, Tr_* extended)."""
        values = np.array(self.values[name], dtype=np.float64)
        return _extend(values.reshape(3, -1))

    @property
    def lidar2cam(self) -> np.ndarray:
        """LiDAR -> rectified camera, computed as mmdet3d's converter does
        (``R0_rect @ Tr_velo_to_cam`` in float32)."""
        rect = self.matrix('R0_rect').astype(np.float32)
        velo2cam = self.matrix('Tr_velo_to_cam').astype(np.float32)
        return (rect @ velo2cam).astype(np.float64)

    @property
    def cam2img(self) -> np.ndarray:
        """P2, 4x4."""
        return self.matrix('P2')

    def text(self) -> str:
        """The calibration file, in KITTI's layout."""
        return ''.join(f'{name}: ' + ' '.join(f'{v:.12e}'
                                              for v in values) + '\n'
                       for name, values in self.values.items())


@dataclass(frozen=True)
class LidarConfig:
    """The simulated sensor.

    Args:
        azimuth_res_deg: Horizontal step of the sweep in degrees (KITTI's
            HDL-64E: about 0.08-0.09 at 10 Hz).
        max_range: Farthest return in metres.
        min_range: Nearer returns (the ego car's roof) are dropped.
        range_noise: Standard deviation of the range noise in metres
            (clipped at 3 sigma).
        dropout: Probability that a return is lost, before the losses of
            far, dark surfaces.
    """
    azimuth_res_deg: float = 0.16
    max_range: float = 120.0
    min_range: float = 2.5
    range_noise: float = 0.012
    dropout: float = 0.02


@dataclass
class Label:
    """One line of a KITTI label file."""
    name: str
    truncated: float
    occluded: int
    alpha: float
    bbox: np.ndarray
    dimensions_hwl: np.ndarray
    location: np.ndarray
    rotation_y: float
    object_index: int = -1

    def line(self) -> str:
        """The label file line (DontCare lines keep KITTI's fill values)."""
        if self.name == 'DontCare':
            return ('DontCare -1 -1 -10 ' +
                    ' '.join(_fmt(v) for v in self.bbox) +
                    ' -1 -1 -1 -1000 -1000 -1000 -10')
        values = ([self.truncated, self.occluded, self.alpha] +
                  list(self.bbox) + list(self.dimensions_hwl) +
                  list(self.location) + [self.rotation_y])
        return ' '.join([self.name] + [
            str(v) if isinstance(v, (int, np.integer)) else _fmt(v)
            for v in values
        ])


def _fmt(value: float) -> str:
    return f'{float(value) + 0.0:.2f}'.replace('-0.00', '0.00')


@dataclass
class Frame:
    """A simulated frame.

    Attributes:
        points: ``(N, 4)`` float32 x, y, z, intensity in the LiDAR frame.
        source: ``(N,)`` what each point hit: -1 ground, -2 clutter, else the
            index of the object in ``objects``.
        scene: The scene, its objects' boxes as mmdet3d reads them back.
        labels: The label file's lines, DontCare last.
        num_points_in_fov: Per object, its points that project into the
            image.
        visible_fraction: Per object, returns that reach the sensor over
            the returns it would give alone (1.0 when it gives none).
    """
    points: np.ndarray
    source: np.ndarray
    scene: Scene
    labels: List[Label]
    num_points_in_fov: np.ndarray
    visible_fraction: np.ndarray


def in_image(points: np.ndarray,
             calib: Calibration,
             image_size=IMAGE_SIZE) -> np.ndarray:
    """Which LiDAR points project into the camera image (P2)."""
    lidar2img = calib.cam2img @ calib.lidar2cam
    xyz1 = np.concatenate([points[:, :3], np.ones((len(points), 1))], 1)
    uvz = xyz1 @ lidar2img.T
    depth = uvz[:, 2]
    with np.errstate(divide='ignore', invalid='ignore'):
        u, v = uvz[:, 0] / depth, uvz[:, 1] / depth
    return ((depth > 0.1) & (u >= 0) & (u < image_size[0]) & (v >= 0)
            & (v < image_size[1]))


def project_box(corners: np.ndarray,
                cam2img: np.ndarray,
                near: float = 0.1) -> Optional[np.ndarray]:
    """2D box ``(x1, y1, x2, y2)`` of a 3D box's corners in camera
    coordinates, clipped to the near plane; None when it is all behind."""
    front = corners[:, 2] >= near
    if not front.any():
        return None
    pts = [corners[front]]
    i, j = np.triu_indices(len(corners), 1)
    za, zb = corners[i, 2], corners[j, 2]
    cross = (za - near) * (zb - near) < 0
    if cross.any():
        s = (near - za[cross]) / (zb[cross] - za[cross])
        pts.append(corners[i[cross]] + s[:, None] *
                   (corners[j[cross]] - corners[i[cross]]))
    pts = np.concatenate(pts)
    uvz = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ cam2img[:3].T
    uv = uvz[:, :2] / uvz[:, 2:3]
    return np.concatenate([uv.min(0), uv.max(0)])


def _round_trip_boxes(boxes: np.ndarray,
                      calib: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """Camera boxes rounded like label files, and the LiDAR boxes mmdet3d's
    KittiDataset makes of them."""
    if not len(boxes):
        return np.zeros((0, 7)), np.zeros((0, 7))
    lidar2cam = calib.lidar2cam
    cam = LiDARInstance3DBoxes(torch.from_numpy(boxes).float()).convert_to(
        Box3DMode.CAM, lidar2cam)
    cam = np.round(cam.tensor.numpy().astype(np.float64), 2) + 0.0
    lidar = CameraInstance3DBoxes(torch.from_numpy(cam.astype(
        np.float32))).convert_to(Box3DMode.LIDAR, np.linalg.inv(lidar2cam))
    return cam, lidar.tensor.numpy().astype(np.float64)


def _ground_bumps(x: np.ndarray, y: np.ndarray, phase: np.ndarray):
    return 0.012 * (
        np.sin(0.6 * x + phase[0]) * np.sin(0.45 * y + phase[1]) +
        np.sin(0.17 * x + 0.23 * y + phase[2]))


def simulate_frame(rng: np.random.Generator,
                   calib: Optional[Calibration] = None,
                   lidar: LidarConfig = LidarConfig(),
                   scene_cfg: SceneConfig = SceneConfig(),
                   min_points: int = 5,
                   image_size=IMAGE_SIZE) -> Frame:
    """Sample a scene, scan it and label it.

    Args:
        rng: The frame's random generator (the frame depends on nothing
            else).
        calib: Camera/LiDAR calibration (default: KITTI's).
        lidar: The sensor.
        scene_cfg: What the scene holds.
        min_points: Objects need this many returns inside the image to be
            labeled.
        image_size: ``(width, height)`` of the camera image.

    Returns:
        Frame: Points, labels and per-object statistics.
    """
    scene = sample_scene(rng, scene_cfg)
    return scan_scene(scene, rng, calib, lidar, min_points, image_size)


def scan_scene(scene: Scene,
               rng: np.random.Generator,
               calib: Optional[Calibration] = None,
               lidar: LidarConfig = LidarConfig(),
               min_points: int = 5,
               image_size=IMAGE_SIZE) -> Frame:
    """Scan and label a scene (see :func:`simulate_frame`).

    The objects' boxes are replaced by the boxes mmdet3d reads back from
    the label files (rounded to two decimals in the camera frame) before
    their shapes are built.

    Args:
        scene: The scene; its ``clutter`` gets the objects' parts added.
        rng: Random generator for the sweep's phase, noise and dropouts.
        calib: Camera/LiDAR calibration (default: KITTI's).
        lidar: The sensor.
        min_points: Objects need this many returns inside the image to be
            labeled.
        image_size: ``(width, height)`` of the camera image.

    Returns:
        Frame: Points, labels and per-object statistics.
    """
    calib = calib or Calibration()
    objects = scene.objects
    boxes = np.array([o.box for o in objects]).reshape(-1, 7)
    cam_boxes, lidar_boxes = _round_trip_boxes(boxes, calib)
    for obj, box in zip(objects, lidar_boxes):
        obj.box = box

    prims = scene.clutter
    for index, obj in enumerate(objects):
        object_primitives(prims, obj.box, obj.name, index, obj.reflectivity,
                          rng)
    grid = BeamGrid(hdl64e_elevations(), lidar.azimuth_res_deg,
                    float(rng.uniform(0, np.radians(lidar.azimuth_res_deg))))
    hits = cast_rays(grid, prims, scene.ground)

    num = grid.num_rays
    gauss = np.clip(rng.standard_normal(num), -3, 3)
    drop_draw = rng.random(num)
    intensity_noise = rng.normal(0, 0.03, num)
    phase = rng.uniform(0, 2 * np.pi, 3)

    prim_owner = np.asarray(prims.owner + [0], dtype=np.int64)
    prim_refl = np.asarray(prims.reflectivity + [0.0])
    prim_noise = np.asarray(prims.noise + [0.0])
    hit = hits.hit
    is_prim = hit >= 0
    safe = np.where(is_prim, hit, len(prims))
    owner = np.where(is_prim, prim_owner[safe], -1)
    source = np.where(hit == GROUND, -1, np.where(owner >= 0, owner, -2))
    valid = (
        np.isfinite(hits.t) & (hits.t <= lidar.max_range)
        & (hits.t >= lidar.min_range))

    # reflectivity: materials, asphalt with lane markings
    dirs = grid.directions
    refl = np.where(is_prim, prim_refl[safe], scene.road_reflectivity)
    ground = valid & (hit == GROUND)
    t = np.where(valid, hits.t, 0.0)
    gx, gy = t[ground] * dirs[ground, 0], t[ground] * dirs[ground, 1]
    cos_h, sin_h = np.cos(scene.heading), np.sin(scene.heading)
    xs, ys = cos_h * gx + sin_h * gy, -sin_h * gx + cos_h * gy
    marking = np.zeros(len(xs), bool)
    for y_line in scene.dashed_lines:
        marking |= (np.abs(ys - y_line) < 0.075) & (np.mod(xs, 9.0) < 3.0)
    for y_line in scene.solid_lines:
        marking |= np.abs(ys - y_line) < 0.08
    ground_refl = refl[ground]
    ground_refl[marking] = 0.75
    refl[ground] = ground_refl

    sigma = np.where(prim_noise[safe] > 0, prim_noise[safe], lidar.range_noise)
    keep_prob = (1 - lidar.dropout) * (1 - 0.7 * (t / lidar.max_range)**2 *
                                       (1 - refl))
    returned = valid & (drop_draw < keep_prob)
    rng_dist = t + sigma * gauss
    xyz = rng_dist[:, None] * dirs
    xyz[ground, 2] += _ground_bumps(xyz[ground, 0], xyz[ground, 1], phase)
    intensity = np.clip(refl * (0.7 + 0.3 * hits.cos) + intensity_noise, 0, 1)
    intensity = np.round(intensity, 2)
    points = np.concatenate([xyz, intensity[:, None]],
                            1)[returned].astype(np.float32)
    source = source[returned]

    # per-object statistics
    fov = in_image(points, calib, image_size)
    num_objects = len(objects)
    num_in_fov = np.bincount(
        source[fov & (source >= 0)], minlength=num_objects)[:num_objects]
    reaching = np.bincount(
        owner[valid & (owner >= 0)], minlength=num_objects)[:num_objects]
    visible = np.ones(num_objects)
    for index, rays in hits.alone.items():
        if len(rays):
            visible[index] = min(1.0, reaching[index] / len(rays))
    labels = _labels(objects, cam_boxes, num_in_fov, visible, calib,
                     min_points, image_size)
    return Frame(points, source.astype(np.int64), scene, labels, num_in_fov,
                 visible)


def _labels(objects, cam_boxes: np.ndarray, num_in_fov: np.ndarray,
            visible: np.ndarray, calib: Calibration, min_points: int,
            image_size) -> List[Label]:
    labels, dont_care = [], []
    if not len(objects):
        return labels
    corners = CameraInstance3DBoxes(
        torch.from_numpy(cam_boxes.astype(np.float32))).corners.numpy().astype(
            np.float64)
    width, height = image_size
    for index, obj in enumerate(objects):
        if num_in_fov[index] == 0:
            continue
        box2d = project_box(corners[index], calib.cam2img)
        if box2d is None:
            continue
        clipped = np.array([
            max(box2d[0], 0.0),
            max(box2d[1], 0.0),
            min(box2d[2], width - 1.0),
            min(box2d[3], height - 1.0)
        ])
        if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
            continue
        clipped = np.round(clipped, 2)
        if num_in_fov[index] < min_points:
            dont_care.append(
                Label('DontCare', -1, -1, -10, clipped, np.full(3, -1.0),
                      np.full(3, -1000.0), -10, index))
            continue
        area = (box2d[2] - box2d[0]) * (box2d[3] - box2d[1])
        inside = (clipped[2] - clipped[0]) * (clipped[3] - clipped[1])
        truncated = float(np.clip(1 - inside / max(area, 1e-9), 0, 1))
        frac = visible[index]
        occluded = 0 if frac >= 0.8 else 1 if frac >= 0.4 else 2
        x, y, z, length, h, w, ry = cam_boxes[index]
        alpha = ry - np.arctan2(x, z)
        alpha = (alpha + np.pi) % (2 * np.pi) - np.pi
        labels.append(
            Label(obj.name, round(truncated, 2), occluded, round(alpha, 2),
                  clipped, np.array([h, w, length]), np.array([x, y, z]),
                  float(ry), index))
    return labels + dont_care


def png_bytes(width: int, height: int, rgb=(0, 0, 0)) -> bytes:
    """A uniformly coloured 8-bit RGB PNG (deterministic bytes)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack('>I', len(data)) + tag + data +
                struct.pack('>I',
                            zlib.crc32(tag + data) & 0xffffffff))

    raw = (b'\x00' + bytes(rgb) * width) * height
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) +
            chunk(b'IDAT', zlib.compress(raw, 9)) + chunk(b'IEND', b''))


__all__ = [
    'CLASSES', 'IMAGE_SIZE', 'Calibration', 'LidarConfig', 'Label', 'Frame',
    'simulate_frame', 'scan_scene', 'in_image', 'project_box', 'png_bytes'
]
