"""Checkpoints are read with torch's weights-only unpickler: mmengine's
Runner checkpoints through the safe globals of :mod:`rdprune_mm.checkpoint`,
pruned checkpoints with no allowed globals at all, anything else refused
with one line."""
import collections
import os.path as osp
import pickle

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS
from mmengine.runner.checkpoint import CheckpointLoader
from torch import nn

from rdprune_mm.apis import read_checkpoint, save_pruned_checkpoint
from rdprune_mm.checkpoint import (MMENGINE_SAFE_GLOBALS, TRUSTED_PREFIX,
                                   checkpoint_misfit, history_buffer_method,
                                   mmengine_safe_globals, plain_meta)
from rdprune_mm.errors import PruningInputError
from rdprune_mm.finetune import finetune_config, train_with_runner


@MODELS.register_module(name='RDPruneCheckpointToy', force=True)
class Toy(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.norm = nn.BatchNorm1d(1)

    def forward(self, x, mode='tensor'):
        out = self.norm(self.linear(torch.stack(x)))
        if mode == 'loss':
            return dict(loss=(out - 1).pow(2).mean())
        return out


@DATASETS.register_module(name='RDPruneCheckpointToyData', force=True)
class ToyData(torch.utils.data.Dataset):
    # as mmdet3d's KittiDataset: a numpy string among the category keys
    metainfo = dict(
        classes=('Car', 'Pedestrian'),
        palette=[(1, 2, 3)],
        categories={
            'Car': 0,
            np.str_('DontCare'): -1
        })

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return dict(x=torch.full((2, ), float(index)))


def toy_config(work_dir, **overrides):
    """A Runner config like the shipped ones: AdamW, cosine learning rate
    and momentum schedules, checkpoints every 2 iterations."""
    cfg = Config(
        dict(
            model=dict(type='RDPruneCheckpointToy'),
            work_dir=str(work_dir),
            train_dataloader=dict(
                dataset=dict(type='RDPruneCheckpointToyData'),
                sampler=dict(type='DefaultSampler', shuffle=True),
                batch_size=2,
                num_workers=0),
            optim_wrapper=dict(
                optimizer=dict(type='AdamW', lr=0.01, betas=(0.95, 0.99))),
            param_scheduler=[
                dict(type='CosineAnnealingLR', T_max=4, by_epoch=False),
                dict(type='CosineAnnealingMomentum', T_max=4,
                     by_epoch=False),
            ],
            train_cfg=dict(by_epoch=False, max_iters=2),
            default_hooks=dict(
                checkpoint=dict(
                    type='CheckpointHook', interval=2, by_epoch=False)),
            randomness=dict(seed=0)))
    cfg.merge_from_dict(overrides)
    return cfg


@pytest.fixture(scope='module')
def runner_checkpoint(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('toy')
    train_with_runner(toy_config(work_dir))
    return osp.join(work_dir, 'iter_2.pth')


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b) and a.dtype == b.dtype
    if isinstance(a, HistoryBuffer):
        return _same(vars(a), vars(b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(
            _same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_runner_checkpoint_needs_exactly_the_safe_globals(runner_checkpoint):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(runner_checkpoint, weights_only=True)
    needed = set(
        torch.serialization.get_unsafe_globals_in_checkpoint(
            runner_checkpoint))
    listed = {
        item[1] if isinstance(item, tuple) else
        f'{item.__module__}.{item.__qualname__}'
        for item in MMENGINE_SAFE_GLOBALS
    }
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in needed
    assert needed <= listed
    loaded = read_checkpoint(runner_checkpoint)
    assert _same(loaded, torch.load(runner_checkpoint, weights_only=False))
    assert isinstance(loaded['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)


def test_resume_through_mmengine_loading(runner_checkpoint, tmp_path):
    runner = train_with_runner(
        toy_config(tmp_path, load_from=runner_checkpoint, resume=True,
                   train_cfg=dict(max_iters=4)))
    assert runner.iter == 4
    assert runner.message_hub.get_scalar('train/loss').data[0].size == 4


def test_safe_globals_are_reentrant_and_removed_after():
    before = set(torch.serialization.get_safe_globals())
    with mmengine_safe_globals():
        with mmengine_safe_globals():
            pass
        assert HistoryBuffer in torch.serialization.get_safe_globals()
    assert set(torch.serialization.get_safe_globals()) == before


def test_getattr_stand_in_resolves_only_history_buffer_statistics():
    assert history_buffer_method(HistoryBuffer, 'mean') is HistoryBuffer.mean
    for owner, name in ((HistoryBuffer, '__init__'),
                        (HistoryBuffer, '__class__'), (osp, 'join')):
        with pytest.raises(pickle.UnpicklingError):
            history_buffer_method(owner, name)


class Arbitrary:
    pass


@pytest.mark.parametrize('payload', [Arbitrary(), collections.deque([1])])
def test_other_objects_are_a_one_line_error(tmp_path, payload):
    path = str(tmp_path / 'unsafe.pth')
    torch.save(dict(state_dict={}, extra=payload), path)
    with pytest.raises(PruningInputError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert '\n' not in message
    assert path in message and type(payload).__qualname__ in message
    assert '--trust-checkpoint' in message and 'trusted://' in message


def test_runner_refuses_an_unsafe_load_from(tmp_path):
    path = str(tmp_path / 'unsafe.pth')
    torch.save(dict(state_dict=Toy().state_dict(), extra=Arbitrary()), path)
    with pytest.raises(PruningInputError, match='unsafe.pth holds the '
                       r'Python object test_checkpoint\.Arbitrary'):
        train_with_runner(toy_config(tmp_path / 'work', load_from=path))


def test_pruned_checkpoint_meta_is_plain(tmp_path):
    meta = dict(
        ordered=collections.OrderedDict(a=np.float64(0.5)),
        categories={np.str_('DontCare'): -1},
        array=np.arange(3),
        nested=[(np.int64(2), 'x')],
        dtype=np.dtype('float32'),
        tensor=torch.ones(2))
    path = str(tmp_path / 'pruned.pth')
    save_pruned_checkpoint(nn.Linear(2, 1), path, meta)
    loaded = torch.load(path)  # torch's default: weights_only=True
    assert loaded['meta'] == dict(
        ordered=dict(a=0.5), categories={'DontCare': -1}, array=[0, 1, 2],
        nested=[(2, 'x')],
        dtype="dtype('float32')", tensor=loaded['meta']['tensor'])
    assert type(loaded['meta']['ordered']['a']) is float
    assert type(next(iter(loaded['meta']['categories']))) is str
    assert torch.equal(loaded['meta']['tensor'], torch.ones(2))
    assert plain_meta(meta)['nested'][0][0] == 2


def test_resume_continues_the_latest_checkpoint_not_the_dense_one(tmp_path):
    cfg = Config(dict(pruner=dict(type='RDWeightPruner')))
    fresh = finetune_config(cfg, str(tmp_path), 'dense.pth', resume=True)
    assert (fresh.load_from, fresh.resume) == ('dense.pth', False)
    (tmp_path / 'iter_2.pth').write_bytes(b'')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    resumed = finetune_config(cfg, str(tmp_path), 'dense.pth', resume=True)
    assert (resumed.load_from, resumed.resume) == (
        str(tmp_path / 'iter_2.pth'), True)


class RunsCode:
    """Unpickling it runs code: it writes ``marker``, as an attacker's
    payload would do anything else."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").write("ran")', )


def crafted_checkpoint(tmp_path, state_dict):
    """A checkpoint whose unpickling writes ``tmp_path/code-ran``."""
    marker = tmp_path / 'code-ran'
    path = str(tmp_path / 'crafted.pth')
    torch.save(dict(state_dict=state_dict, extra=RunsCode(str(marker))), path)
    return path, marker


def test_a_crafted_checkpoint_runs_no_code_unless_trusted(tmp_path):
    path, marker = crafted_checkpoint(tmp_path, Toy().state_dict())
    with pytest.raises(PruningInputError, match='the Python object exec,'):
        read_checkpoint(path)
    with pytest.raises(PruningInputError, match='--trust-checkpoint'):
        train_with_runner(toy_config(tmp_path / 'work', load_from=path))
    assert not marker.exists()
    # trusted: that one file is unpickled in full, and its code runs
    loaded = read_checkpoint(path, trust=True)
    assert marker.read_text() == 'ran'
    assert set(loaded['state_dict']) == set(Toy().state_dict())


def test_a_trusted_load_from_reaches_the_runner(tmp_path):
    toy = Toy()
    with torch.no_grad():
        toy.linear.weight.fill_(3.0)
    path, marker = crafted_checkpoint(tmp_path, toy.state_dict())
    cfg = finetune_config(
        Config(dict(pruner=dict(type='RDWeightPruner'))),
        str(tmp_path / 'work'), path, trust_checkpoint=True)
    assert cfg.load_from == TRUSTED_PREFIX + path
    loaded = CheckpointLoader.load_checkpoint(cfg.load_from)
    assert marker.exists()
    assert torch.equal(loaded['state_dict']['linear.weight'],
                       torch.full((1, 2), 3.0))
    # resuming takes the work dir's own checkpoint, never the trusted one
    (tmp_path / 'work').mkdir()
    (tmp_path / 'work' / 'last_checkpoint').write_text(path + '.latest')
    (tmp_path / 'work' / 'crafted.pth.latest').write_bytes(b'')
    resumed = finetune_config(
        Config(dict(pruner=dict(type='RDWeightPruner'))),
        str(tmp_path / 'work'), path, resume=True, trust_checkpoint=True)
    assert resumed.load_from == path + '.latest'


def _other_shapes(state):
    state = dict(state)
    state['linear.weight'] = torch.zeros(3, 2)
    return state


@pytest.mark.parametrize('change, expected', [
    (lambda s: {k: v for k, v in s.items() if k != 'linear.bias'},
     '1 missing keys (e.g. linear.bias)'),
    (lambda s: dict(s, extra=torch.zeros(1)),
     '1 unexpected keys (e.g. extra)'),
    (_other_shapes, 'linear.weight: 3x2 in the checkpoint, 1x2 in the model'),
])
def test_finetuning_refuses_a_checkpoint_that_does_not_fit(
        tmp_path, change, expected):
    path = str(tmp_path / 'other.pth')
    torch.save(dict(state_dict=change(Toy().state_dict())), path)
    assert expected in checkpoint_misfit(Toy().state_dict(),
                                         torch.load(path))
    cfg = toy_config(tmp_path / 'work', load_from=path,
                     custom_hooks=[dict(type='RDPruneHook')])
    with pytest.raises(PruningInputError) as error:
        train_with_runner(cfg)
    message = str(error.value)
    assert '\n' not in message
    assert 'does not fit' in message and expected in message
    assert 'strict_load=False' in message
    assert not list((tmp_path / 'work').glob('*.pth'))


def test_a_wrapped_model_checkpoint_fits():
    state = {f'module.{k}': v for k, v in Toy().state_dict().items()}
    assert checkpoint_misfit(Toy().state_dict(), dict(state_dict=state)) == ''
