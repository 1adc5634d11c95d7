"""The same config, checkpoint and frames give identical allocations and
masks with 1 and 2 threads (so the curve cache key need not hold the thread
count)."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import QUICK_CENTERPOINT, REPO

CHANNEL_CENTERPOINT = osp.join(REPO, 'configs', 'centerpoint',
                               'rd-channel_centerpoint_voxel02-quick_nus.py')
WEIGHT_OPTIONS = [
    'pruner.num_levels=4', 'pruner.budget=0.4',
    'pruner.targets.include=[pts_middle_encoder.encoder_layers.'
    'encoder_layer1,pts_neck,task_heads.0.heatmap,task_heads.0.reg]'
]
CHANNEL_OPTIONS = [
    'pruner.num_levels=4', 'pruner.budget=0.5',
    r'pruner.targets.include=[pts_neck,shared_conv,task_heads\.0\.]'
]


def _start(config, options, work_dir, threads):
    os.makedirs(work_dir)
    with open(osp.join(work_dir, 'output.log'), 'w') as log:
        return subprocess.Popen([
            sys.executable,
            osp.join(REPO, 'tools', 'prune.py'), config, '--work-dir',
            work_dir, '--device', 'cpu', '--cfg-options', *options
        ],
                                cwd=REPO,
                                stdout=log,
                                stderr=subprocess.STDOUT,
                                env=dict(os.environ,
                                         OMP_NUM_THREADS=str(threads)))


def _outputs(process, work_dir):
    if process.wait() != 0:
        with open(osp.join(work_dir, 'output.log')) as log:
            pytest.fail(log.read()[-2000:])
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    state = torch.load(osp.join(work_dir, 'pruned.pth'),
                       weights_only=True)['state_dict']
    return report, state


@pytest.mark.parametrize('config, options', [
    (QUICK_CENTERPOINT, WEIGHT_OPTIONS),
    (CHANNEL_CENTERPOINT, CHANNEL_OPTIONS),
], ids=['weights', 'channels'])
def test_one_and_two_threads_choose_the_same_masks(tmp_path, config,
                                                   options):
    # both at once: the thread counts differ, not what else runs
    runs = {
        threads: _start(config, options, str(tmp_path / str(threads)), threads)
        for threads in (1, 2)
    }
    one, one_state = _outputs(runs[1], str(tmp_path / '1'))
    two, two_state = _outputs(runs[2], str(tmp_path / '2'))
    assert [(layer['name'], layer['level']) for layer in one['layers']] == \
        [(layer['name'], layer['level']) for layer in two['layers']]
    assert any(layer['level'] > 0 for layer in one['layers'])
    for layer in one['layers']:
        key = f'{layer["name"]}.weight'
        assert torch.equal(one_state[key] != 0, two_state[key] != 0), key
