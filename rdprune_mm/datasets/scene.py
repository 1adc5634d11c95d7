"""Random street scenes: a road along x with lanes, curbs and sidewalks,
buildings, poles and trees, and cars, pedestrians and cyclists on them.

Scenes are laid out in a *street frame* (x along the street, y to the left,
the sensor above the origin) that is yawed by a few degrees against the
LiDAR frame, so the ego car is not perfectly aligned with its lane. The
ground is a plane with a slight slope in the LiDAR frame; everything stands
on it (pedestrians on the raised sidewalks). No two footprints overlap.

Objects are described by mmdet3d LiDAR boxes ``(x, y, z, l, w, h, yaw)``
(bottom center, yaw counter-clockwise from x); :func:`object_primitives`
builds their shapes strictly inside the box, shrunk by a margin that covers
the sensor's range noise, so every return of an object lies inside its box.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from .raycast import Primitives

#: KITTI's three classes, in mmdet3d's order.
CLASSES = ('Pedestrian', 'Cyclist', 'Car')
#: Shape inset from the box faces (metres): > 3 sigma of the range noise.
SHAPE_MARGIN = 0.06

# (mean, std, min, max) of (length, width, height), KITTI-like statistics
# yapf: disable
_SIZES = {
    'Car': ((3.89, 0.38, 3.2, 4.9), (1.62, 0.09, 1.42, 1.9),
            (1.53, 0.12, 1.3, 1.9)),
    'Pedestrian': ((0.84, 0.18, 0.5, 1.2), (0.66, 0.1, 0.48, 0.95),
                   (1.76, 0.1, 1.5, 2.0)),
    'Cyclist': ((1.76, 0.09, 1.5, 2.0), (0.6, 0.08, 0.45, 0.85),
                (1.74, 0.08, 1.55, 1.95)),
}
# yapf: enable


@dataclass(frozen=True)
class SceneConfig:
    """What a scene holds.

    Args:
        object_density: Multiplies the expected number of cars, pedestrians
            and cyclists (1.0: about 23 cars, 9 pedestrians and 3 cyclists
            in the whole 360 degree scene, most of them in front).
        max_object_x: Objects lie within this distance ahead (KITTI's
            evaluation range is x < 70.4 m) and 40 m behind.
        sensor_height: Height of the LiDAR above the ground under it.
    """
    object_density: float = 1.0
    max_object_x: float = 68.0
    sensor_height: float = 1.73


@dataclass
class SceneObject:
    """A labeled object: class name, LiDAR box and surface reflectivity."""
    name: str
    box: np.ndarray
    reflectivity: float


@dataclass
class Scene:
    """A sampled street scene in the LiDAR frame.

    Attributes:
        ground: ``(c, a, b)`` of the ground plane ``z = c + a x + b y``.
        clutter: Unlabeled primitives (buildings, sidewalks, poles, ...).
        objects: Cars, pedestrians and cyclists.
        heading: Yaw of the street frame in the LiDAR frame (radians).
        dashed_lines: Street-frame y of dashed lane lines.
        solid_lines: Street-frame y of solid road edge lines.
        road_reflectivity: Reflectivity of the asphalt.
    """
    ground: Tuple[float, float, float]
    clutter: Primitives
    objects: List[SceneObject]
    heading: float
    dashed_lines: List[float] = field(default_factory=list)
    solid_lines: List[float] = field(default_factory=list)
    road_reflectivity: float = 0.25


def _rect_corners(x: float, y: float, length: float, width: float,
                  yaw: float) -> np.ndarray:
    cos, sin = np.cos(yaw), np.sin(yaw)
    local = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]
                      ]) * [length / 2, width / 2]
    return local @ np.array([[cos, sin], [-sin, cos]]) + [x, y]


def _overlaps(quad: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Separating-axis test of one convex quad against ``(K, 4, 2)``."""
    if not len(quads):
        return np.zeros(0, bool)
    result = np.ones(len(quads), bool)
    for edges_of in (quad[None], quads):
        edges = np.roll(edges_of, -1, axis=1) - edges_of
        axes = np.stack([-edges[..., 1], edges[..., 0]], -1)  # (K|1, 4, 2)
        axes = np.broadcast_to(axes, (len(quads), 4, 2))
        proj_a = np.einsum('kad,pd->kap', axes, quad)
        proj_b = np.einsum('kad,kpd->kap', axes, quads)
        separated = ((proj_a.max(2) < proj_b.min(2))
                     | (proj_b.max(2) < proj_a.min(2))).any(1)
        result &= ~separated
    return result


