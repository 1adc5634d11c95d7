"""spconv 2 on CPU, patched by rdprune_mm: exact against dense conv3d,
repeatable, and differentiable."""
import pytest
import torch
import torch.nn.functional as F

import rdprune_mm  # noqa: F401  (patches spconv)

spconv = pytest.importorskip('spconv.pytorch')

SHAPE = (12, 14, 10)


def random_sparse(batch=2, channels=8, density=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    active = torch.rand(batch, *SHAPE, generator=gen) < density
    indices = active.nonzero().int().contiguous()
    features = torch.randn(len(indices), channels, generator=gen)
    tensor = spconv.SparseConvTensor(features, indices, list(SHAPE), batch)
    return tensor, active


def dense_input(tensor):
    return tensor.dense()  # (N, C, D, H, W), zeros where inactive


def as_conv3d_weight(weight):
    # spconv 2: (out, kD, kH, kW, in) -> torch: (out, in, kD, kH, kW)
    return weight.permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize('stride', [1, 2])
def test_sparse_conv_matches_dense_conv3d(stride):
    torch.manual_seed(0)
    conv = spconv.SparseConv3d(8, 16, 3, stride=stride, padding=1,
                               bias=False)
    tensor, _ = random_sparse()
    out = conv(tensor)
    expected = F.conv3d(dense_input(tensor), as_conv3d_weight(conv.weight),
                        stride=stride, padding=1)
    torch.testing.assert_close(out.dense(), expected, rtol=1e-5, atol=1e-5)


def test_subm_conv_matches_dense_conv3d_at_active_sites():
    torch.manual_seed(0)
    conv = spconv.SubMConv3d(8, 16, 3, padding=1, bias=True)
    tensor, active = random_sparse()
    out = conv(tensor)
    expected = F.conv3d(dense_input(tensor), as_conv3d_weight(conv.weight),
                        conv.bias, padding=1)
    idx = tensor.indices.long()
    expected_at_sites = expected[idx[:, 0], :, idx[:, 1], idx[:, 2],
                                 idx[:, 3]]
    torch.testing.assert_close(out.features, expected_at_sites, rtol=1e-5,
                               atol=1e-5)


def test_gradients_match_dense_conv3d():
    torch.manual_seed(0)
    conv = spconv.SparseConv3d(8, 16, 3, stride=2, padding=1, bias=False)
    tensor, _ = random_sparse()
    tensor.features.requires_grad_(True)
    out = conv(tensor)
    grad_out = torch.randn_like(out.features)
    out.features.backward(grad_out)

    weight = conv.weight.detach().clone().requires_grad_(True)
    dense = dense_input(tensor).detach().requires_grad_(True)
    ref = F.conv3d(dense, as_conv3d_weight(weight), stride=2, padding=1)
    grad_dense = torch.zeros_like(ref)
    oidx = out.indices.long()
    grad_dense[oidx[:, 0], :, oidx[:, 1], oidx[:, 2], oidx[:, 3]] = grad_out
    ref.backward(grad_dense)

    iidx = tensor.indices.long()
    ref_grad_features = dense.grad[iidx[:, 0], :, iidx[:, 1], iidx[:, 2],
                                   iidx[:, 3]]
    torch.testing.assert_close(tensor.features.grad, ref_grad_features,
                               rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conv.weight.grad, weight.grad, rtol=1e-4,
                               atol=1e-4)


def test_forward_and_backward_are_repeatable_with_threads():
    torch.set_num_threads(max(2, torch.get_num_threads()))
    torch.manual_seed(0)
    net = spconv.SparseSequential(
        spconv.SubMConv3d(8, 32, 3, padding=1, indice_key='s1'),
        spconv.SparseConv3d(32, 32, 3, stride=2, padding=1),
        spconv.SubMConv3d(32, 32, 3, padding=1))
    tensor, _ = random_sparse(density=0.6, channels=8, seed=1)

    def run():
        features = tensor.features.detach().clone().requires_grad_(True)
        net.zero_grad()
        out = net(tensor.replace_feature(features))
        out.features.square().sum().backward()
        return out.features.detach(), features.grad, net[0].weight.grad

    first = run()
    for _ in range(3):
        for a, b in zip(first, run()):
            assert torch.equal(a, b)
