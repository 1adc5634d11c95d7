"""CPU kernels of mmcv's DynamicScatter against a plain per-voxel loop."""
import pytest
import torch
from mmcv.ops import DynamicScatter, dynamic_scatter
from mmcv.ops import scatter_points as mmcv_scatter_points

import rdprune_mm  # noqa: F401  (installs the CPU kernels)
from rdprune_mm.cpu_ops.voxels import unique_rows

REDUCES = ('sum', 'mean', 'max')


def reference_scatter(feats, coors, reduce):
    """Loop over voxels: drop rows with a negative entry, sort the voxels."""
    kept = [i for i in range(len(coors)) if bool((coors[i] >= 0).all())]
    voxels = sorted({tuple(coors[i].tolist()) for i in kept})
    outputs = []
    for voxel in voxels:
        members = [i for i in kept if tuple(coors[i].tolist()) == voxel]
        points = feats[members]
        if reduce == 'sum':
            outputs.append(points.sum(0))
        elif reduce == 'mean':
            outputs.append(points.sum(0) / len(members))
        else:
            outputs.append(points.max(0).values)
    voxel_coors = torch.tensor(
        voxels, dtype=coors.dtype).reshape(-1, coors.size(1))
    if not outputs:
        return feats.new_zeros((0, feats.size(1))), voxel_coors
    return torch.stack(outputs), voxel_coors


def reference_max_grad(feats, coors, grad_voxels):
    """The lowest-index point that reached a voxel's max gets its grad."""
    _, voxel_coors = reference_scatter(feats, coors, 'max')
    grad = torch.zeros_like(feats)
    for v, voxel in enumerate(voxel_coors.tolist()):
        members = [i for i in range(len(coors)) if coors[i].tolist() == voxel]
        for c in range(feats.size(1)):
            values = feats[members, c]
            first = members[int((values == values.max()).nonzero()[0])]
            grad[first, c] = grad_voxels[v, c]
    return grad


def random_points(num_points=300, grid=4, num_channels=5, drop=0.1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coors = torch.randint(0, grid, (num_points, 3), generator=gen)
    dropped = torch.rand(num_points, generator=gen) < drop
    coors[dropped,
          torch.randint(0, 3, (int(dropped.sum()), ), generator=gen)] = -1
    feats = torch.randn(num_points, num_channels, generator=gen)
    return feats, coors.int()


@pytest.mark.parametrize('reduce', REDUCES)
def test_forward_matches_reference(reduce):
    feats, coors = random_points()
    voxel_feats, voxel_coors = dynamic_scatter(feats, coors, reduce)
    expected_feats, expected_coors = reference_scatter(feats, coors, reduce)
    assert voxel_coors.dtype == torch.int32
    assert torch.equal(voxel_coors, expected_coors)
    torch.testing.assert_close(voxel_feats, expected_feats)


@pytest.mark.parametrize('reduce', ('sum', 'mean'))
def test_backward_matches_reference_autograd(reduce):
    feats, coors = random_points(seed=1)
    grad_voxels = None
    grads = []
    for scatter in (dynamic_scatter, reference_scatter):
        leaf = feats.clone().requires_grad_()
        voxel_feats, _ = scatter(leaf, coors, reduce)
        if grad_voxels is None:
            grad_voxels = torch.randn_like(voxel_feats)
        voxel_feats.backward(grad_voxels)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])
    dropped = (coors < 0).any(1)
    assert bool((grads[0][dropped] == 0).all())


def test_max_backward_matches_reference():
    feats, coors = random_points(seed=2)
    leaf = feats.clone().requires_grad_()
    voxel_feats, _ = dynamic_scatter(leaf, coors, 'max')
    grad_voxels = torch.randn_like(voxel_feats)
    voxel_feats.backward(grad_voxels)
    expected = reference_max_grad(feats, coors, grad_voxels)
    assert torch.equal(leaf.grad, expected)


@pytest.mark.parametrize('reduce', REDUCES)
def test_gradcheck_double(reduce):
    # Distinct, well separated values keep max differentiable under eps.
    feats, coors = random_points(num_points=40, grid=2, num_channels=3)
    feats = (torch.randperm(feats.numel()).double() / 10).reshape(
        feats.shape).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: dynamic_scatter(x, coors, reduce)[0], (feats, ))


def test_max_ties_go_to_first_point():
    feats = torch.tensor([[1., 5.], [3., 5.], [3., 2.], [0., 5.]],
                         requires_grad=True)
    coors = torch.zeros(4, 3, dtype=torch.int32)
    voxel_feats, _ = dynamic_scatter(feats, coors, 'max')
    assert voxel_feats.tolist() == [[3., 5.]]
    voxel_feats.backward(torch.tensor([[10., 20.]]))
    assert feats.grad.tolist() == [[0., 20.], [10., 0.], [0., 0.], [0., 0.]]


