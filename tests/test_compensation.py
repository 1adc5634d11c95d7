"""The compensate stage: the least-squares refit of the kept weights meets
the optimality conditions of the layer's output error (checked by autograd
through the layer itself, not through the Gram matrix it was solved with;
for sparse convolutions against a least-squares solve on patches cut from
the dense grid), keeps every pruned weight at zero, and through
tools/prune.py leaves the allocation as it was and lowers the measured
distortion."""
import copy
import glob
import json
import os.path as osp
import re
import shutil

import pytest
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from conftest import QUICK_CENTERPOINT, load_tool
from rdprune_mm import PruningInputError
from rdprune_mm.compensation import (Compensation, LayerInputs,
                                     build_compensation, reconstructable,
                                     refit_rows, rows_to_weight,
                                     sparse_input_rows, weight_rows)
from rdprune_mm.targets import PruningTarget, find_targets, layer_kind

prune_tool = load_tool('prune')

LAYERS = {
    'linear': (lambda: nn.Linear(6, 5), (2, 7, 6)),
    'conv2d': (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
               (2, 3, 9, 8)),
    'conv1d-pointwise': (lambda: nn.Conv1d(5, 4, 1), (2, 5, 11)),
    'deconv-k2s2': (lambda: nn.ConvTranspose2d(4, 3, 2, stride=2),
                    (2, 4, 5, 6)),
}


def _target(module):
    kind, axis = layer_kind(module)
    return PruningTarget('layer', module, kind, axis)


def _refit(module, inputs, keep):
    """Prune ``module`` to ``keep`` and refit it on ``inputs``; returns the
    dense weight."""
    target = _target(module)
    dense = module.weight.detach().clone()
    with LayerInputs([target]) as recorded, torch.no_grad():
        for x in inputs:
            module(x)
    rows = refit_rows(weight_rows(target, dense), weight_rows(target, keep),
                      recorded.grams['layer'], damp=0.0)
    with torch.no_grad():
        module.weight.copy_(rows_to_weight(target, rows, dense))
    return dense


def _output_error(module, weight, inputs, dense):
    """Σ ||layer(x; weight) - layer(x; dense)||², by the layer's forward."""
    error = 0
    for x in inputs:
        out = functional_call(module, dict(weight=weight, bias=module.bias),
                              (x, ))
        ref = functional_call(module, dict(weight=dense, bias=module.bias),
                              (x, ))
        error = error + (out - ref).pow(2).sum()
    return error


@pytest.mark.parametrize('name', LAYERS)
def test_refit_is_the_least_squares_optimum_with_pruned_weights_zero(name):
    torch.manual_seed(0)
    make, shape = LAYERS[name]
    module = make().double()
    inputs = [torch.randn(shape, dtype=torch.float64) for _ in range(2)]
    keep = torch.rand_like(module.weight) > 0.5
    dense = _refit(module, inputs, keep)
    refit = module.weight.detach().clone()
    assert torch.all(refit[~keep] == 0)

    # the gradient of the output error vanishes on every kept weight
    weight = refit.clone().requires_grad_(True)
    error = _output_error(module, weight, inputs, dense)
    error.backward()
    scale = weight.grad.abs().max() + _output_error(
        module, dense * keep, inputs, dense).item()
    assert weight.grad[keep].abs().max() <= 1e-8 * scale
    # and it is below the error of the masked dense weights
    masked = _output_error(module, dense * keep, inputs, dense)
    assert error.item() < masked.item()


SPARSE_LAYERS = {
    'subm': lambda: spconv.SubMConv3d(3, 4, 3, indice_key='subm0'),
    'strided': lambda: spconv.SparseConv3d(3, 4, 3, stride=2, padding=1),
}
GRID = 8


