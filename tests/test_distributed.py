"""Pruning on two CPU processes (gloo), as torchrun starts them: the same
allocation and masks as one process, resume from a partial cache and shards,
an error on one rank stopping every rank, the one-line message outside
torchrun, and RDPruneHook under DDP in mmengine's Runner."""
import copy
import glob
import json
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import QUICK_CENTERPOINT, REPO, load_tool

prune_tool = load_tool('prune')

WORKER = osp.join(REPO, 'tests', 'dist_worker.py')
HOOK_CONFIG = osp.join(REPO, 'tests', 'configs',
                       'finetune_pointpillars_one_frame.py')
CHANNEL_HOOK_CONFIG = osp.join(REPO, 'tests', 'configs',
                               'finetune_channel_pointpillars_one_frame.py')
# the first sparse conv and one task head (11 layers), 2 levels: 22 passes
OPTIONS = ['--cfg-options', 'pruner.budget=0.5', 'pruner.num_levels=3',
           'pruner.targets.include=[pts_middle_encoder.conv_input,'
           'task_heads.0.]']


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def start_ranks(mode, out_dir, argv=(), world_size=2):
    """Start ``tests/dist_worker.py`` once per rank with torchrun's
    environment; :func:`collect_ranks` waits for them."""
    os.makedirs(out_dir, exist_ok=True)
    port = str(_free_port())
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(
                       world_size), MASTER_ADDR='127.0.0.1',
                   MASTER_PORT=port, OMP_NUM_THREADS='1',
                   PYTHONPATH=REPO)
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, mode, str(out_dir), '--', *argv],
            cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    return out_dir, procs


def collect_ranks(started, timeout=240):
    """Per rank of :func:`start_ranks`: its record, stdout and stderr."""
    out_dir, procs = started
    ranks = []
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=timeout)
        with open(osp.join(out_dir, f'rank{rank}.json')) as f:
            record = json.load(f)
        assert proc.returncode == record['rc'], err[-2000:]
        ranks.append(dict(record, out=out, err=err))
    return ranks


def run_ranks(mode, out_dir, argv=(), world_size=2, timeout=240):
    """:func:`start_ranks`, then :func:`collect_ranks`."""
    return collect_ranks(start_ranks(mode, out_dir, argv, world_size), timeout)


def alone_and_on_two(mode, out_dir, argv_alone=(), argv_two=()):
    """One process and two ranks of ``mode`` side by side (one thread
    each); returns the one process's record and the two ranks'."""
    alone = start_ranks(mode, out_dir / 'one', argv_alone, world_size=1)
    two = run_ranks(mode, out_dir / 'two', argv_two)
    one, = collect_ranks(alone)
    return one, two


def _report(work_dir):
    with open(osp.join(work_dir, 'allocation.json')) as f:
        return json.load(f)


def _state(work_dir):
    return torch.load(osp.join(work_dir, 'pruned.pth'),
                      weights_only=True)['state_dict']


def _assert_same_run(work_dir, reference):
    report, expected = _report(work_dir), _report(reference)
    assert report['layers'] == expected['layers']
    assert report['totals'] == expected['totals']
    state, dense = _state(work_dir), _state(reference)
    assert sorted(state) == sorted(dense)
    for name, tensor in dense.items():
        assert torch.equal(state[name], tensor), name


@pytest.fixture(scope='module')
def single_run(tmp_path_factory):
    """One process, in this process, with one thread as the ranks."""
    work_dir = str(tmp_path_factory.mktemp('one'))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert prune_tool.main(
            [QUICK_CENTERPOINT, '--work-dir', work_dir, *OPTIONS]) == 0
    finally:
        torch.set_num_threads(threads)
    return work_dir


@pytest.fixture(scope='module')
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp('two')
    work_dir = str(root / 'work')
    ranks = run_ranks('prune', root / 'records', [
        QUICK_CENTERPOINT, '--work-dir', work_dir, '--launcher', 'pytorch',
        *OPTIONS
    ])
    return work_dir, ranks


def test_two_processes_give_the_allocation_and_masks_of_one(
        single_run, two_ranks):
    work_dir, ranks = two_ranks
    assert [r['rc'] for r in ranks] == [0, 0]
    _assert_same_run(work_dir, single_run)
    # the same cache file, same curves; no shard left behind
    one, = glob.glob(osp.join(single_run, 'curves', 'curves-*.json'))
    two, = glob.glob(osp.join(work_dir, 'curves', '*.json'))
    assert osp.basename(one) == osp.basename(two)
    with open(one) as f1, open(two) as f2:
        assert json.load(f1) == json.load(f2)
    # the ranks measured half each; only rank 0 wrote (one log file)
    count = len(_report(work_dir)['layers'])
    assert (f'measuring {count} layers ({(count + 1) // 2} on rank 0 of 2)'
            in ranks[0]['out'])
    assert len(glob.glob(osp.join(work_dir, '*.log'))) == 1


