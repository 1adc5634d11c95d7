"""Channel pruning fine-tuned in RDPruneHook on mmdet3d's PointPillars:
the model is slimmed before training, the optimizer and the EMA copy train
the slim parameters, every checkpoint is slim with its structure, resume
and load_from rebuild it, and mmdet3d's test path reloads it through the
written slim_config.py."""
import copy
import json
import os.path as osp
import pickle

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import EMAHook, Hook
from mmengine.runner import Runner

from conftest import LIDAR, REPO
from rdprune_mm.apis import read_checkpoint
from rdprune_mm.checkpoint import mmengine_safe_globals
from rdprune_mm.errors import PruningInputError
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.hooks import CHECKPOINT_KEY, RDPruneHook
from rdprune_mm.pruners import RDChannelPruner

CONFIG = osp.join(REPO, 'tests', 'configs',
                  'finetune_channel_pointpillars_one_frame.py')
FRAME_INFOS = osp.join(LIDAR, '000008.pkl')
KITTI_CATEGORIES = {'Pedestrian': 0, 'Cyclist': 1, 'Car': 2, 'DontCare': -1}


def _prune_hook(runner):
    return next(h for h in runner.hooks if isinstance(h, RDPruneHook))


def _ema(runner):
    return next(h for h in runner.hooks if isinstance(h, EMAHook))


def _runner(work_dir, **overrides):
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(overrides)
    return Runner.from_cfg(cfg)


class _SlimmedWeights(Hook):
    """Records the model right after slimming (the first iteration)."""

    priority = 'LOWEST'

    def __init__(self):
        self.start = None
        self.iters = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.start is None:
            self.start = copy.deepcopy(runner.model.state_dict())
        self.iters.append(runner.iter)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('channel_finetune')
    runner = _runner(work_dir)
    dense = {k: v.shape for k, v in runner.model.state_dict().items()}
    record = _SlimmedWeights()
    runner.register_hook(record, priority='LOWEST')
    runner.train()
    return work_dir, runner, dense, record


def test_the_slim_model_is_what_trains(trained):
    _, runner, dense, record = trained
    model = runner.model
    slim = {k: v.shape for k, v in model.state_dict().items()}
    assert sorted(slim) == sorted(dense)
    smaller = [k for k in slim if slim[k].numel() < dense[k].numel()]
    groups = _prune_hook(runner).structure['groups']
    assert groups, 'the allocation pruned no channel group'
    for name, group in groups.items():
        assert slim[f'{name}.weight'][0] == len(group['keep']) < dense[
            f'{name}.weight'][0], name
    params = {id(p) for p in model.parameters() if p.requires_grad}
    held = {
        id(p)
        for g in runner.optim_wrapper.optimizer.param_groups
        for p in g['params']
    }
    assert held == params, 'the optimizer holds parameters the model lost'
    moved = [
        k for k in smaller
        if not torch.equal(model.state_dict()[k], record.start[k])
    ]
    assert moved, 'the slimmed layers did not train'
    ema = _ema(runner).ema_model.module.state_dict()
    assert {k: v.shape for k, v in ema.items()} == slim
    assert record.iters == [0, 1, 2, 3]


def test_checkpoints_are_slim_and_hold_their_structure(trained):
    work_dir, runner, _, _ = trained
    hook = _prune_hook(runner)
    with open(osp.join(work_dir, 'structure.json')) as f:
        structure = json.load(f)
    assert structure == hook.structure and structure['groups']
    shapes = {k: v.shape for k, v in runner.model.state_dict().items()}
    for name in ('iter_2.pth', 'iter_4.pth'):
        state = read_checkpoint(osp.join(work_dir, name))
        assert state[CHECKPOINT_KEY]['channel_structure'] == structure
        assert len(state[CHECKPOINT_KEY]['history']) == 1
        assert {k: v.shape for k, v in state['state_dict'].items()} == shapes