def test_max_skips_nan_like_cuda_fmaxf():
    nan = float('nan')
    feats = torch.tensor([[nan, 1.], [2., nan], [nan, nan]])
    coors = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.int32)
    voxel_feats, _ = dynamic_scatter(feats, coors, 'max')
    inf = float('inf')
    assert voxel_feats.tolist() == [[2., 1.], [-inf, -inf]]


@pytest.mark.parametrize('reduce', REDUCES)
def test_single_voxel(reduce):
    feats = torch.randn(7, 4, requires_grad=True)
    coors = torch.tensor([[2, 3, 1]] * 7, dtype=torch.int32)
    voxel_feats, voxel_coors = dynamic_scatter(feats, coors, reduce)
    expected_feats, _ = reference_scatter(feats, coors, reduce)
    assert voxel_coors.tolist() == [[2, 3, 1]]
    torch.testing.assert_close(voxel_feats, expected_feats)
    voxel_feats.sum().backward()
    assert feats.grad.shape == feats.shape


@pytest.mark.parametrize('reduce', REDUCES)
def test_empty_input(reduce):
    feats = torch.zeros(0, 4, requires_grad=True)
    coors = torch.zeros(0, 3, dtype=torch.int32)
    voxel_feats, voxel_coors = dynamic_scatter(feats, coors, reduce)
    assert voxel_feats.shape == (0, 4)
    assert voxel_coors.shape == (0, 3)
    voxel_feats.sum().backward()
    assert feats.grad.shape == (0, 4)


@pytest.mark.parametrize('reduce', REDUCES)
def test_all_points_dropped(reduce):
    feats = torch.randn(5, 4, requires_grad=True)
    coors = torch.tensor(
        [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-1, -1, -1], [-3, 2, 2]],
        dtype=torch.int32)
    voxel_feats, voxel_coors = dynamic_scatter(feats, coors, reduce)
    assert voxel_feats.shape == (0, 4)
    assert voxel_coors.shape == (0, 3)
    voxel_feats.sum().backward()
    assert bool((feats.grad == 0).all())


def test_ext_contract():
    """The kernel returns what mmcv's compiled op returns."""
    feats, coors = random_points(num_points=50, seed=3)
    ext = mmcv_scatter_points.ext_module
    voxel_feats, voxel_coors, point2voxel, counts = (
        ext.dynamic_point_to_voxel_forward(feats, coors, 'mean'))
    dropped = (coors < 0).any(1)
    assert point2voxel.dtype == counts.dtype == torch.int32
    assert bool((point2voxel[dropped] == -1).all())
    assert torch.equal(voxel_coors[point2voxel[~dropped].long()],
                       coors[~dropped])
    assert int(counts.sum()) == int((~dropped).sum())
    grad_feats = torch.full_like(feats, 7.)
    result = ext.dynamic_point_to_voxel_backward(grad_feats,
                                                 torch.ones_like(voxel_feats),
                                                 feats, voxel_feats,
                                                 point2voxel, counts, 'mean')
    assert result is None
    assert bool((grad_feats[dropped] == 0).all())
    with pytest.raises(RuntimeError, match='reduce type'):
        ext.dynamic_point_to_voxel_forward(feats, coors, 'min')


@pytest.mark.parametrize('average_points', (True, False))
def test_module_with_batch_index(average_points):
    feats, coors = random_points(num_points=200, seed=4)
    batch = torch.arange(200).div(100, rounding_mode='floor').int()
    coors = torch.cat([batch[:, None], coors], 1)
    module = DynamicScatter([0.2, 0.2, 4], [0, -40, -3, 70.4, 40, 1],
                            average_points)
    voxel_feats, voxel_coors = module(feats, coors)
    reduce = 'mean' if average_points else 'max'
    expected_feats, expected_coors = [], []
    for b in range(2):
        in_batch = coors[:, 0] == b
        f, c = reference_scatter(feats[in_batch], coors[in_batch, 1:], reduce)
        expected_feats.append(f)
        expected_coors.append(torch.cat([c.new_full((len(c), 1), b), c], 1))
    torch.testing.assert_close(voxel_feats, torch.cat(expected_feats))
    assert torch.equal(voxel_coors, torch.cat(expected_coors))


@pytest.mark.parametrize('span', (5, 2**30))
def test_unique_rows_matches_torch_unique(span):
    """Small spans take the int64-key path, huge ones torch's unique_dim."""
    gen = torch.Generator().manual_seed(5)
    coors = torch.randint(-span, span, (500, 3), generator=gen).int()
    coors[::7] = coors[1::7][:len(coors[::7])]  # guarantee duplicates
    for got, expected in zip(
            unique_rows(coors),
            torch.unique(
                coors,
                sorted=True,
                return_inverse=True,
                return_counts=True,
                dim=0)):
        assert torch.equal(got, expected)