class _Layout:
    """Street-frame footprints placed so far."""

    def __init__(self) -> None:
        self.quads: List[np.ndarray] = []

    def place(self, x: float, y: float, length: float, width: float,
              yaw: float, margin: float) -> bool:
        quad = _rect_corners(x, y, length + 2 * margin, width + 2 * margin,
                             yaw)
        if self.quads and _overlaps(quad, np.stack(self.quads)).any():
            return False
        self.quads.append(quad)
        return True


def sample_size(rng: np.random.Generator, name: str) -> np.ndarray:
    """``(length, width, height)`` of a ``name`` object."""
    return np.array([
        np.clip(rng.normal(mean, std), low, high)
        for mean, std, low, high in _SIZES[name]
    ])


class _StreetSampler:
    """Samples one scene; see :func:`sample_scene`."""

    def __init__(self, rng: np.random.Generator, cfg: SceneConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        self.heading = float(rng.uniform(-0.06, 0.06))
        self.cos, self.sin = np.cos(self.heading), np.sin(self.heading)
        self.ground = (-cfg.sensor_height + float(rng.uniform(-0.03, 0.03)),
                       float(rng.uniform(-0.006, 0.006)),
                       float(rng.uniform(-0.006, 0.006)))
        self.layout = _Layout()
        self.clutter = Primitives()
        self.objects: List[SceneObject] = []
        self.curb = float(rng.uniform(0.1, 0.16))

    # --- frames ----------------------------------------------------------
    def to_lidar(self, x: float, y: float) -> Tuple[float, float]:
        return (self.cos * x - self.sin * y, self.sin * x + self.cos * y)

    def ground_z(self, x: float, y: float) -> float:
        """Ground height under street-frame (x, y)."""
        lx, ly = self.to_lidar(x, y)
        c, a, b = self.ground
        return c + a * lx + b * ly

    # --- static parts ----------------------------------------------------
    def add_static_box(self,
                       x: float,
                       y: float,
                       length: float,
                       width: float,
                       z_bottom: float,
                       z_top: float,
                       reflectivity: float,
                       noise: float = 0.0,
                       yaw: float = 0.0) -> None:
        lx, ly = self.to_lidar(x, y)
        self.clutter.add_box((lx, ly, (z_bottom + z_top) / 2),
                             (length, width, z_top - z_bottom),
                             self.heading + yaw,
                             reflectivity=reflectivity,
                             noise=noise)

    def road(self) -> None:
        rng = self.rng
        lanes = int(rng.integers(1, 3))  # per direction
        lane_w = float(rng.uniform(3.2, 3.8))
        ego_lane = int(rng.integers(0, lanes))
        center = (ego_lane + 0.5) * lane_w + float(rng.normal(0, 0.25))
        park_right = lane_w * 0.65 if rng.random() < 0.6 else 0.0
        park_left = lane_w * 0.65 if rng.random() < 0.5 else 0.0
        self.lanes = lanes
        self.lane_w = lane_w
        self.center = center
        self.right_edge = center - lanes * lane_w - park_right
        self.left_edge = center + lanes * lane_w + park_left
        self.park = (park_right, park_left)
        self.dashed = [
            center + k * lane_w for k in range(-lanes + 1, lanes) if k != 0
        ]
        self.solid = [center, center - lanes * lane_w, center + lanes * lane_w]
        self.road_reflectivity = float(rng.uniform(0.2, 0.38))
        self.sidewalk_w = (float(rng.uniform(2.2, 4.5)),
                           float(rng.uniform(2.2, 4.5)))
        if rng.random() < 0.4:
            width = float(rng.uniform(9, 14))
            self.cross = (float(rng.uniform(15, 50)), width)
        else:
            self.cross = None

    def in_cross(self, x0: float, x1: float, pad: float = 0.0) -> bool:
        if self.cross is None:
            return False
        xc, width = self.cross
        return x1 > xc - width / 2 - pad and x0 < xc + width / 2 + pad

    def sidewalk_top(self, x: float, y: float) -> float:
        """Sidewalk surface height at street-frame (x, y): the segment's."""
        seg = 5.0
        xs = (np.floor(x / seg) + 0.5) * seg
        return self.ground_z(xs, y) + self.curb

    def sidewalks(self) -> None:
        rng = self.rng
        refl = float(rng.uniform(0.25, 0.45))
        seg = 5.0
        for side, (edge, width) in enumerate(
            ((self.right_edge, self.sidewalk_w[0]), (self.left_edge,
                                                     self.sidewalk_w[1]))):
            y = edge - width / 2 if side == 0 else edge + width / 2
            for x0 in np.arange(-70.0, 125.0, seg):
                if self.in_cross(x0, x0 + seg):
                    continue
                xs = x0 + seg / 2
                top = self.sidewalk_top(xs, y)
                self.add_static_box(xs, y, seg, width, top - 0.5, top, refl)

    def buildings(self) -> None:
        rng = self.rng
        for side in (0, 1):
            sign = -1 if side == 0 else 1
            edge = self.right_edge if side == 0 else self.left_edge
            face = edge + sign * (
                self.sidewalk_w[side] + float(rng.uniform(0.0, 3.0)))
            x = -70.0 + float(rng.uniform(0, 5))
            while x < 120:
                length = float(rng.uniform(6, 30))
                kind = rng.random()
                if self.in_cross(x, x + length, pad=3.0):
                    # end the block at the cross street, go on after it
                    length = self.cross[0] - self.cross[1] / 2 - 3.0 - x
                    if length < 4.0:
                        x = self.cross[0] + self.cross[1] / 2 + 3.0
                        continue
                if kind < 0.7:
                    depth = float(rng.uniform(6, 14))
                    height = float(rng.uniform(4, 18))
                    setback = float(rng.uniform(0, 1.5))
                elif kind < 0.9:  # a wall or fence
                    depth = float(rng.uniform(0.2, 0.4))
                    height = float(rng.uniform(1.0, 2.5))
                    setback = 0.0
                else:  # an open lot
                    x += length
                    continue
                y = face + sign * (setback + depth / 2)
                base = self.ground_z(x + length / 2, y)
                self.add_static_box(x + length / 2, y, length, depth,
                                    base - 2.0, base + height,
                                    float(rng.uniform(0.1, 0.6)))
                if rng.random() < 0.25:  # a hedge in front
                    hedge_h = float(rng.uniform(0.6, 1.4))
                    hy = face + sign * 0.5
                    top = self.ground_z(x + length / 2, hy)
                    self.add_static_box(
                        x + length / 2,
                        hy,
                        length * 0.8,
                        0.8,
                        top - 0.3,
                        top + hedge_h,
                        float(rng.uniform(0.15, 0.35)),
                        noise=0.05)
                gap = float(rng.uniform(2, 8)) if rng.random() < 0.3 else 0.3
                x += length + gap

    def street_furniture(self) -> None:
        """Poles, trees and small clutter on the sidewalks."""
        rng = self.rng
        for side in (0, 1):
            sign = -1 if side == 0 else 1
            edge = self.right_edge if side == 0 else self.left_edge
            width = self.sidewalk_w[side]
            y_pole = edge + sign * 0.5
            x = -60.0 + float(rng.uniform(0, 20))
            while x < 110:
                if not self.in_cross(x - 1, x + 1):
                    self.pole(x, y_pole)
                x += float(rng.uniform(15, 35))
            if rng.random() < 0.6:
                y_tree = edge + sign * min(1.2, width / 2)
                x = -60.0 + float(rng.uniform(0, 10))
                while x < 110:
                    if not self.in_cross(x - 3, x + 3):
                        self.tree(x, y_tree)
                    x += float(rng.uniform(8, 20))
            for _ in range(int(rng.poisson(6))):
                x = float(rng.uniform(-50, 100))
                y = edge + sign * float(rng.uniform(0.4, width - 0.4))
                if not self.in_cross(x - 1, x + 1):
                    self.small_clutter(x, y)

    def pole(self, x: float, y: float) -> None:
        rng = self.rng
        radius = float(rng.uniform(0.07, 0.15))
        if not self.layout.place(x, y, 2 * radius, 2 * radius, 0.0, 0.1):
            return
        lx, ly = self.to_lidar(x, y)
        base = self.sidewalk_top(x, y)
        self.clutter.add_cylinder(
            lx,
            ly,
            base - 0.2,
            base + float(rng.uniform(3.5, 9)),
            radius,
            reflectivity=float(rng.uniform(0.3, 0.7)))

    def tree(self, x: float, y: float) -> None:
        rng = self.rng
        radius = float(rng.uniform(0.1, 0.25))
        if not self.layout.place(x, y, 0.8, 0.8, 0.0, 0.1):
            return
        lx, ly = self.to_lidar(x, y)
        base = self.sidewalk_top(x, y)
        trunk = float(rng.uniform(2.6, 3.4))
        self.clutter.add_cylinder(
            lx,
            ly,
            base - 0.2,
            base + trunk,
            radius,
            reflectivity=float(rng.uniform(0.2, 0.4)))
        crown_r = float(rng.uniform(1.2, 2.6))
        crown_h = float(rng.uniform(1.0, 2.4))
        self.clutter.add_ellipsoid(
            (lx, ly, base + trunk + crown_h * 0.9),  # >= 2.3 m clearance
            (crown_r, crown_r * float(rng.uniform(0.8, 1.0)), crown_h),
            yaw=float(rng.uniform(0, np.pi)),
            reflectivity=float(rng.uniform(0.15, 0.4)),
            noise=0.08)

    def small_clutter(self, x: float, y: float) -> None:
        """A bin, bollard, bench or sign post."""
        rng = self.rng
        base = self.sidewalk_top(x, y)
        lx, ly = self.to_lidar(x, y)
        if rng.random() < 0.5:
            radius = float(rng.uniform(0.1, 0.35))
            if self.layout.place(x, y, 2 * radius, 2 * radius, 0.0, 0.15):
                self.clutter.add_cylinder(
                    lx,
                    ly,
                    base - 0.1,
                    base + float(rng.uniform(0.5, 1.2)),
                    radius,
                    reflectivity=float(rng.uniform(0.1, 0.6)))
        else:
            length = float(rng.uniform(0.4, 2.0))
            width = float(rng.uniform(0.3, 0.7))
            if self.layout.place(x, y, length, width, 0.0, 0.15):
                self.add_static_box(x, y, length, width, base - 0.1,
                                    base + float(rng.uniform(0.4, 1.1)),
                                    float(rng.uniform(0.1, 0.6)))

    # --- labeled objects ------------------------------------------------
    def inside(self, quad: np.ndarray, sidewalk: int) -> bool:
        """Whether a street-frame footprint lies on the road (``sidewalk``
        -1) or on the right (0) / left (1) sidewalk."""
        xs, ys = quad[:, 0], quad[:, 1]
        pad = 0.1
        if sidewalk < 0:
            if (ys.min() >= self.right_edge + pad
                    and ys.max() <= self.left_edge - pad):
                return True
            if self.cross is None:
                return False
            xc, width = self.cross
            return (xs.min() >= xc - width / 2 + pad
                    and xs.max() <= xc + width / 2 - pad)
        if self.in_cross(xs.min(), xs.max()):
            return False
        if sidewalk == 0:
            low = self.right_edge - self.sidewalk_w[0]
            high = self.right_edge
        else:
            low, high = self.left_edge, self.left_edge + self.sidewalk_w[1]
        return ys.min() >= low + pad and ys.max() <= high - pad

    def add_object(self,
                   name: str,
                   x: float,
                   y: float,
                   yaw: float,
                   sidewalk: int = -1,
                   margin: float = 0.25) -> bool:
        """Place a ``name`` object at street-frame (x, y) on the road
        (``sidewalk`` -1) or on a sidewalk (0 right, 1 left) if it fits."""
        cfg = self.cfg
        lx, ly = self.to_lidar(x, y)
        if lx > cfg.max_object_x or lx < -40 or np.hypot(lx, ly) < 3.5:
            return False
        size = sample_size(self.rng, name)
        if not self.inside(
                _rect_corners(x, y, size[0], size[1], yaw), sidewalk):
            return False
        if not self.layout.place(x, y, size[0], size[1], yaw, margin):
            return False
        z = self.sidewalk_top(x, y) if sidewalk >= 0 else self.ground_z(x, y)
        box = np.array(
            [lx, ly, z, size[0], size[1], size[2], yaw + self.heading])
        refl = (
            float(self.rng.uniform(0.05, 0.6)) if name == 'Car' else float(
                self.rng.uniform(0.1, 0.5)))
        self.objects.append(SceneObject(name, box, refl))
        return True

    def lane_y(self, k: int) -> float:
        """Center of lane ``k`` (0..lanes-1 right side, negative: left)."""
        if k >= 0:
            return self.center - (k + 0.5) * self.lane_w
        return self.center + (-k - 0.5) * self.lane_w

    def cars(self) -> None:
        rng = self.rng
        density = self.cfg.object_density
        for k in list(range(self.lanes)) + [-1 - k for k in range(self.lanes)]:
            yaw = 0.0 if k >= 0 else np.pi
            x = -40.0 + float(rng.uniform(0, 15))
            while x < 75:
                self.add_object(
                    'Car',
                    x,
                    self.lane_y(k) + float(rng.normal(0, 0.3)),
                    yaw + float(rng.normal(0, 0.04)),
                    margin=0.5)
                x += float(rng.uniform(8, 40)) / max(density, 1e-3)
        for side, width in enumerate(self.park):
            if not width:
                continue
            y = (
                self.right_edge + width / 2 if side == 0 else self.left_edge -
                width / 2)
            x = -40.0 + float(rng.uniform(0, 5))
            while x < 75:
                if rng.random() < min(0.55 * density, 0.95):
                    self.add_object(
                        'Car',
                        x,
                        y + float(rng.normal(0, 0.15)),
                        (0.0 if side == 0 else np.pi) +
                        float(rng.normal(0, 0.05)) +
                        (np.pi if rng.random() < 0.15 else 0.0),
                        margin=0.3)
                x += float(rng.uniform(5.0, 7.5))
        if self.cross is not None:
            xc, width = self.cross
            for _ in range(int(rng.poisson(1.5 * density))):
                direction = 1 if rng.random() < 0.5 else -1
                self.add_object(
                    'Car',
                    xc + direction * width / 4 + float(rng.normal(0, 0.3)),
                    float(rng.uniform(-40, 40)),
                    direction * np.pi / 2 + float(rng.normal(0, 0.05)),
                    margin=0.5)

    def pedestrians(self) -> None:
        rng = self.rng
        density = self.cfg.object_density
        for side in (0, 1):
            sign = -1 if side == 0 else 1
            edge = self.right_edge if side == 0 else self.left_edge
            width = self.sidewalk_w[side]
            for _ in range(int(rng.poisson(3.0 * density))):
                x = float(rng.uniform(-25, 55))
                group = 1 + int(rng.poisson(0.5))
                yaw = float(rng.choice([0.0, np.pi])) + float(
                    rng.normal(0, 0.4))
                for member in range(group):
                    y = edge + sign * float(rng.uniform(0.5, width - 0.4))
                    self.add_object(
                        'Pedestrian',
                        x + 1.0 * member,
                        y,
                        yaw + float(rng.normal(0, 0.2)),
                        sidewalk=side,
                        margin=0.1)
        for _ in range(int(rng.poisson(0.8 * density))):  # crossing
            x = float(rng.uniform(6, 45))
            self.add_object(
                'Pedestrian',
                x,
                float(
                    rng.uniform(self.right_edge + 0.5, self.left_edge - 0.5)),
                float(rng.choice([-np.pi / 2, np.pi / 2])) +
                float(rng.normal(0, 0.3)),
                margin=0.15)

    def cyclists(self) -> None:
        rng = self.rng
        density = self.cfg.object_density
        for _ in range(int(rng.poisson(3.5 * density))):
            x = float(rng.uniform(-15, 60))
            if rng.random() < 0.5:
                y, yaw = self.right_edge + self.park[0] + 0.8, 0.0
            else:
                y, yaw = self.left_edge - self.park[1] - 0.8, np.pi
            if rng.random() < 0.2:  # riding in a lane
                y = self.lane_y(int(rng.integers(0, self.lanes)))
                yaw = 0.0
            self.add_object(
                'Cyclist',
                x,
                y + float(rng.normal(0, 0.25)),
                yaw + float(rng.normal(0, 0.12)),
                margin=0.3)

    def sample(self) -> Scene:
        self.road()
        self.sidewalks()
        # keep the ego car's footprint free
        self.layout.place(0.0, 0.0, 4.5, 1.9, 0.0, 0.6)
        self.cyclists()
        self.pedestrians()
        self.cars()
        self.street_furniture()
        self.buildings()
        return Scene(
            ground=self.ground,
            clutter=self.clutter,
            objects=self.objects,
            heading=self.heading,
            dashed_lines=self.dashed,
            solid_lines=self.solid,
            road_reflectivity=self.road_reflectivity)


def sample_scene(rng: np.random.Generator, cfg: SceneConfig) -> Scene:
    """Sample one street scene.

    Args:
        rng: The random generator (the scene depends on nothing else).
        cfg: What the scene holds.

    Returns:
        Scene: Ground plane, clutter primitives and labeled objects.
    """
    return _StreetSampler(rng, cfg).sample()


def object_primitives(prims: Primitives, box: np.ndarray, name: str,
                      owner: int, reflectivity: float,
                      rng: np.random.Generator) -> None:
    """Add the shape of an object inside its LiDAR box ``box``.

    Cars are a body, a shorter cabin and four wheels; pedestrians legs, a
    torso and a head; cyclists two wheels, a frame and a rider. All parts
    stay :data:`SHAPE_MARGIN` inside the box.

    Args:
        prims: Where to add the parts.
        box: ``(x, y, z_bottom, l, w, h, yaw)`` in the LiDAR frame.
        name: 'Car', 'Pedestrian' or 'Cyclist'.
        owner: The object's index.
        reflectivity: Surface reflectivity of the object.
        rng: Random generator for the shape variation.
    """
    x, y, z, length, width, height, yaw = (float(v) for v in box)
    m = SHAPE_MARGIN
    cos, sin = np.cos(yaw), np.sin(yaw)
    inner_l, inner_w, inner_h = length - 2 * m, width - 2 * m, height - m

    def at(u: float, v: float, w: float) -> Tuple[float, float, float]:
        """Box-frame (forward, left, up from the bottom) to LiDAR."""
        return (x + cos * u - sin * v, y + sin * u + cos * v, z + w)

    def part_box(u, v, w_bottom, w_top, size_u, size_v, refl) -> None:
        prims.add_box(
            at(u, v, (w_bottom + w_top) / 2),
            (size_u, size_v, w_top - w_bottom), yaw, owner, refl)

    if name == 'Car':
        clearance = float(np.clip(0.18 * height, 0.15, 0.3))
        belt = float(rng.uniform(0.52, 0.62)) * height
        part_box(0, 0, clearance, belt, inner_l, inner_w, reflectivity)
        cabin_l = inner_l * float(rng.uniform(0.48, 0.6))
        part_box(-0.06 * length, 0, belt - 0.01, inner_h, cabin_l,
                 inner_w - 0.12, reflectivity * 0.6)  # glass returns less
        wheel_l, wheel_w = 0.62, 0.22
        for su in (-1, 1):
            for sv in (-1, 1):
                part_box(su * (inner_l / 2 - 0.55 - wheel_l / 2 + 0.3),
                         sv * (inner_w / 2 - wheel_w / 2), m, clearance + 0.3,
                         wheel_l, wheel_w, 0.08)
    elif name == 'Pedestrian':
        rx, ry = min(inner_l / 2, 0.2), min(inner_w / 2, 0.24)
        part_box(0, 0, m, 0.5 * height, min(inner_l, 0.35), min(inner_w, 0.34),
                 reflectivity)
        prims.add_ellipsoid(
            at(0, 0, 0.64 * height), (rx, ry, 0.19 * height), yaw, owner,
            reflectivity)
        head = min(0.11, rx, ry)
        prims.add_ellipsoid(
            at(0, 0, inner_h - head), (head, head, head), yaw, owner, 0.2)
    else:  # Cyclist
        wheel = min(0.68, inner_h * 0.4)
        thick = min(0.08, inner_w)
        for su in (-1, 1):
            part_box(su * (inner_l / 2 - wheel / 2), 0, m, m + wheel, wheel,
                     thick, 0.15)
        part_box(0, 0, m + wheel * 0.6, m + wheel * 0.6 + 0.08,
                 inner_l - wheel, thick, 0.4)
        seat = m + wheel + 0.2
        part_box(0, 0, 0.35, seat, 0.3, min(inner_w, 0.3), reflectivity)
        rx, ry = min(inner_l / 2, 0.22), min(inner_w / 2, 0.22)
        torso_h = (inner_h - seat - 0.2) / 2
        prims.add_ellipsoid(
            at(-0.05 * length, 0, seat + torso_h), (rx, ry, torso_h), yaw,
            owner, reflectivity)
        head = min(0.11, rx, ry)
        prims.add_ellipsoid(
            at(0.05, 0, inner_h - head), (head, head, head), yaw, owner, 0.2)