def test_mmdet3d_test_path_reloads_the_slim_checkpoint(trained, tmp_path):
    """mmdet3d's tools/test.py: Runner.from_cfg(slim_config.py) with
    load_from, then runner.test() with KittiMetric; the loaded model is the
    trained one (the checkpoint holds the EMA weights)."""
    work_dir, runner, _, _ = trained
    cfg = Config.fromfile(osp.join(work_dir, 'slim_config.py'))
    assert cfg.model.type == 'SlimDetector'
    assert not [h for h in cfg.custom_hooks if 'RDPruneHook' in h['type']]
    base = Config.fromfile(
        osp.join(osp.dirname(__import__('mmdet3d').__file__), '.mim',
                 'configs', 'pointpillars',
                 'pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py'))
    cfg.test_dataloader = base.test_dataloader
    infos = _metric_infos(tmp_path)
    cfg.test_dataloader.dataset.update(data_root=LIDAR + '/',
                                       ann_file=infos,
                                       data_prefix=dict(pts='', img=''))
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.test_evaluator = dict(type='KittiMetric',
                              ann_file=infos,
                              metric='bbox')
    cfg.test_cfg = dict(type='TestLoop')
    cfg.work_dir = str(tmp_path)
    cfg.load_from = osp.join(work_dir, 'iter_4.pth')
    tester = Runner.from_cfg(cfg)
    with mmengine_safe_globals():
        metrics = tester.test()
    assert any('Car' in key for key in metrics)
    saved = read_checkpoint(cfg.load_from)['state_dict']
    loaded = tester.model.state_dict()
    for key, value in saved.items():
        assert torch.equal(loaded[key].cpu(), value.cpu()), key
    trained_ema = _ema(runner).ema_model.module
    batch = next(iter(tester.test_dataloader))
    batch = tester.model.data_preprocessor(batch, False)
    with torch.no_grad():
        reloaded = HeadOutputs(tester.model.eval())(batch)
        expected = HeadOutputs(trained_ema.eval())(batch)
    for key, tensor in expected.items():
        torch.testing.assert_close(reloaded[key], tensor)


def _metric_infos(tmp_path):
    """The frame's infos with the KITTI categories and sample index that
    KittiMetric reads (the shared file has neither)."""
    with open(FRAME_INFOS, 'rb') as f:
        infos = pickle.load(f)
    infos['metainfo'] = dict(infos['metainfo'], categories=KITTI_CATEGORIES)
    for index, info in enumerate(infos['data_list']):
        info['sample_idx'] = index
    path = str(tmp_path / 'infos.pkl')
    with open(path, 'wb') as f:
        pickle.dump(infos, f)
    return path


@pytest.fixture
def no_calibration(monkeypatch):

    def refuse(*args, **kwargs):
        raise AssertionError('pruned again instead of restoring the slim '
                             'structure')

    monkeypatch.setattr(RDChannelPruner, 'prune', refuse)


def test_resume_rebuilds_the_slim_model_and_its_optimizer_state(
        trained, tmp_path, no_calibration):
    work_dir, runner, _, _ = trained
    resumed = _runner(tmp_path,
                      resume=True,
                      load_from=osp.join(work_dir, 'iter_2.pth'))
    record = _SlimmedWeights()
    resumed.register_hook(record, priority='LOWEST')
    with mmengine_safe_globals():
        resumed.train()
    assert record.iters == [2, 3]
    saved = read_checkpoint(osp.join(work_dir, 'iter_2.pth'))
    for key, value in saved['state_dict'].items():
        assert record.start[key].shape == value.shape, key
    state = resumed.optim_wrapper.optimizer.state
    momenta = [
        s['momentum_buffer'] for s in state.values()
        if s.get('momentum_buffer') is not None
    ]
    assert momenta, 'the optimizer state was not resumed'
    params = {id(p) for p in resumed.model.parameters()}
    assert all(id(p) in params for p in state)
    assert _prune_hook(resumed).structure == _prune_hook(runner).structure


def test_load_from_slim_checkpoint_does_not_prune_again(
        trained, tmp_path, no_calibration):
    work_dir, runner, _, _ = trained
    fresh = _runner(tmp_path,
                    load_from=osp.join(work_dir, 'iter_4.pth'),
                    train_cfg=dict(max_iters=1))
    with mmengine_safe_globals():
        fresh.train()
    assert _prune_hook(fresh).structure == _prune_hook(runner).structure


def test_channel_pruner_takes_one_round_before_training():
    with pytest.raises(PruningInputError, match='one round'):
        RDPruneHook(pruner=dict(type='RDChannelPruner'),
                    rounds=[dict(at=0, budget=0.7),
                            dict(at=5, budget=0.5)])