def test_rerun_on_two_processes_resumes_from_cache_and_shards(
        single_run, two_ranks, tmp_path):
    work_dir, _ = two_ranks
    cache_file, = glob.glob(osp.join(work_dir, 'curves', 'curves-*.json'))
    with open(cache_file) as f:
        stored = json.load(f)
    names = list(stored['curves'])
    assert len(names) > 6
    # an interrupted run: 2 curves in the cache, 2 in a shard of a run on
    # other ranks, the rest to measure
    kept = {n: stored['curves'][n] for n in names[:2]}
    shard = {n: stored['curves'][n] for n in names[2:4]}
    with open(cache_file, 'w') as f:
        json.dump(dict(key=stored['key'], curves=kept), f)
    with open(cache_file[:-len('.json')] + '.rank5.json', 'w') as f:
        json.dump(dict(key=stored['key'], curves=shard), f)
    ranks = run_ranks('prune', tmp_path, [
        QUICK_CENTERPOINT, '--work-dir', work_dir, '--launcher', 'pytorch',
        '--overwrite', *OPTIONS
    ])
    assert [r['rc'] for r in ranks] == [0, 0]
    log = ranks[0]['out'] + ranks[0]['err']
    assert f'4 of {len(names)} layers loaded' in log
    assert f'measuring {len(names) - 4} layers' in log
    assert glob.glob(osp.join(work_dir, 'curves', '*.json')) == [cache_file]
    with open(cache_file) as f:
        assert json.load(f)['curves'] == stored['curves']
    _assert_same_run(work_dir, single_run)


@pytest.mark.parametrize('stage, message', [
    ('prepare', "calibration frame(s) not found: ['missing.bin']; fix "
     'calibration.frames'),
    ('curves', 'RuntimeError: reading a frame failed'),
])
def test_error_on_rank_1_stops_every_rank(stage, message, tmp_path):
    work_dir = str(tmp_path / 'work')
    ranks = run_ranks(f'fail-{stage}', tmp_path / 'records', [
        QUICK_CENTERPOINT, '--work-dir', work_dir, '--launcher', 'pytorch',
        *OPTIONS
    ])
    for record in ranks:
        assert record['rc'] == 2
        errors = [line for line in record['err'].splitlines()
                  if line.startswith('prune.py: error: ')]
        assert errors == [f'prune.py: error: {message} (raised on rank 1)']
    assert not osp.exists(osp.join(work_dir, 'pruned.pth'))


def test_launcher_outside_torchrun_is_one_line(monkeypatch, capsys):
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR',
                'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    assert prune_tool.main([QUICK_CENTERPOINT, '--launcher', 'pytorch']) == 2
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    line, = err.strip().splitlines()
    assert line.startswith('prune.py: error: --launcher pytorch needs')
    assert 'torchrun' in line and 'drop --launcher' in line


def test_ranks_with_other_masks_are_refused(tmp_path):
    ranks = run_ranks('masks-differ', tmp_path)
    for record in ranks:
        assert record['rc'] == 2
        assert record['error'].startswith(
            'rank 1 has other RDPruneHook masks than rank 0')


def _two_frame_hook_config(tmp_path):
    """``HOOK_CONFIG`` calibrating on two frames (the KITTI frame and a
    copy of it mirrored in y) and pruning three layers: few enough units
    that the curves split each pass's two frames across two ranks."""
    lidar = osp.join(REPO, '..', 'shared', 'data', 'lidar')
    points = np.fromfile(osp.join(lidar, '000008.bin'),
                         dtype=np.float32).reshape(-1, 4)
    mirrored = points * np.array([1, -1, 1, 1], dtype=np.float32)
    mirrored.tofile(tmp_path / 'mirrored.bin')
    with open(osp.join(lidar, '000008.pkl'), 'rb') as f:
        infos = pickle.load(f)
    second = copy.deepcopy(infos['data_list'][0])
    second['lidar_points']['lidar_path'] = str(tmp_path / 'mirrored.bin')
    infos['data_list'].append(second)
    with open(tmp_path / 'two_frames.pkl', 'wb') as f:
        pickle.dump(infos, f)
    config = tmp_path / 'hook_two_frames.py'
    config.write_text(f"""_base_ = [{HOOK_CONFIG!r}]
custom_hooks = [
    dict(type='EMAHook', ema_type='mmdet.ExpMomentumEMA', momentum=0.1),
    dict(type='RDPruneHook',
         pruner=dict(type='RDWeightPruner', budget=0.5, num_levels=3,
                     targets=dict(include=[
                         r'backbone.blocks.0.0$', r'neck.deblocks.0.0$',
                         r'bbox_head.conv_reg'])),
         calibration=dict(
             dataloader='train_dataloader', num_samples=2,
             skip_transforms=('RandomFlip3D', ),
             dataset=dict(ann_file={str(tmp_path / 'two_frames.pkl')!r})))
]
""")
    return str(config)


