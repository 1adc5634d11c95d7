"""HeadDistillationHook: a loss between the pruned model's head outputs and
the frozen dense teacher's, inside mmengine training."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner

from conftest import REPO, load_tool
from rdprune_mm.apis import build_detector
from rdprune_mm.decoded_distortion import DecodedDistortion
from rdprune_mm.errors import PruningInputError
from rdprune_mm.finetune import finetune_config
from rdprune_mm.hooks import HeadDistillationHook, RDPruneHook
from rdprune_mm.hooks.head_distillation_hook import distillation_loss

CONFIG = osp.join(REPO, 'tests', 'configs',
                  'finetune_pointpillars_one_frame.py')


def test_loss_is_zero_for_equal_outputs_and_its_gradient_is_the_students():
    torch.manual_seed(0)
    teacher = {'h.0.heatmap': torch.randn(1, 1, 4, 4),
               'h.0.reg': torch.randn(1, 2, 4, 4)}
    weights = DecodedDistortion().quadratic_weights([teacher])[0]
    same = {k: v.clone().requires_grad_(True) for k, v in teacher.items()}
    assert float(distillation_loss(same, teacher, weights)) == 0.0
    student = {k: (v + 0.1 * torch.randn_like(v)).requires_grad_(True)
               for k, v in teacher.items()}
    loss = distillation_loss(student, teacher, weights)
    loss.backward()
    assert float(loss) > 0
    assert all(s.grad is not None and s.grad.abs().sum() > 0
               for s in student.values())
    assert all(t.grad is None for t in teacher.values())
    # by hand: the quadratic form of the weights
    expected = sum(float((weights[n] * (student[n] - teacher[n])**2).sum())
                   for n in teacher)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope='module')
def dense_checkpoint(tmp_path_factory):
    cfg = Config.fromfile(CONFIG)
    model, _ = build_detector(cfg, seed=0)
    path = str(tmp_path_factory.mktemp('dense') / 'dense.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def _runner(work_dir, checkpoint, with_pruning):
    cfg = Config.fromfile(CONFIG)
    cfg.work_dir = str(work_dir)
    cfg.load_from = checkpoint
    cfg.train_cfg.max_iters = 2
    cfg.default_hooks.checkpoint.interval = 2
    hooks = [h for h in cfg.custom_hooks if h['type'] == 'RDPruneHook'] \
        if with_pruning else []
    cfg.custom_hooks = hooks + [
        dict(type='HeadDistillationHook', loss_weight=2.0)
    ]
    return Runner.from_cfg(cfg)


def test_teacher_is_frozen_and_equal_models_give_zero(tmp_path,
                                                      dense_checkpoint):
    runner = _runner(tmp_path, dense_checkpoint, with_pruning=False)
    runner.load_or_resume()
    hook = next(h for h in runner.hooks
                if isinstance(h, HeadDistillationHook))
    hook.before_run(runner)
    model = runner.model
    batch = model.data_preprocessor(
        next(iter(runner.train_dataloader)), True)
    model.eval()  # BatchNorm as the teacher's: the same function
    losses = model.loss(batch['inputs'], batch['data_samples'])
    assert float(losses['loss_distill']) == 0.0
    model.train()
    teacher_before = {k: v.clone()
                      for k, v in hook.teacher.state_dict().items()}
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(0.9)
    losses = model.loss(batch['inputs'], batch['data_samples'])
    assert float(losses['loss_distill']) > 0
    losses['loss_distill'].backward()
    assert all(p.grad is None for p in hook.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.bbox_head.parameters())
    assert all(torch.equal(v, teacher_before[k])
               for k, v in hook.teacher.state_dict().items())
    hook.after_run(runner)
    assert 'loss_distill' not in model.loss(batch['inputs'],
                                            batch['data_samples'])


def test_distillation_is_logged_while_pruned_fine_tuning(
        tmp_path, dense_checkpoint):
    runner = _runner(tmp_path, dense_checkpoint, with_pruning=True)
    runner.train()
    logged = runner.message_hub.get_scalar('train/loss_distill')
    assert logged is not None and logged.current() > 0
    prune_hook = next(h for h in runner.hooks if isinstance(h, RDPruneHook))
    modules = dict(runner.model.named_modules())
    for name, mask in prune_hook.masks.items():
        assert (modules[name].weight[~mask] == 0).all()


def test_config_key_adds_the_hook_with_the_dense_teacher(tmp_path):
    cfg = Config.fromfile(CONFIG)
    cfg.distillation = dict(loss_weight=0.5)
    built = finetune_config(cfg, str(tmp_path), checkpoint='dense.pth')
    hook, = [h for h in built.custom_hooks
             if h['type'] == 'HeadDistillationHook']
    assert hook['teacher_checkpoint'] == 'dense.pth'
    assert hook['loss_weight'] == 0.5
    with pytest.raises(PruningInputError, match='teacher'):
        finetune_config(cfg, str(tmp_path), checkpoint=None)


def test_distill_flag_needs_finetune(capsys):
    argv = [CONFIG, '--distill', '1.0']
    assert load_tool('prune').main(argv) == 2
    assert '--distill needs --finetune' in capsys.readouterr().err
