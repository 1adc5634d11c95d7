"""RDPruneHook in mmengine training: masks held at every step (gradient
accumulation, momentum, weight decay, EMA), checkpoints, resume, load_from,
iterative rounds, and a checkpoint that loads without the plugin."""
import os.path as osp
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import EMAHook, Hook
from mmengine.runner import Runner

from conftest import (LIDAR, REPO, assert_same_outputs_without_plugin,
                      load_tool)
from rdprune_mm.apis import build_detector, read_checkpoint
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.checkpoint import mmengine_safe_globals
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.hooks import CHECKPOINT_KEY, RDPruneHook
from rdprune_mm.pruners import RDWeightPruner

CONFIG = osp.join(REPO, 'tests', 'configs',
                  'finetune_pointpillars_one_frame.py')
FRAME = osp.join(LIDAR, '000008.bin')


class MaskCheck(Hook):
    """After every iteration: pruned weights are zero in the model and in
    the EMA copy; records the kept weights' values."""

    priority = 'LOWEST'

    def __init__(self):
        self.checked_iters = []
        self.start = None

    def _weights(self, runner, model):
        modules = dict(model.named_modules())
        return {n: modules[n].weight.detach().clone()
                for n in self._prune_hook(runner).masks}

    @staticmethod
    def _prune_hook(runner):
        return next(h for h in runner.hooks if isinstance(h, RDPruneHook))

    def before_train(self, runner):
        self.start_masks = dict(self._prune_hook(runner).masks)
        self.start = self._weights(runner, runner.model)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        masks = self._prune_hook(runner).masks
        ema = next(h for h in runner.hooks if isinstance(h, EMAHook))
        for model in (runner.model, ema.ema_model.module):
            for name, weight in self._weights(runner, model).items():
                assert (weight[~masks[name]] == 0).all(), (runner.iter, name)
        self.checked_iters.append(runner.iter)


def _runner(work_dir, **overrides):
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = str(work_dir)
    cfg.merge_from_dict(overrides)
    runner = Runner.from_cfg(cfg)
    check = MaskCheck()
    runner.register_hook(check)
    return runner, check


