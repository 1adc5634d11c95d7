"""tools/prune.py end to end on the reduced CenterPoint and the real
nuScenes frame, and its one-line errors for bad input."""
import glob
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from conftest import (NUSCENES_FRAME, QUICK_CENTERPOINT,
                      assert_same_outputs_without_plugin, load_tool)
from rdprune_mm.apis import build_detector
from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.targets import find_targets

prune_tool = load_tool('prune')

# the sparse encoder's first stage, the neck (deconvs) and one task head
INCLUDE = ('pruner.targets.include=[pts_middle_encoder.conv_input,'
           'pts_middle_encoder.encoder_layers.encoder_layer1,pts_neck,'
           'task_heads.0.]')
FAST = ['pruner.num_levels=5', INCLUDE]


@pytest.fixture(scope='module')
def pruned_run(tmp_path_factory):
    work_dir = str(tmp_path_factory.mktemp('prune'))
    argv = [QUICK_CENTERPOINT, '--work-dir', work_dir, '--cfg-options',
            'pruner.budget=0.4', *FAST]
    assert prune_tool.main(argv) == 0
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    return work_dir, report, argv


def test_budget_met_and_report_consistent(pruned_run):
    work_dir, report, _ = pruned_run
    layers = report['layers']
    kinds = {layer['kind'] for layer in layers}
    assert {'spconv', 'conv', 'deconv'} <= kinds
    # counted again from the saved checkpoint and the curve cache
    state = torch.load(osp.join(work_dir, 'pruned.pth'),
                       weights_only=True)['state_dict']
    weights = [state[f'{layer["name"]}.weight'] for layer in layers]
    before = sum(w.numel() for w in weights)
    after = sum(int((w != 0).sum()) for w in weights)
    assert after <= 0.4 * before
    assert report['budget']['achieved'] == pytest.approx(after / before)
    assert report['totals']['params_after'] == after
    assert report['totals']['unpruned_distortion'] == 0.0
    cache, = glob.glob(osp.join(work_dir, 'curves', 'curves-*.json'))
    with open(cache) as f:
        curves = json.load(f)['curves']
    assert report['totals']['predicted_distortion'] == pytest.approx(
        sum(curves[layer['name']][layer['level']] for layer in layers))
    assert report['totals']['measured_distortion'] > 0
    for layer, weight in zip(layers, weights):
        assert layer['sparsity'] == pytest.approx(
            1 - int((weight != 0).sum()) / weight.numel())
        assert layer['sparsity'] == pytest.approx(
            report['levels'][layer['level']], abs=1 / layer['params_before'])


def _head_outputs(model):
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    batches = calibration_batches(cfg, model, dict(frames=[NUSCENES_FRAME]))
    return HeadOutputs(model)(batches[0])


def test_checkpoint_reloads_with_pruned_weights_and_equal_outputs(
        pruned_run):
    work_dir, report, _ = pruned_run
    ckpt = osp.join(work_dir, 'pruned.pth')
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    dense, _ = build_detector(cfg)
    recalibrate_batchnorm(dense,
                          calibration_batches(cfg, dense, cfg.calibration))
    pruned, meta = build_detector(cfg, checkpoint=ckpt)
    assert meta['rdprune_mm']['budget'] == 0.4
    zeros = {t.name: int((t.weight == 0).sum()) for t in find_targets(pruned)}
    for layer in report['layers']:
        assert zeros[layer['name']] >= (layer['params_before'] -
                                        layer['params_after'])
    # the dense model (same seed, same BatchNorm statistics) differs only
    # where the masks pruned
    for (name, a), (_, b) in zip(dense.state_dict().items(),
                                 pruned.state_dict().items()):
        changed = a != b
        assert (b[changed] == 0).all(), name

    with torch.no_grad():
        reloaded = _head_outputs(pruned)
    assert_same_outputs_without_plugin(
        QUICK_CENTERPOINT, ckpt, NUSCENES_FRAME, reloaded,
        osp.join(work_dir, 'outputs_without_plugin.pth'))


