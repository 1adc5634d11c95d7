import importlib.util
import os.path as osp

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
LIDAR = osp.join(osp.dirname(REPO), 'shared', 'data', 'lidar')
NUSCENES_FRAME = osp.join(
    LIDAR, 'n015-2018-07-24-11-22-45+0800__LIDAR_TOP__1532402927647951'
    '.pcd.bin')
PV_RCNN = osp.join(REPO, 'configs', 'pv_rcnn',
                   'rd-weight_pv_rcnn_kitti-3d-3class.py')
DYNAMIC_POINTPILLARS = osp.join(
    REPO, 'configs', 'dynamic_voxelization',
    'rd-weight_pointpillars_dv_secfpn_kitti-3d-car.py')
QUICK_CENTERPOINT = osp.join(
    REPO, 'configs', 'centerpoint',
    'rd-weight_centerpoint_voxel02-quick_nus.py')


@pytest.fixture(autouse=True)
def run_from_repo_root(monkeypatch):
    """Configs name data paths relative to the repo root, as users run."""
    monkeypatch.chdir(REPO)


def load_tool(name):
    """Import ``tools/<name>.py`` (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
