"""The compensate stage: the least-squares refit of the kept weights meets
the optimality conditions of the layer's output error (checked by autograd
through the layer itself, not through the Gram matrix it was solved with),
keeps every pruned weight at zero, and through tools/prune.py leaves the
allocation as it was and lowers the measured distortion."""
import glob
import json
import os.path as osp
import re
import shutil

import pytest
import torch
from torch import nn
from torch.func import functional_call

from conftest import QUICK_CENTERPOINT, load_tool
from rdprune_mm import PruningInputError
from rdprune_mm.compensation import (LayerInputs, build_compensation,
                                     refit_rows, rows_to_weight, weight_rows)
from rdprune_mm.targets import PruningTarget, layer_kind

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


@pytest.mark.parametrize('cfg, expected', [
    (dict(reconstruct=1), 'True or False'),
    (dict(damp=2), 'in [0, 1)'),
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


# the neck's deconvs and one task head's convs (refitted) and the sparse
# encoder's first stage (reported as not refitted)
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


def test_compensation_through_the_tool(tmp_path):
    plain, plain_state = _prune(tmp_path / 'plain')
    assert 'compensation' not in plain
    # the same curves (copied cache), with compensation
    shutil.copytree(tmp_path / 'plain' / 'curves',
                    tmp_path / 'compensated' / 'curves')
    report, state = _prune(tmp_path / 'compensated',
                           'pruner.compensate.reconstruct=True')
    assert [layer['level'] for layer in report['layers']] == \
        [layer['level'] for layer in plain['layers']]
    compensation = report['compensation']
    kinds = {layer['kind'] for layer in report['layers']
             if layer['sparsity'] > 0}
    refitted = [layer for layer in report['layers']
                if 0 < layer['sparsity'] < 1 and layer['kind'] != 'spconv']
    assert compensation['reconstructed'] == len(refitted) > 0
    if 'spconv' in kinds:
        assert compensation['not_reconstructed']['spconv'] >= 1
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