def test_existing_outputs_are_not_overwritten(pruned_run, capsys):
    work_dir, _, argv = pruned_run
    stamp = osp.getmtime(osp.join(work_dir, 'pruned.pth'))
    assert prune_tool.main(argv) == 2
    assert '--overwrite' in capsys.readouterr().err
    assert osp.getmtime(osp.join(work_dir, 'pruned.pth')) == stamp


def test_rerun_reuses_curve_cache(pruned_run, capsys):
    work_dir, report, argv = pruned_run
    assert prune_tool.main([*argv, '--overwrite']) == 0
    log = capsys.readouterr().out
    assert 'loaded from' in log and 'measuring' not in log
    with open(osp.join(work_dir, 'allocation.json')) as f:
        again = json.load(f)
    assert again['layers'] == report['layers']


def _error_of(argv, capsys):
    assert prune_tool.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines()
              if line.startswith('prune.py: error: ')]
    assert len(errors) == 1 and 'Traceback' not in err
    return errors[0]


@pytest.mark.parametrize('options, expected', [
    (['pruner.budget=0'], 'outside (0, 1]'),
    (['pruner.budget=1.5'], 'outside (0, 1]'),
    (['pruner.budget=0.1', 'pruner.min_keep=0.5'], 'least that'),
    (['pruner.targets.include=[no_such_layer]'], 'select no prunable'),
    (['calibration.num_samples=0'], 'calibration'),
    (['calibration.dataset.ann_file=missing.pkl'], 'does not exist'),
    (['calibration.frames=[missing.bin]'], 'not found'),
])
def test_bad_config_values(options, expected, tmp_path, capsys):
    argv = [QUICK_CENTERPOINT, '--work-dir', str(tmp_path), '--cfg-options',
            *FAST, *options]
    assert expected in _error_of(argv, capsys)


def test_missing_config(tmp_path, capsys):
    assert 'does not exist' in _error_of([str(tmp_path / 'nope.py')], capsys)


def test_missing_checkpoint(tmp_path, capsys):
    argv = [QUICK_CENTERPOINT, '--checkpoint', str(tmp_path / 'nope.pth')]
    assert 'does not exist' in _error_of(argv, capsys)


def test_checkpoint_that_does_not_fit(tmp_path, capsys):
    ckpt = str(tmp_path / 'other.pth')
    torch.save({'state_dict': torch.nn.Linear(2, 2).state_dict()}, ckpt)
    argv = [QUICK_CENTERPOINT, '--checkpoint', ckpt, '--work-dir',
            str(tmp_path)]
    err = _error_of(argv, capsys)
    assert 'does not fit' in err and 'missing keys' in err


def test_finetuning_without_its_training_data(tmp_path):
    # the quick CenterPoint config trains on nuScenes, which is not here; a
    # process of its own: the Runner's logger outlives the call
    done = subprocess.run(
        [sys.executable, 'tools/prune.py', QUICK_CENTERPOINT, '--finetune',
         '--work-dir', str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and 'Traceback' not in done.stderr
    errors = [line for line in done.stderr.splitlines()
              if line.startswith('prune.py: error: ')]
    assert len(errors) == 1
    assert 'nuscenes_dbinfos_train.pkl does not exist' in errors[0]
    assert 'data_root' in errors[0]


@pytest.mark.parametrize('finetune', [False, True])
def test_a_checkpoint_that_would_run_code_is_refused(finetune, tmp_path,
                                                     capsys):
    """Its unpickling would write a marker file: refused with the flag
    named, and nothing ran; with ``--trust-checkpoint`` that file is
    unpickled in full (and then found not to fit this config's model)."""
    from test_checkpoint import crafted_checkpoint
    ckpt, marker = crafted_checkpoint(tmp_path,
                                      torch.nn.Linear(2, 2).state_dict())
    argv = [QUICK_CENTERPOINT, '--checkpoint', ckpt, '--work-dir',
            str(tmp_path / 'work'), *(['--finetune'] if finetune else [])]
    err = _error_of(argv, capsys)
    assert 'the Python object exec' in err and '--trust-checkpoint' in err
    assert not marker.exists()
    if not finetune:
        assert 'does not fit' in _error_of(argv + ['--trust-checkpoint'],
                                           capsys)
        assert marker.read_text() == 'ran'
    assert not glob.glob(str(tmp_path / 'work' / '**' / '*.pth'),
                         recursive=True)