def _sparse_input(seed):
    """A sparse tensor on a GRID^3 grid and its dense twin."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.unique(torch.randint(0, GRID, (200, 3),
                                        generator=generator),
                          dim=0)
    indices = torch.cat(
        [torch.zeros(len(coords), 1, dtype=torch.int32),
         coords.int()], 1)
    features = torch.randn(len(coords), 3, generator=generator)
    return spconv.SparseConvTensor(features, indices, [GRID] * 3, 1)


def _patches(module, x, out_indices):
    """Reference input rows from the dense grid: the (offset, channel)
    patch at each output site, offsets in the weight's (z, y, x) order."""
    k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
    if module.subm:  # the output sites are the input sites
        p = k // 2
    dense = F.pad(x.dense()[0], (p, ) * 6)
    windows = dense.unfold(1, k, s).unfold(2, k, s).unfold(3, k, s)
    z, y, w = out_indices[:, 1:].long().T
    return windows[:, z, y, w].permute(1, 2, 3, 4, 0).reshape(len(z), -1)


@pytest.mark.parametrize('name', SPARSE_LAYERS)
def test_sparse_input_rows_are_the_layers_patches(name):
    torch.manual_seed(0)
    module = SPARSE_LAYERS[name]()
    target = _target(module)
    x = _sparse_input(0)
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    weight, bias = module.weight, module.bias
    with torch.no_grad():
        out = module(x)
        expected = out.features.clone()
        rows = sparse_input_rows(target, x)
    assert len(calls) == 1  # the layer's hooks did not see the probe
    assert module.weight is weight and module.bias is bias
    assert module.out_channels == 4
    assert torch.allclose(rows, _patches(module, x, out.indices), atol=1e-6)
    assert torch.allclose(rows @ weight_rows(target, weight).T + bias,
                          expected,
                          atol=1e-5)


def test_spconv_1x1_layers_are_left_alone():
    """spconv's 1x1 path reads its weight as (in, out), not in the layout
    of its other paths, so its rows are not the weight's rows."""
    module = spconv.SubMConv3d(3, 4, 1)
    x = _sparse_input(0)
    with torch.no_grad():
        out = module(x).features
    target = _target(module)
    assert not torch.allclose(
        out, x.features @ weight_rows(target, module.weight).T + module.bias)
    assert not reconstructable(target)
    assert reconstructable(_target(spconv.SubMConv3d(3, 4, 3)))


@pytest.mark.parametrize('name', SPARSE_LAYERS)
def test_sparse_refit_is_the_least_squares_optimum(name):
    torch.manual_seed(0)
    module = SPARSE_LAYERS[name]()
    target = _target(module)
    inputs = [_sparse_input(seed) for seed in (1, 2)]
    dense = module.weight.detach().clone()
    keep = torch.rand_like(dense) > 0.5
    with LayerInputs([target]) as recorded, torch.no_grad():
        patches = torch.cat(
            [_patches(module, x,
                      module(x).indices) for x in inputs])
    rows = refit_rows(weight_rows(target, dense),
                      weight_rows(target, keep),
                      recorded.grams['layer'],
                      damp=0.0)
    refit = rows_to_weight(target, rows, dense)
    assert refit.shape == dense.shape and torch.all(refit[~keep] == 0)
    # each output row: least squares on its kept columns of the patches
    patches = patches.double()
    goal = patches @ weight_rows(target, dense).double().T
    for row, kept in enumerate(weight_rows(target, keep)):
        solution = torch.linalg.lstsq(patches[:, kept], goal[:, row:row + 1])
        assert torch.allclose(rows[row, kept],
                              solution.solution.squeeze(1),
                              rtol=1e-5,
                              atol=1e-6)


class _Chain(nn.Module):
    """Three linear layers called as a detector is (``mode='predict'``)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8),
                                  nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, inputs, data_samples=None, mode='predict'):
        return self.head(self.body(inputs))


def _layer_inputs(model, targets, batches):
    """Each target's inputs, stacked over the batches."""
    seen = {t.name: [] for t in targets}
    handles = [
        t.module.register_forward_hook(
            lambda m, args, out, name=t.name: seen[name].append(args[0]))
        for t in targets
    ]
    with torch.no_grad():
        for batch in batches:
            model(**batch)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(x) for name, x in seen.items()}


