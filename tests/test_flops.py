"""FLOPs per target: hand-counted layers, and a FLOPs budget on the quick
CenterPoint with the real nuScenes frame."""
import pytest
import spconv.pytorch as spconv
import torch
from mmengine.config import Config
from torch import nn

from conftest import NUSCENES_FRAME, QUICK_CENTERPOINT
from rdprune_mm.apis import build_detector
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.flops import (flops_cost_table, layer_flops, measure_flops,
                              measure_uses)
from rdprune_mm.head_outputs import HeadOutputs
from rdprune_mm.masks import magnitude_order, mask_from_order, pruned_counts
from rdprune_mm.pruners.weight_pruner import RDWeightPruner
from rdprune_mm.report import allocation_report
from rdprune_mm.targets import find_targets

# 4 active voxels of a 10^3 grid: two neighbours along the last axis and two
# isolated ones
VOXELS = [(1, 1, 1), (1, 1, 2), (5, 5, 5), (8, 1, 1)]


class Tiny(nn.Module):
    """One layer of every kind; ``forward`` takes a dense image, a
    sequence and a sparse voxel grid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.linear = nn.Linear(4, 5)
        self.deconv = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.subm = spconv.SubMConv3d(1, 2, 3, bias=False, indice_key='subm1')
        self.subm_nokey = spconv.SubMConv3d(2, 2, 3, bias=False)
        self.down = spconv.SparseConv3d(
            2, 2, 2, stride=2, bias=False, indice_key='down')
        self.up = spconv.SparseInverseConv3d(
            2, 2, 2, bias=False, indice_key='down')

    def forward(self, image, sequence, voxels):
        self.deconv(self.conv(image))
        self.linear(sequence)
        self.up(self.down(self.subm_nokey(self.subm(voxels))))


def _voxels(batch_size=1):
    indices = torch.tensor([(b, *v) for b in range(batch_size)
                            for v in VOXELS], dtype=torch.int32)
    features = torch.ones(len(indices), 1)
    return spconv.SparseConvTensor(features, indices, [10, 10, 10],
                                   batch_size)


def _batch(batch_size=1):
    return dict(
        image=torch.randn(batch_size, 2, 5, 7),
        sequence=torch.randn(batch_size, 3, 4),
        voxels=_voxels(batch_size))


def _offsets(*pairs):
    """Counts per flat 3x3x3 or 2x2x2 offset from ``(flat, count)``."""
    size = 27 if max(flat for flat, _ in pairs) >= 8 else 8
    counts = torch.zeros(size, dtype=torch.float64)
    for flat, count in pairs:
        counts[flat] = count
    return counts


def test_uses_counted_by_hand():
    model = Tiny().eval()
    targets = find_targets(model)
    uses = measure_uses(targets, [_batch()], lambda batch: model(**batch))
    # Conv2d 3x3, padding 1: the 5x7 output, once per position
    assert uses['conv'].item() == 35
    # Linear: 3 rows of 4 features
    assert uses['linear'].item() == 3
    # ConvTranspose2d: once per input position, the conv's 5x7 output
    assert uses['deconv'].item() == 35
    # Submanifold 3x3x3: every voxel pairs with itself at the centre (13);
    # (1,1,1) reads (1,1,2) at offset (1,1,2) = 14, and (1,1,2) reads
    # (1,1,1) at offset (1,1,0) = 12
    subm = _offsets((13, 4), (14, 1), (12, 1))
    assert torch.equal(uses['subm'].flatten(), subm)
    assert uses['subm'].shape == (1, 3, 3, 3, 1)
    assert torch.equal(uses['subm_nokey'].flatten(), subm)
    # 2x2x2 stride 2: each voxel feeds one output at the offset of its
    # coordinates mod 2: (1,1,1), (5,5,5) -> 7; (1,1,2) -> 6; (8,1,1) -> 3
    down = _offsets((7, 2), (6, 1), (3, 1))
    assert torch.equal(uses['down'].flatten(), down)
    # the inverse conv runs the same pairs backwards
    assert torch.equal(uses['up'].flatten(), down)
    # the temporary indice key is gone again
    assert model.subm_nokey.indice_key is None


def test_flops_by_hand_and_averaged_over_batches():
    model = Tiny().eval()
    targets = find_targets(model)
    batches = [_batch(1), _batch(3)]
    flops = measure_flops(model, targets, batches,
                          lambda batch: model(**batch))
    # average of 1 and 3 frames: 2 frames' worth of uses
    assert flops['conv'] == 2 * 2 * 35 * (3 * 2 * 3 * 3)
    assert flops['linear'] == 2 * 2 * 3 * (5 * 4)
    assert flops['deconv'] == 2 * 2 * 35 * (3 * 2 * 2 * 2)
    # 6 pairs, each multiplying an input row by a (1 x 2) / (2 x 2) kernel
    assert flops['subm'] == 2 * 2 * 6 * (1 * 2)
    assert flops['subm_nokey'] == 2 * 2 * 6 * (2 * 2)
    assert flops['down'] == 2 * 2 * 4 * (2 * 2)
    assert flops['up'] == 2 * 2 * 4 * (2 * 2)


def test_cost_table_matches_masks():
    model = Tiny().eval()
    targets = {t.name: t for t in find_targets(model)}
    uses = measure_uses(targets.values(), [_batch()],
                        lambda batch: model(**batch))
    levels = [0, 0.25, 0.5, 0.9, 1]
    for name in ('subm', 'down', 'conv'):
        weight = targets[name].weight
        order = magnitude_order(weight)
        counts = pruned_counts(weight.numel(), levels)
        earlier = torch.rand(weight.shape) > 0.3
        for keep_within in (None, earlier):
            table = flops_cost_table(uses[name], weight, order, counts,
                                     keep_within)
            for count, cost in zip(counts, table):
                mask = mask_from_order(order, weight.shape, int(count))
                if keep_within is not None:
                    mask &= keep_within
                assert cost == layer_flops(uses[name], weight, mask)
        assert table[-1] == 0


# one subm conv, one deconv of the neck and one conv of a head
INCLUDE = [
    r'conv_input\.0$', r'pts_neck\.deblocks\.1\.0$',
    r'task_heads\.0\.heatmap\.1$'
]


@pytest.fixture(scope='module')
def centerpoint():
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    model, _ = build_detector(cfg)
    batches = calibration_batches(cfg, model, dict(frames=[NUSCENES_FRAME]))
    return model, batches


def test_submanifold_centre_used_once_per_voxel(centerpoint):
    model, batches = centerpoint
    target, = find_targets(model, ['pts_middle_encoder.conv_input.0'])
    voxels = batches[0]['inputs']['voxels']
    encoder = model.pts_middle_encoder

    def conv_input(batch):
        features = model.pts_voxel_encoder(voxels['voxels'],
                                           voxels['num_points'],
                                           voxels['coors'])
        encoder.conv_input(
            spconv.SparseConvTensor(features, voxels['coors'].int(),
                                    encoder.sparse_shape, 1))

    uses = measure_uses([target], batches, conv_input)
    num_voxels = len(voxels['coors'])
    centre = uses[target.name].flatten()[13].item()
    assert centre == num_voxels
    assert uses[target.name].sum() < 27 * num_voxels


def test_flops_budget_met_and_reported(centerpoint):
    model, batches = centerpoint
    pruner = RDWeightPruner(
        budget=0.3,
        num_levels=3,
        targets=dict(include=INCLUDE),
        budget_by='flops')
    targets = find_targets(model, INCLUDE)
    dense = measure_flops(model, targets, batches, HeadOutputs(model))
    result = pruner.prune(model, batches)
    # counted again on the pruned model: its non-zero weights and their uses
    uses = measure_uses(targets, batches, HeadOutputs(model))
    pruned = {t.name: layer_flops(uses[t.name], t.weight, t.weight != 0)
              for t in targets}
    assert sum(pruned.values()) <= 0.3 * sum(dense.values())
    report = allocation_report(result)
    assert report['budget']['unit'] == 'flops'
    totals = report['totals']
    assert totals['flops_before'] == pytest.approx(sum(dense.values()))
    assert totals['flops_after'] == pytest.approx(sum(pruned.values()))
    assert totals['params_after'] == sum(
        int((t.weight != 0).sum()) for t in targets)
    assert report['budget']['achieved'] == pytest.approx(
        sum(pruned.values()) / sum(dense.values()))
    kinds = {layer['kind'] for layer in report['layers']}
    assert {'spconv', 'conv', 'deconv'} <= kinds
    for layer in report['layers']:
        assert 0 < layer['flops_before']
        assert 0 <= layer['flops_after'] <= layer['flops_before']
