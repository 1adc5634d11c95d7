"""Prunable layers: found by kind and pattern, masked on the right axis."""
import numpy as np
import pytest
import torch
from torch import nn

import rdprune_mm  # noqa: F401
from rdprune_mm.errors import PruningInputError
from rdprune_mm.masks import (apply_masks, magnitude_order, mask_from_order,
                              pruned_counts, sparsity_grid)
from rdprune_mm.targets import find_targets, layer_kind

spconv = pytest.importorskip('spconv.pytorch')


def zero_out_channel(target, channel):
    """A keep-mask with every weight of one output channel pruned."""
    mask = torch.ones_like(target.weight, dtype=torch.bool)
    target.channel_view(mask)  # shape check: view must exist
    mask.movedim(target.out_axis, 0)[channel] = False
    apply_masks({target.name: target.module}, {target.name: mask})
    return mask


def single_target(module):
    wrapper = nn.Sequential(module)
    (target, ) = find_targets(wrapper)
    return target


def test_linear_output_matches_hand_computation():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    target = single_target(layer)
    assert (target.kind, target.out_axis) == ('linear', 0)
    order = magnitude_order(layer.weight)
    mask = mask_from_order(order, layer.weight.shape, 10)
    apply_masks({target.name: layer}, {target.name: mask})
    x = torch.randn(3, 6)
    w = layer.weight.detach().numpy()
    by_hand = np.array([[sum(x[n, i].item() * w[o, i] for i in range(6))
                         + layer.bias[o].item() for o in range(4)]
                        for n in range(3)])
    np.testing.assert_allclose(layer(x).detach().numpy(), by_hand,
                               rtol=1e-5, atol=1e-6)
    assert int((layer.weight == 0).sum()) == 10


@pytest.mark.parametrize('layer, x', [
    (nn.Conv1d(3, 5, 3), torch.randn(2, 3, 9)),
    (nn.Conv2d(3, 5, 3), torch.randn(2, 3, 9, 9)),
    (nn.Conv3d(3, 5, 3), torch.randn(2, 3, 6, 6, 6)),
    (nn.ConvTranspose2d(3, 5, 2, stride=2), torch.randn(2, 3, 4, 4)),
    (nn.Linear(3, 5), torch.randn(2, 3)),
])
def test_dense_out_axis(layer, x):
    torch.manual_seed(0)
    target = single_target(layer)
    zero_out_channel(target, 2)
    out = layer(x)
    channel_dim = -1 if isinstance(layer, nn.Linear) else 1
    pruned = out.select(channel_dim, 2)
    assert torch.equal(pruned, torch.full_like(pruned, layer.bias[2].item()))
    for channel in (0, 1, 3, 4):
        kept = out.select(channel_dim, channel)
        assert not torch.equal(
            kept, torch.full_like(kept, layer.bias[channel].item()))


def test_deconv_is_found_with_out_axis_1():
    target = single_target(nn.ConvTranspose2d(4, 6, 2))
    assert (target.kind, target.out_axis) == ('deconv', 1)
    assert target.num_out_channels == 6
    assert target.channel_view().shape == (6, 4 * 2 * 2)


@pytest.mark.parametrize('cls', ['SubMConv3d', 'SparseConv3d'])
def test_spconv_out_axis(cls):
    torch.manual_seed(0)
    layer = getattr(spconv, cls)(4, 6, 3, padding=1, bias=True)
    target = single_target(layer)
    assert (target.kind, target.out_axis) == ('spconv', 0)
    assert target.num_params == 6 * 27 * 4
    zero_out_channel(target, 3)
    indices = torch.tensor([[0, 1, 1, 1], [0, 2, 2, 2], [0, 1, 2, 1]],
                           dtype=torch.int32)
    x = spconv.SparseConvTensor(torch.randn(3, 4), indices, [4, 4, 4], 1)
    out = layer(x).features
    assert torch.equal(out[:, 3], torch.full_like(out[:, 3],
                                                  layer.bias[3].item()))
    assert not torch.isclose(out[:, 0], layer.bias[0].expand(len(out))).all()


def test_mmcv_sparse_conv_layout():
    from mmcv.ops import SubMConv3d
    layer = SubMConv3d(4, 6, 3)
    assert tuple(layer.weight.shape) == (3, 3, 3, 4, 6)
    target = single_target(layer)
    assert (target.kind, target.out_axis) == ('mmcv_spconv', -1)
    mask = zero_out_channel(target, 5)
    assert not mask[..., 5].any() and mask[..., :5].all()
    assert torch.equal(target.channel_view()[5], torch.zeros(3 * 3 * 3 * 4))


def test_find_targets_patterns():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.Linear(4, 2)))
    names = [t.name for t in find_targets(model)]
    assert names == ['0', '3.0', '3.1']
    assert [t.name for t in find_targets(model, include=[r'^3\.'])] == [
        '3.0', '3.1'
    ]
    assert [t.name for t in find_targets(model, exclude=[r'\.1$'])] == [
        '0', '3.0'
    ]
    with pytest.raises(PruningInputError, match='select no prunable layer'):
        find_targets(model, include=['backbone'])
    assert layer_kind(nn.BatchNorm2d(3)) is None


@pytest.mark.parametrize('numel', [1, 7, 100])
def test_masks_prune_smallest_magnitudes_exactly(numel):
    torch.manual_seed(numel)
    weight = torch.randn(numel)
    order = magnitude_order(weight)
    for count in pruned_counts(numel, sparsity_grid(5)):
        mask = mask_from_order(order, weight.shape, int(count))
        assert int((~mask).sum()) == count
        if 0 < count < numel:
            assert weight[~mask].abs().max() <= weight[mask].abs().min()
