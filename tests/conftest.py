import importlib.util
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

import rdprune_mm.cpu  # noqa: F401  (the tests run on CPU)

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
#: PV-RCNN with fewer keypoints and proposals than shipped (2048, 100): the
#: same code in a third of the time.
SMALL_PV_RCNN = {
    'model.points_encoder.num_keypoints': 512,
    'model.test_cfg.rpn.nms_post': 32,
    'model.test_cfg.rpn.max_num': 32
}


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


def assert_same_outputs_without_plugin(config, checkpoint, frame, outputs,
                                       out_file, runner_checkpoint=False):
    """Load ``checkpoint`` with mmdet3d alone (a subprocess that never
    imports rdprune_mm) and check its head outputs on ``frame`` against
    ``outputs``. A ``runner_checkpoint`` (mmengine's Runner saved it) is
    loaded with mmengine's safe globals."""
    env = {k: v for k, v in os.environ.items()
           if k != 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'}
    subprocess.run([
        sys.executable,
        osp.join(REPO, 'tests', 'load_without_plugin.py'), config,
        checkpoint, frame, out_file, *(['--runner'] if runner_checkpoint
                                       else [])
    ], check=True, cwd=REPO, env=dict(env, OMP_NUM_THREADS='1'))
    without_plugin = torch.load(out_file)
    assert without_plugin.pop('rdprune_mm imported') is False
    assert sorted(without_plugin) == sorted(outputs)
    for name, tensor in outputs.items():
        torch.testing.assert_close(
            without_plugin[name], tensor, rtol=1e-4, atol=1e-5)
