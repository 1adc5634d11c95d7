"""Built-in datasets: simulated LiDAR street scenes in KITTI's layout.

:func:`write_kitti_like_dataset` writes frames of a spinning 64-beam LiDAR
(ray cast against streets with cars, pedestrians, cyclists and clutter)
with KITTI labels and calibration; :func:`create_kitti_infos` runs
mmdet3d's own KITTI converter on them (info files, reduced point clouds and
the ground-truth database for ``ObjectSample``).
"""
from .raycast import BeamGrid, Primitives, cast_rays, hdl64e_elevations
from .scene import CLASSES, SceneConfig, sample_scene
from .synthetic_kitti import (IMAGE_SIZE, Calibration, Frame, Label,
                              LidarConfig, scan_scene, simulate_frame)
from .writer import (DatasetDirError, create_kitti_infos, dataset_summary,
                     frame_rng, infos_exist, write_kitti_like_dataset)

__all__ = [
    'write_kitti_like_dataset', 'create_kitti_infos', 'infos_exist',
    'dataset_summary', 'DatasetDirError', 'frame_rng', 'simulate_frame',
    'scan_scene', 'Frame', 'Label', 'Calibration', 'LidarConfig',
    'SceneConfig', 'sample_scene', 'CLASSES', 'IMAGE_SIZE', 'BeamGrid',
    'Primitives', 'cast_rays', 'hdl64e_elevations'
]