def test_sequential_refit_solves_each_layer_on_the_pruned_inputs():
    """Each layer's refit is the least-squares fit, on the inputs the
    pruned and refitted model gives it, of the unpruned layer's outputs on
    the unpruned model's inputs."""
    torch.manual_seed(0)
    model = _Chain().double()
    targets = find_targets(model)
    batches = [
        dict(inputs=torch.randn(40, 6, dtype=torch.float64)) for _ in range(2)
    ]
    dense_inputs = _layer_inputs(model, targets, batches)
    goals = {
        t.name: dense_inputs[t.name] @ t.weight.detach().T
        for t in targets
    }
    compensation = Compensation(reconstruct=True, sequential=True, damp=0.0)
    dense = compensation.record(model, batches, targets, ['head'])
    keeps = {}
    with torch.no_grad():
        for target in targets:
            keeps[target.name] = torch.rand_like(target.weight) > 0.5
            target.weight.mul_(keeps[target.name])
    report = compensation.apply(model, batches, targets, dense)
    assert report['reconstructed'] == 3
    inputs = _layer_inputs(model, targets, batches)
    for target in targets:
        weight, keep = target.weight.detach(), keeps[target.name]
        assert torch.all(weight[~keep] == 0)
        for row in range(weight.shape[0]):
            kept = keep[row]
            solution = torch.linalg.lstsq(inputs[target.name][:, kept],
                                          goals[target.name][:, row:row + 1])
            assert torch.allclose(weight[row, kept],
                                  solution.solution.squeeze(1),
                                  atol=1e-8), (target.name, row)


def test_damp_pulls_the_refit_towards_the_unpruned_weights():
    """damp 0 is the least-squares fit, a large damp the masked unpruned
    weights, and the fit's distance to them falls as damp grows."""
    torch.manual_seed(0)
    x = torch.randn(30, 8, dtype=torch.float64)
    gram = x.T @ x
    dense = torch.randn(4, 8, dtype=torch.float64)
    kept = torch.rand(4, 8) > 0.4
    kept[:, 0] = True
    distances = []
    for damp in (0.0, 0.1, 1.0, 1e9):
        refit = refit_rows(dense, kept, gram, damp)
        assert torch.all(refit[~kept] == 0)
        distances.append(float((refit - dense * kept).norm()))
    assert distances[0] > distances[1] > distances[2] > distances[3]
    assert distances[3] < 1e-6
    exact = torch.linalg.lstsq(x[:, kept[0]], (x @ dense[0])[:, None])
    assert torch.allclose(
        refit_rows(dense, kept, gram, 0.0)[0, kept[0]],
        exact.solution.squeeze(1))


def test_the_refit_uses_its_own_frames():
    """With compensation_batches (pruner.compensate.num_samples) the refit
    is the least-squares fit on those frames, not on the curves' frame."""
    from test_channel_pruner import tiny_setup

    from rdprune_mm.head_outputs import HeadOutputs
    from rdprune_mm.pruners import RDWeightPruner
    model, batches = tiny_setup()
    generator = torch.Generator().manual_seed(1)
    frames = batches + [
        dict(inputs=torch.randn(1, 3, 12, 12, generator=generator),
             data_samples=None) for _ in range(3)
    ]
    twin = copy.deepcopy(model)
    pruner = RDWeightPruner(budget=0.5,
                            num_levels=3,
                            head_modules=['head'],
                            targets=dict(include=['^conv2$']),
                            compensate=dict(reconstruct=True))
    result = pruner.prune(model, batches[:1], compensation_batches=frames)
    assert result.compensation['frames'] == 5
    target, = find_targets(twin, ['^conv2$'])
    head = HeadOutputs(twin, ['head'])
    refits = []
    for used in (frames, batches[:1]):
        with LayerInputs([target]) as recorded, torch.no_grad():
            for batch in used:
                head(batch)
        rows = refit_rows(weight_rows(target, twin.conv2.weight),
                          weight_rows(target, result.masks['conv2']),
                          recorded.grams['conv2'], 0.01)
        refits.append(rows_to_weight(target, rows, twin.conv2.weight))
    assert torch.allclose(model.conv2.weight.double(), refits[0], atol=1e-5)
    assert not torch.allclose(refits[0], refits[1], atol=1e-3)


