"""Curves after the refit (``pruner.compensate.curves``): every level of a
layer's curve is the distortion of the model with that layer pruned alone
and refitted by the compensate stage, and the prefix-Cholesky solve equals
the refit's own solve at every level."""
import copy
import re

import pytest
import torch

from rdprune_mm import PruningInputError
from rdprune_mm.compensation import Compensation, refit_rows
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.masks import mask_from_order
from rdprune_mm.pruners import RDWeightPruner
from rdprune_mm.refitted_curves import refit_levels
from rdprune_mm.targets import find_targets
from test_channel_pruner import tiny_setup


@pytest.mark.parametrize('damp', [0.0, 0.01])
def test_every_level_is_the_refit_of_its_mask(damp):
    torch.manual_seed(0)
    rows, width = 5, 9
    x = torch.randn(40, width, dtype=torch.float64)
    gram = x.T @ x
    dense = torch.randn(rows, width, dtype=torch.float64)
    order = torch.randperm(rows * width)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    ranks = ranks.reshape(rows, width)
    # level 3 leaves some rows whole, the last prunes everything
    keys = [3, 10, 22, 31, 44, 45]
    refits = refit_levels(dense, ranks, gram, damp, keys)
    for key in keys:
        kept = mask_from_order(order, (rows, width), key)
        expected = refit_rows(dense, kept, gram, damp)
        assert torch.allclose(refits[key], expected, atol=1e-9), key
        assert torch.all(refits[key][~kept] == 0)
    assert torch.all(refits[45] == 0)


def test_a_singular_gram_without_damp_is_refused():
    dense = torch.randn(2, 4, dtype=torch.float64)
    ranks = torch.arange(8).reshape(2, 4)
    with pytest.raises(PruningInputError, match='damp above 0'):
        refit_levels(dense, ranks, torch.zeros(4, 4), 0.0, [2])


def _alone_and_refitted(model, batches, name, keep):
    """The distortion of ``model`` with layer ``name`` masked to ``keep``
    and refitted by the compensate stage, the rest unpruned."""
    model = copy.deepcopy(model)
    targets = find_targets(model)
    head = HeadOutputs(model, ['head'])
    with torch.no_grad():
        reference = [head(batch) for batch in batches]
        compensation = Compensation(reconstruct=True)
        dense = compensation.record(model, batches, targets, ['head'])
        target, = [t for t in targets if t.name == name]
        target.weight.mul_(keep)
        compensation.apply(model, batches, targets, dense)
        outputs = [head(batch) for batch in batches]
    return reference, outputs


def test_curves_are_the_distortion_after_each_layers_refit():
    model, batches = tiny_setup()
    pruner = RDWeightPruner(budget=0.5,
                            num_levels=4,
                            head_modules=['head'],
                            compensate=dict(reconstruct=True, curves=True))
    plain = RDWeightPruner(budget=0.5, num_levels=4, head_modules=['head'])
    rd = pruner.rate_distortion(copy.deepcopy(model), batches)
    result = pruner.prune(copy.deepcopy(model), batches)
    plain_curves = plain.rate_distortion(copy.deepcopy(model), batches).curves
    assert set(result.curves) == set(plain_curves)
    lower = 0
    for target, order, counts in zip(rd.targets, rd.orders, rd.counts):
        curve = result.curves[target.name]
        for level in (1, 2):
            keep = mask_from_order(order, target.weight.shape,
                                   int(counts[level]))
            reference, outputs = _alone_and_refitted(model, batches,
                                                     target.name, keep)
            assert curve[level] == pytest.approx(
                float(pruner.distortion(reference, outputs)),
                rel=1e-4,
                abs=1e-9), (target.name, level)
            lower += curve[level] < plain_curves[target.name][level]
        # nothing kept: nothing to refit
        assert curve[-1] == pytest.approx(plain_curves[target.name][-1])
    assert lower > 0
    assert result.compensation['reconstructed'] > 0


@pytest.mark.parametrize('pruner_cfg, expected', [
    (dict(compensate=dict(curves=True)),
     'needs pruner.compensate.reconstruct'),
    (dict(compensate=dict(reconstruct=True, curves=True),
          curves='taylor'), "needs pruner.curves='empirical'"),
])
def test_refit_curves_settings_are_checked(pruner_cfg, expected):
    with pytest.raises(PruningInputError, match=re.escape(expected)):
        RDWeightPruner(**pruner_cfg)