@pytest.fixture(scope='module')
def finetuned(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('finetune')
    runner, check = _runner(work_dir)
    runner.train()
    return work_dir, runner, check


def test_masks_hold_through_accumulation_momentum_and_ema(finetuned):
    _, runner, check = finetuned
    assert check.checked_iters == [0, 1, 2, 3]
    hook = MaskCheck._prune_hook(runner)
    assert hook.rounds_done == 1 and hook.masks
    assert any((~mask).any() for mask in hook.masks.values())
    end = check._weights(runner, runner.model)
    moved = [
        name for name, mask in hook.masks.items()
        if not torch.equal(end[name][mask], check.start[name][mask])
    ]
    assert moved, 'the kept weights did not train'
    hub = runner.message_hub
    assert hub.get_scalar('train/rdprune/budget_achieved').current() == \
        pytest.approx(hook.history[0]['budget_achieved'])
    assert any(key.startswith('train/rdprune/sparsity/')
               for key in hub.log_scalars)


def test_every_checkpoint_holds_the_masks(finetuned):
    work_dir, runner, _ = finetuned
    hook = MaskCheck._prune_hook(runner)
    for name in ('iter_2.pth', 'iter_4.pth'):
        state = read_checkpoint(osp.join(work_dir, name))
        saved = state[CHECKPOINT_KEY]
        assert len(saved['history']) == 1
        for layer, mask in hook.masks.items():
            assert torch.equal(saved['masks'][layer], mask.cpu())
            assert (state['state_dict'][f'{layer}.weight'][~mask] == 0).all()


@pytest.fixture
def no_calibration(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('pruned again instead of restoring the masks')

    monkeypatch.setattr(RDWeightPruner, 'prune', refuse)


def test_resume_restores_masks_without_calibrating(finetuned, tmp_path,
                                                   no_calibration):
    work_dir, runner, _ = finetuned
    saved = read_checkpoint(osp.join(work_dir, 'iter_2.pth'))[CHECKPOINT_KEY]
    resumed, check = _runner(
        tmp_path, resume=True, load_from=osp.join(work_dir, 'iter_2.pth'))
    with mmengine_safe_globals():
        resumed.train()
    assert check.checked_iters == [2, 3]
    hook = MaskCheck._prune_hook(resumed)
    assert hook.rounds_done == 1
    for layer, mask in saved['masks'].items():
        assert torch.equal(hook.masks[layer].cpu(), mask)


def test_load_from_pruned_checkpoint_does_not_prune_twice(
        finetuned, tmp_path, no_calibration):
    work_dir, runner, _ = finetuned
    fresh, check = _runner(
        tmp_path, load_from=osp.join(work_dir, 'iter_4.pth'),
        train_cfg=dict(max_iters=1))
    with mmengine_safe_globals():
        fresh.train()
    assert check.checked_iters == [0]
    for layer, mask in MaskCheck._prune_hook(runner).masks.items():
        assert torch.equal(check.start_masks[layer].cpu(), mask.cpu())


def test_two_rounds_only_add_pruning(tmp_path):
    rounds = [dict(at=0, budget=0.6), dict(at=2, budget=0.36)]
    cfg = Config.fromfile(CONFIG)
    hooks = cfg.custom_hooks
    hooks[1]['rounds'] = rounds
    runner, check = _runner(tmp_path, custom_hooks=hooks)
    runner.train()
    hook = MaskCheck._prune_hook(runner)
    assert [r['at'] for r in hook.history] == [0, 2]
    assert hook.history[0]['budget_achieved'] <= 0.6
    assert hook.history[1]['budget_achieved'] <= 0.36
    for layer, first in check.start_masks.items():
        assert not (hook.masks[layer] & ~first).any(), f'{layer} regrew'
    assert sum(int(m.sum()) for m in hook.masks.values()) < sum(
        int(m.sum()) for m in check.start_masks.values())
    assert check.checked_iters == [0, 1, 2, 3]


def test_final_checkpoint_loads_without_plugin(finetuned):
    work_dir, _, _ = finetuned
    ckpt = osp.join(work_dir, 'iter_4.pth')
    detector = osp.join(
        osp.dirname(__import__('mmdet3d').__file__), '.mim', 'configs',
        'pointpillars', 'pointpillars_hv_secfpn_8xb6-160e_kitti-3d-car.py')
    cfg = Config.fromfile(detector)
    model, _ = build_detector(cfg, checkpoint=ckpt)
    batch = calibration_batches(cfg, model, dict(frames=[FRAME]))[0]
    with torch.no_grad():
        with_plugin = HeadOutputs(model)(batch)
    assert_same_outputs_without_plugin(
        detector, ckpt, FRAME, with_plugin,
        osp.join(work_dir, 'outputs_without_plugin.pth'),
        runner_checkpoint=True)


def test_prune_tool_finetune_and_resume(tmp_path, monkeypatch):
    prune_tool = load_tool('prune')
    argv = [CONFIG, '--finetune', '--work-dir', str(tmp_path),
            '--cfg-options', 'train_cfg.max_iters=2']
    assert prune_tool.main(argv) == 0
    assert osp.isfile(osp.join(tmp_path, 'iter_2.pth'))
    assert prune_tool.main(argv) == 2  # would overwrite the checkpoints
    monkeypatch.setattr(RDWeightPruner, 'prune', None)  # must not run
    resume = [*argv[:-1], 'train_cfg.max_iters=4', '--resume']
    assert prune_tool.main(resume) == 0
    assert osp.isfile(osp.join(tmp_path, 'iter_4.pth'))


def test_masks_hold_through_loss_scaling_steps():
    """AMP: GradScaler steps through ``optimizer.step`` (skipping it on
    overflow), so the post-step re-masking covers it; checked with the CPU
    GradScaler and bfloat16 autocast, as far as this machine has AMP."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
    mask = torch.rand(8, 8) < 0.5
    hook = RDPruneHook()
    hook.masks = {'0': mask}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                                weight_decay=0.1)
    # what the hook reads of mmengine's Runner
    runner = SimpleNamespace(
        model=model, hooks=[],
        optim_wrapper=SimpleNamespace(optimizer=optimizer))
    hook._register_step_hooks(runner)
    hook._apply_everywhere(runner)
    scaler = torch.amp.GradScaler('cpu')
    for step in range(4):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = model(torch.randn(16, 8)).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        assert (model[0].weight[~mask] == 0).all(), step
    assert (model[0].weight[mask] != 0).all()
    hook.after_run(runner)
    assert not hook._step_handles


def test_prune_schedule_gives_the_added_hook_its_rounds(tmp_path, capsys):
    """``tools/prune.py --finetune`` adds RDPruneHook from the config's
    pruner; the config's ``prune_schedule`` makes it prune in two rounds,
    and an unknown key is refused in one line."""
    prune_tool = load_tool('prune')
    cfg = Config.fromfile(CONFIG)
    ema, hook = cfg.custom_hooks
    cfg.custom_hooks = [ema]
    cfg.pruner = hook['pruner']
    cfg.calibration = hook['calibration']
    cfg.prune_schedule = dict(
        rounds=[dict(at=0, budget=0.6),
                dict(at=2, budget=0.36)])
    config = str(tmp_path / 'scheduled.py')
    cfg.dump(config)
    work_dir = tmp_path / 'work'
    assert prune_tool.main([config, '--finetune', '--work-dir',
                            str(work_dir)]) == 0
    history = read_checkpoint(str(work_dir /
                                  'iter_4.pth'))[CHECKPOINT_KEY]['history']
    assert [(r['at'], r['budget_asked']) for r in history] == [(0, 0.6),
                                                               (2, 0.36)]
    assert history[1]['budget_achieved'] <= 0.36 < history[0][
        'budget_achieved'] <= 0.6

    cfg.prune_schedule = dict(rounds=[dict(at=0, budget=0.6)], by_iter=True)
    cfg.dump(config)
    assert prune_tool.main(
        [config, '--finetune', '--work-dir',
         str(tmp_path / 'refused')]) == 2
    assert "prune_schedule has unknown keys ['by_iter']" in \
        capsys.readouterr().err
