"""One rank of the distributed tests (tests/test_distributed.py starts one
per rank with the environment that torchrun sets).

Usage::

    python tests/dist_worker.py MODE OUT_DIR [-- PRUNE ARGS]

MODE:
    prune            ``tools/prune.py PRUNE ARGS``
    fail-prepare     the same, with a missing calibration frame on rank 1
    fail-curves      the same, with an error in rank 1's first curve pass
    finetune         ``tools/prune.py PRUNE ARGS`` (``--finetune``), with a
                     record of the masks and weights after every iteration
    masks-differ     rank 1 holds other masks than rank 0
    sketch           a gradient sketch of a small model on 3 batches, with
                     the batches this rank sketched and a digest of the rows
    curves           the curves of a small model's 3 layers on 4 batches,
                     with the batches this rank ran in curve passes

Writes ``OUT_DIR/rank<r>.json``: the exit code and what the mode records.
"""
import json
import os
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from rdprune_mm.cli import prune_main  # noqa: E402
from rdprune_mm.errors import PruningInputError  # noqa: E402
from rdprune_mm.fileio import fingerprint  # noqa: E402

RANK = int(os.environ['RANK'])


def fail_on_rank_1(module, name, error):
    """Make ``module.name`` raise ``error`` on rank 1."""
    original = getattr(module, name)

    def failing(*args, **kwargs):
        if RANK == 1:
            raise error
        return original(*args, **kwargs)

    setattr(module, name, failing)


def record_finetune(record: dict) -> None:
    """After every iteration: pruned weights zero, digests of the masks and
    of the weights."""
    from rdprune_mm.hooks import RDPruneHook
    from rdprune_mm.hooks.slimming import unwrap
    original = RDPruneHook.after_train_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        original(self, runner, batch_idx, data_batch, outputs)
        modules = dict(unwrap(runner.model).named_modules())
        zeros = all(bool((modules[n].weight[~m] == 0).all())
                    for n, m in self.masks.items())
        record.setdefault('iters', []).append(
            dict(iter=runner.iter,
                 zeros_held=zeros,
                 pruned=sum(int((~m).sum()) for m in self.masks.values()),
                 masks=fingerprint(sorted(self.masks.items())),
                 params=sum(p.numel() for p in runner.model.parameters()),
                 wrapper=type(runner.model).__name__,
                 weights=fingerprint(
                     unwrap(runner.model).state_dict().items()),
                 parameters=fingerprint(
                     (n, p.detach())
                     for n, p in unwrap(runner.model).named_parameters())))

    RDPruneHook.after_train_iter = after_train_iter


def masks_differ(record: dict) -> int:
    from rdprune_mm.distributed import close_distributed, init_distributed
    from rdprune_mm.hooks.rd_prune_hook import check_masks_everywhere
    started = init_distributed('pytorch')
    masks = {'conv': torch.tensor([True, False, RANK == 0])}
    try:
        check_masks_everywhere(masks)
    except PruningInputError as error:
        record['error'] = str(error)
        return 2
    finally:
        close_distributed(started)
    return 0


def sketch(record: dict) -> int:
    from torch import nn

    import rdprune_mm.sketch as sketch_module
    from rdprune_mm.distortion import NormalizedMSE
    from rdprune_mm.distributed import close_distributed, init_distributed
    from rdprune_mm.targets import find_targets
    started = init_distributed('pytorch')
    original = sketch_module._sketch_rows

    def recorded(targets, batches, indices, *args):
        record['sketched'] = list(indices)
        return original(targets, batches, indices, *args)

    sketch_module._sketch_rows = recorded
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
        batches = [torch.randn(4, 6, generator=torch.Generator().manual_seed(
            i)) for i in range(3)]

        def outputs(batch):
            return {'out': model(batch)}

        with torch.no_grad():
            reference = [outputs(b) for b in batches]
        result = sketch_module.GradientSketch.measure(
            find_targets(model), batches, outputs,
            NormalizedMSE().quadratic_weights(reference), 'sum',
            num_projections=4, seed=3)
        record['rows'] = fingerprint(sorted(result.gradients.items()))
        record['row_samples'] = result.row_samples.tolist()
    finally:
        close_distributed(started)
    return 0


def toy_curves(record: dict, out_dir: str) -> int:
    from torch import nn

    from rdprune_mm.curves import CurveCache, FrameSplit, measure_curves
    from rdprune_mm.distortion import NormalizedMSE
    from rdprune_mm.distributed import close_distributed, init_distributed
    from rdprune_mm.masks import magnitude_order, pruned_counts
    from rdprune_mm.targets import find_targets
    from rdprune_mm.units import WeightUnit
    started = init_distributed('pytorch')
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4),
                              nn.ReLU(), nn.Linear(4, 3))
        batches = [
            torch.randn(4, 6, generator=torch.Generator().manual_seed(i))
            for i in range(4)
        ]
        distortion = NormalizedMSE()
        ran = record.setdefault('ran', [])

        def outputs(indices):
            ran.extend(indices)
            return [{'out': model(batches[i])} for i in indices]

        everything = list(range(len(batches)))
        with torch.no_grad():
            reference = outputs(everything)
            ran.clear()
            frames = FrameSplit(
                len(batches), lambda indices: distortion.sample_errors(
                    [reference[i] for i in indices], outputs(indices)),
                lambda errors: distortion.reduce(reference, errors))
            units = [
                WeightUnit(t, magnitude_order(t.weight),
                           pruned_counts(t.num_params, [0, 0.3, 0.6, 1]))
                for t in find_targets(model)
            ]
            result = measure_curves(
                units,
                lambda: distortion(reference, outputs(everything)),
                CurveCache(osp.join(out_dir, 'cache'), 'key'),
                frames=frames)
        record['curves'] = {n: c.tolist() for n, c in result.items()}
    finally:
        close_distributed(started)
    return 0


def main() -> int:
    mode, out_dir = sys.argv[1:3]
    argv = sys.argv[4:] if len(sys.argv) > 3 and sys.argv[3] == '--' else []
    record: dict = {}
    if mode == 'fail-prepare':
        import rdprune_mm.apis.prepare as prepare
        fail_on_rank_1(
            prepare, 'calibration_batches',
            PruningInputError("calibration frame(s) not found: "
                              "['missing.bin']; fix calibration.frames"))
    elif mode == 'fail-curves':
        import rdprune_mm.curves as curves
        fail_on_rank_1(curves, 'check_finite',
                       RuntimeError('reading a frame failed'))
    elif mode == 'finetune':
        record_finetune(record)
    if mode == 'masks-differ':
        rc = masks_differ(record)
    elif mode == 'sketch':
        rc = sketch(record)
    elif mode == 'curves':
        rc = toy_curves(record, out_dir)
    else:
        rc = prune_main(argv, prog='prune.py')
    with open(osp.join(out_dir, f'rank{RANK}.json'), 'w') as f:
        json.dump(dict(record, rc=rc), f)
    return rc


if __name__ == '__main__':
    sys.exit(main())