@pytest.mark.parametrize('cfg, expected', [
    (dict(reconstruct=1), 'True or False'),
    (dict(damp=-1), 'a number >= 0'),
    (dict(num_samples=0), 'a number of frames >= 1'),
    (dict(refit=True), "unknown key(s) ['refit']"),
])
def test_bad_settings(cfg, expected):
    with pytest.raises(PruningInputError, match=re.escape(expected)):
        build_compensation(cfg)


def test_channel_pruners_take_batchnorm_only():
    with pytest.raises(PruningInputError, match='batchnorm=True'):
        build_compensation(dict(reconstruct=True), allow_reconstruct=False)
    assert build_compensation(dict(batchnorm=True),
                              allow_reconstruct=False).enabled


# the sparse encoder's first layer, the neck's deconvs and one task head's
# convs: every partly pruned one is refitted
INCLUDE = ('pruner.targets.include=[pts_middle_encoder.conv_input,pts_neck,'
           r'task_heads.0.(reg|heatmap)]')


def _prune(work_dir, *options):
    argv = [QUICK_CENTERPOINT, '--work-dir', str(work_dir), '--cfg-options',
            'pruner.budget=0.4', 'pruner.num_levels=5', INCLUDE, *options]
    assert prune_tool.main(argv) == 0
    with open(osp.join(work_dir, 'allocation.json')) as f:
        report = json.load(f)
    state = torch.load(osp.join(work_dir, 'pruned.pth'),
                       weights_only=True)['state_dict']
    return report, state


@pytest.fixture(scope='module')
def plain_run(tmp_path_factory):
    """The pruning without compensation, whose curves the others reuse."""
    work_dir = tmp_path_factory.mktemp('plain')
    report, state = _prune(work_dir)
    return work_dir, report, state


@pytest.mark.parametrize('sequential', [False, True])
def test_compensation_through_the_tool(plain_run, tmp_path, sequential):
    plain_dir, plain, plain_state = plain_run
    assert 'compensation' not in plain
    # the same curves (copied cache), with compensation
    shutil.copytree(plain_dir / 'curves', tmp_path / 'compensated' / 'curves')
    report, state = _prune(tmp_path / 'compensated',
                           'pruner.compensate.reconstruct=True',
                           f'pruner.compensate.sequential={sequential}')
    assert [layer['level'] for layer in report['layers']] == \
        [layer['level'] for layer in plain['layers']]
    compensation = report['compensation']
    refitted = [
        layer for layer in report['layers'] if 0 < layer['sparsity'] < 1
    ]
    assert compensation['reconstructed'] == len(refitted) > 0
    assert compensation['not_reconstructed'] == {}
    assert compensation['frames'] == 1
    assert compensation['distortion_before'] == pytest.approx(
        plain['totals']['measured_distortion'])
    assert compensation['distortion_after'] == \
        report['totals']['measured_distortion']
    assert compensation['distortion_after'] < compensation[
        'distortion_before']
    changed = 0
    for layer in report['layers']:
        key = f'{layer["name"]}.weight'
        # every pruned weight is still zero, and only kept ones moved
        assert torch.all(state[key][plain_state[key] == 0] == 0), key
        changed += int(not torch.equal(state[key], plain_state[key]))
    assert changed == len(refitted)
    assert len(glob.glob(str(tmp_path / 'compensated' / 'curves' /
                             'curves-*.json'))) == 1
