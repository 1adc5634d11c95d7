"""A run of tools/prune.py killed (SIGKILL) in the middle of the curves
loses nothing: the rerun measures no finished unit again, its outputs equal
those of an uninterrupted run, and no partial file sits under an output's
name."""
import glob
import json
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import torch

from conftest import QUICK_CENTERPOINT, REPO

OPTIONS = [
    'pruner.num_levels=3', 'pruner.budget=0.4',
    'pruner.targets.include=[pts_neck,task_heads.0.]'
]
OUTPUTS = ('pruned.pth', 'allocation.json', 'config.py', 'curves.png',
           'allocation.png')


def _command(work_dir):
    return [
        sys.executable, osp.join(REPO, 'tools', 'prune.py'),
        QUICK_CENTERPOINT, '--work-dir', work_dir, '--device', 'cpu',
        '--cfg-options', *OPTIONS
    ]


def _cached_units(work_dir):
    paths = glob.glob(osp.join(work_dir, 'curves', 'curves-*.json'))
    if not paths:
        return {}
    with open(paths[0]) as f:  # always whole: written by rename
        return json.load(f)['curves']


def _outputs(work_dir):
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    state = torch.load(osp.join(work_dir, 'pruned.pth'),
                       weights_only=True)['state_dict']
    return report, state


def test_killed_in_the_curves_resumes_where_it_stopped(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    whole = str(tmp_path / 'whole')
    # the uninterrupted run, on the other core meanwhile
    uninterrupted = subprocess.Popen(_command(whole),
                                     cwd=REPO,
                                     env=env,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
    num_units = 14  # pts_neck's 2 deconvs, 12 convs of the first task

    killed = str(tmp_path / 'killed')
    process = subprocess.Popen(_command(killed), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(_cached_units(killed)) < 2 and process.poll() is None:
        assert time.monotonic() < deadline, 'no curve was cached'
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = _cached_units(killed)
    assert 2 <= len(done) < num_units, 'killed too late to test a resume'
    left = os.listdir(killed)
    assert not set(OUTPUTS) & set(left), left
    assert uninterrupted.wait() == 0
    assert len(_cached_units(whole)) == num_units

    rerun = subprocess.run(_command(killed), check=True, cwd=REPO, env=env,
                           capture_output=True, text=True)
    log = rerun.stdout + rerun.stderr
    assert f'{len(done)} of {num_units} layers loaded from' in log
    for name, curve in done.items():  # finished units were not redone
        assert _cached_units(killed)[name] == curve
    report, state = _outputs(killed)
    whole_report, whole_state = _outputs(whole)
    assert report['layers'] == whole_report['layers']
    assert report['totals'] == whole_report['totals']
    assert state.keys() == whole_state.keys()
    for key, tensor in whole_state.items():
        assert torch.equal(state[key], tensor), key
