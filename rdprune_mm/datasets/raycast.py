"""Ray casting of a spinning multi-beam LiDAR against simple primitives.

The sensor sits at the origin of the LiDAR frame (x forward, y left, z up)
and fires one ray per (beam, azimuth step). A ray returns the nearest hit
among a ground plane and a set of primitives:

* oriented boxes (slab test in the box frame),
* ellipsoids with a yaw (a unit sphere after scaling the box frame),
* vertical cylinders with a top cap.

All rays share the origin, so a primitive needs one transformed origin and
its rays' transformed directions. Each primitive tests only the rays of the
beams and azimuth columns that its bounding sphere covers, so the cost
follows the primitives' angular footprints rather than rays x primitives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

BOX, ELLIPSOID, CYLINDER = 0, 1, 2
#: ``hit`` value of rays that return from the ground plane / nothing.
GROUND, NO_HIT = -1, -2


def hdl64e_elevations() -> np.ndarray:
    """Elevation angles (degrees, descending) of a Velodyne HDL-64E.

    The upper block's 32 lasers span +2.0 to -8.33 degrees at about 1/3
    degree, the lower block's 32 lasers -8.83 to -24.8 degrees at about 1/2
    degree.
    """
    return np.concatenate(
        [np.linspace(2.0, -8.33, 32),
         np.linspace(-8.83, -24.8, 32)])


@dataclass
class BeamGrid:
    """The rays of one sweep: ``elevations x azimuths``, row-major.

    Args:
        elevations_deg: Beam elevation angles in degrees.
        azimuth_res_deg: Azimuth step in degrees.
        azimuth_offset: Azimuth of column 0 in radians (the sweep's phase).
    """
    elevations_deg: np.ndarray
    azimuth_res_deg: float
    azimuth_offset: float = 0.0
    elevations: np.ndarray = field(init=False)
    step: float = field(init=False)
    num_az: int = field(init=False)
    directions: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.elevations = np.radians(np.asarray(self.elevations_deg, float))
        self.num_az = int(round(360.0 / self.azimuth_res_deg))
        self.step = 2 * np.pi / self.num_az
        azimuths = self.azimuth_offset + self.step * np.arange(self.num_az)
        cos_el = np.cos(self.elevations)[:, None]
        self.directions = np.stack([
            cos_el * np.cos(azimuths)[None], cos_el * np.sin(azimuths)[None],
            np.broadcast_to(
                np.sin(self.elevations)[:, None], cos_el.shape[:1] +
                (self.num_az, ))
        ], -1).reshape(-1, 3)

    @property
    def num_rays(self) -> int:
        return len(self.directions)

    def rays_in_cone(self, center: np.ndarray, radius: float) -> np.ndarray:
        """Indices of the rays that can reach a sphere (center, radius)."""
        dist = float(np.linalg.norm(center))
        dist_xy = float(np.hypot(center[0], center[1]))
        if dist <= radius * 1.001 or dist_xy <= radius * 1.001:
            return np.arange(self.num_rays)
        half_el = np.arcsin(radius / dist)
        el_c = np.arctan2(center[2], dist_xy)
        rows = np.nonzero((self.elevations >= el_c - half_el)
                          & (self.elevations <= el_c + half_el))[0]
        if not len(rows):
            return rows
        half_az = np.arcsin(radius / dist_xy)
        az_c = np.arctan2(center[1], center[0]) - self.azimuth_offset
        first = int(np.floor((az_c - half_az) / self.step))
        last = int(np.ceil((az_c + half_az) / self.step))
        cols = np.arange(first, last + 1) % self.num_az
        if len(cols) > self.num_az:
            cols = np.arange(self.num_az)
        return (rows[:, None] * self.num_az + cols[None]).reshape(-1)


@dataclass
class Primitives:
    """Scene primitives in the LiDAR frame, built with the ``add_*`` calls.

    Each primitive has an owner (an object index, or -1 for unlabeled
    clutter), a reflectivity in [0, 1] and a range noise (metres, standard
    deviation; 0 means the sensor's).
    """
    kind: List[int] = field(default_factory=list)
    center: List[Sequence[float]] = field(default_factory=list)
    half: List[Sequence[float]] = field(default_factory=list)
    yaw: List[float] = field(default_factory=list)
    owner: List[int] = field(default_factory=list)
    reflectivity: List[float] = field(default_factory=list)
    noise: List[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kind)

    def _add(self, kind: int, center, half, yaw: float, owner: int,
             reflectivity: float, noise: float) -> None:
        self.kind.append(kind)
        self.center.append(tuple(float(v) for v in center))
        self.half.append(tuple(float(v) for v in half))
        self.yaw.append(float(yaw))
        self.owner.append(int(owner))
        self.reflectivity.append(float(reflectivity))
        self.noise.append(float(noise))

    def add_box(self,
                center: Sequence[float],
                size: Sequence[float],
                yaw: float = 0.0,
                owner: int = -1,
                reflectivity: float = 0.3,
                noise: float = 0.0) -> None:
        """An oriented box: geometric center, full (x, y, z) size, yaw."""
        self._add(BOX, center,
                  np.asarray(size, float) / 2, yaw, owner, reflectivity, noise)

    def add_ellipsoid(self,
                      center: Sequence[float],
                      radii: Sequence[float],
                      yaw: float = 0.0,
                      owner: int = -1,
                      reflectivity: float = 0.3,
                      noise: float = 0.0) -> None:
        """An ellipsoid: center, semi-axes along the yawed x, y and z."""
        self._add(ELLIPSOID, center, radii, yaw, owner, reflectivity, noise)

    def add_cylinder(self,
                     x: float,
                     y: float,
                     z_bottom: float,
                     z_top: float,
                     radius: float,
                     owner: int = -1,
                     reflectivity: float = 0.3,
                     noise: float = 0.0) -> None:
        """A vertical cylinder from ``z_bottom`` to ``z_top``."""
        self._add(CYLINDER, ((x, y, (z_bottom + z_top) / 2)),
                  (radius, radius, (z_top - z_bottom) / 2), 0.0, owner,
                  reflectivity, noise)

    def bounding_radius(self, index: int) -> float:
        half = np.asarray(self.half[index])
        if self.kind[index] == ELLIPSOID:
            return float(half.max())
        if self.kind[index] == CYLINDER:
            return float(np.hypot(half[0], half[2]))
        return float(np.linalg.norm(half))


def _to_local(center: np.ndarray, yaw: float,
              dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The sensor origin and ray directions in a yawed primitive frame."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    rot_t = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    return rot_t @ -center, dirs @ rot_t.T


def intersect_box(center: np.ndarray, half: np.ndarray, yaw: float,
                  dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Entry distance (inf: miss) and cosine of incidence for a box."""
    origin, local = _to_local(center, yaw, dirs)
    local = np.where(np.abs(local) < 1e-12, 1e-12, local)
    inv = 1.0 / local
    t1 = (-half - origin) * inv
    t2 = (half - origin) * inv
    t_min = np.minimum(t1, t2)
    t_near = t_min.max(1)
    t_far = np.maximum(t1, t2).min(1)
    hit = (t_near <= t_far) & (t_near > 0)
    axis = t_min.argmax(1)
    cos = np.abs(local[np.arange(len(local)), axis])
    return np.where(hit, t_near, np.inf), cos


def intersect_ellipsoid(center: np.ndarray, radii: np.ndarray, yaw: float,
                        dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Entry distance (inf: miss) and cosine of incidence, ellipsoid."""
    origin, local = _to_local(center, yaw, dirs)
    origin_s, local_s = origin / radii, local / radii
    a = (local_s * local_s).sum(1)
    b = 2 * local_s @ origin_s
    c = origin_s @ origin_s - 1.0
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t = (-b - root) / (2 * a)
    hit = (disc > 0) & (t > 0)
    normal = (origin_s[None] + t[:, None] * local_s) / radii
    norm = np.linalg.norm(normal, axis=1)
    cos = np.abs((normal * local).sum(1)) / np.maximum(norm, 1e-12)
    return np.where(hit, t, np.inf), cos


def intersect_cylinder(center: np.ndarray, half: np.ndarray,
                       dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Entry distance (inf: miss) and cosine of incidence for a vertical
    cylinder, its side or its top cap."""
    radius, z_bottom, z_top = half[0], center[2] - half[2], center[2] + half[2]
    ox, oy = -center[0], -center[1]
    dx, dy, dz = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    a = np.maximum(dx * dx + dy * dy, 1e-12)
    b = 2 * (ox * dx + oy * dy)
    c = ox * ox + oy * oy - radius * radius
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    t_side = (-b - root) / (2 * a)
    z_side = t_side * dz
    side = (disc > 0) & (t_side > 0) & (z_side >= z_bottom) & (z_side <= z_top)
    t_cap = z_top / np.where(dz < -1e-12, dz, -1e-12)
    cap_x, cap_y = ox + t_cap * dx, oy + t_cap * dy
    cap = ((disc > 0) & (z_side > z_top) & (dz < -1e-12) & (t_cap > 0)
           & (cap_x * cap_x + cap_y * cap_y <= radius * radius))
    cos_side = np.abs((ox + t_side * dx) * dx +
                      (oy + t_side * dy) * dy) / radius
    t = np.where(side, t_side, np.where(cap, t_cap, np.inf))
    return t, np.where(side, cos_side, np.abs(dz))


@dataclass
class RayHits:
    """What each ray of a sweep returned.

    Attributes:
        t: Distance to the nearest hit (inf: no return).
        hit: Index of the primitive hit, :data:`GROUND` or :data:`NO_HIT`.
        cos: Cosine of the incidence angle at the hit.
        alone: For every owner >= 0, the rays its primitives intersect when
            nothing else is in the scene (the unoccluded footprint).
    """
    t: np.ndarray
    hit: np.ndarray
    cos: np.ndarray
    alone: Dict[int, np.ndarray]


def cast_rays(grid: BeamGrid,
              prims: Primitives,
              ground: Optional[Tuple[float, float, float]] = None) -> RayHits:
    """Nearest hit of every ray of ``grid``.

    Args:
        grid: The sweep's rays.
        prims: The scene primitives.
        ground: ``(c, a, b)`` of the ground plane ``z = c + a x + b y``
            (c < 0: the sensor is above it), or None for no ground.

    Returns:
        RayHits: Per-ray distance, primitive and incidence.
    """
    dirs = grid.directions
    num = len(dirs)
    t_best = np.full(num, np.inf)
    hit = np.full(num, NO_HIT, dtype=np.int64)
    cos = np.zeros(num)
    if ground is not None:
        c, a, b = ground
        denom = dirs[:, 2] - a * dirs[:, 0] - b * dirs[:, 1]
        t_ground = c / np.where(denom < -1e-9, denom, -1e-9)
        down = denom < -1e-9
        t_best[down] = t_ground[down]
        hit[down] = GROUND
        normal = np.array([-a, -b, 1.0]) / np.sqrt(a * a + b * b + 1)
        cos[down] = np.abs(dirs[down] @ normal)
    alone: Dict[int, List[np.ndarray]] = {}
    for index in range(len(prims)):
        center = np.asarray(prims.center[index])
        half = np.asarray(prims.half[index])
        rays = grid.rays_in_cone(center, prims.bounding_radius(index))
        if not len(rays):
            continue
        sub = dirs[rays]
        kind = prims.kind[index]
        if kind == BOX:
            t, c_inc = intersect_box(center, half, prims.yaw[index], sub)
        elif kind == ELLIPSOID:
            t, c_inc = intersect_ellipsoid(center, half, prims.yaw[index], sub)
        else:
            t, c_inc = intersect_cylinder(center, half, sub)
        owner = prims.owner[index]
        if owner >= 0:
            alone.setdefault(owner, []).append(rays[np.isfinite(t)])
        closer = t < t_best[rays]
        rays, t, c_inc = rays[closer], t[closer], c_inc[closer]
        t_best[rays] = t
        hit[rays] = index
        cos[rays] = c_inc
    return RayHits(
        t=t_best,
        hit=hit,
        cos=cos,
        alone={
            owner: np.unique(np.concatenate(parts))
            for owner, parts in alone.items()
        })