def test_hook_under_ddp_keeps_masks_equal_and_held(tmp_path):
    """Two ranks split each curve pass's two calibration frames and end
    with the masks one process chooses, held through DDP's steps; one
    process resumes their checkpoint with those masks."""
    config = _two_frame_hook_config(tmp_path)
    work_dir = str(tmp_path / 'work')
    argv = [
        config, '--finetune', '--launcher', 'pytorch', '--cfg-options',
        'train_cfg.max_iters=2'
    ]
    one, ranks = alone_and_on_two(
        'finetune', tmp_path / 'records',
        [*argv, '--work-dir', str(tmp_path / 'alone')],
        [*argv, '--work-dir', work_dir])
    assert [one['rc']] + [r['rc'] for r in ranks] == [0, 0, 0]
    assert ('the 2 calibration frames of each split across 2 ranks '
            '(1 on rank 0)') in ranks[0]['out'] + ranks[0]['err']
    assert ranks[0]['iters'][0]['masks'] == one['iters'][0]['masks']
    first, second = (r['iters'] for r in ranks)
    assert [i['iter'] for i in first] == [i['iter'] for i in second] == [
        0, 1
    ]
    for a, b in zip(first, second):
        assert a['zeros_held'] and b['zeros_held']
        assert a['pruned'] > 0
        assert a['masks'] == b['masks']
        # DDP averaged the gradients: both ranks hold the same weights
        assert a['weights'] == b['weights']
    # the masks went into the checkpoint that rank 0 saved
    from rdprune_mm.apis import read_checkpoint
    from rdprune_mm.hooks import CHECKPOINT_KEY
    saved = read_checkpoint(osp.join(work_dir, 'iter_2.pth'))
    masks = saved[CHECKPOINT_KEY]['masks']
    assert sum(int((~m).sum()) for m in masks.values()) == first[0]['pruned']
    for name, mask in masks.items():
        assert (saved['state_dict'][f'{name}.weight'][~mask] == 0).all()
    # resumed on one process: the two ranks' masks, not pruned again
    resumed, = run_ranks(
        'finetune',
        tmp_path / 'resumed', [
            config, '--finetune', '--launcher', 'pytorch', '--resume',
            '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_iters=3'
        ],
        world_size=1)
    assert resumed['rc'] == 0
    assert 'not pruning them again' in resumed['out'] + resumed['err']
    (step, ) = resumed['iters']
    assert step['iter'] == 2 and step['zeros_held']
    assert step['masks'] == first[-1]['masks']


def test_hook_slims_the_ddp_model_and_ddp_syncs_the_slim_weights(tmp_path):
    """Channel pruning under DDP: the slimmed module is wrapped again, so
    the ranks, whose augmentations differ (diff_rank_seed), still hold the
    same slim weights after every step."""
    work_dir = str(tmp_path / 'work')
    ranks = run_ranks('finetune', tmp_path / 'records', [
        CHANNEL_HOOK_CONFIG, '--finetune', '--work-dir', work_dir,
        '--launcher', 'pytorch', '--cfg-options', 'train_cfg.max_iters=2',
        'randomness.diff_rank_seed=True'
    ])
    assert [r['rc'] for r in ranks] == [0, 0]
    first, second = (r['iters'] for r in ranks)
    assert [i['iter'] for i in first] == [i['iter'] for i in second] == [0, 1]
    from rdprune_mm.apis import read_checkpoint
    saved = read_checkpoint(osp.join(work_dir, 'iter_2.pth'))['state_dict']
    slim_params = sum(v.numel() for k, v in saved.items()
                      if 'running' not in k and 'num_batches' not in k)
    for a, b in zip(first, second):
        assert a['wrapper'] == b['wrapper'] == 'MMDistributedDataParallel'
        assert a['params'] == b['params'] == slim_params
        # (BatchNorm statistics follow each rank's own frames)
        assert a['parameters'] == b['parameters']


def test_sketch_split_across_ranks_equals_one_process(tmp_path):
    """Each rank sketches its share of the frames; the gathered rows are
    those of one process, in frame order."""
    one, two = alone_and_on_two('sketch', tmp_path)
    assert one['sketched'] == [0, 1, 2]
    assert [r['sketched'] for r in two] == [[0, 2], [1]]
    assert two[0]['rows'] == two[1]['rows'] == one['rows']
    assert two[0]['row_samples'] == one['row_samples'] == \
        [0] * 4 + [1] * 4 + [2] * 4


def test_frames_of_each_pass_split_across_ranks_equal_one_process(tmp_path):
    one, two = alone_and_on_two('curves', tmp_path)
    assert [one['rc']] + [r['rc'] for r in two] == [0, 0, 0]
    # 3 layers x 3 levels: 4 frames a pass alone, 2 on each rank
    assert one['ran'] == [0, 1, 2, 3] * 9
    assert two[0]['ran'] == [0, 2] * 9 and two[1]['ran'] == [1, 3] * 9
    assert two[0]['curves'] == one['curves'] == two[1]['curves']
    assert ('the 4 calibration frames of each split across 2 ranks '
            '(2 on rank 0)') in two[0]['out'] + two[0]['err']
    # rank 0 wrote the cache as one process does, and left no shard
    cache, = glob.glob(str(tmp_path / 'two' / 'cache' / '*.json'))
    with open(cache) as f:
        assert json.load(f)['curves'] == two[0]['curves']
