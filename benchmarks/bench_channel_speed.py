"""CPU latency of channel-pruned (slim) LiDAR detectors against the dense ones.

For each detector (CenterPoint on the reduced 256 x 256 x 41 grid of
``configs/centerpoint/rd-channel_centerpoint_voxel02-quick_nus.py`` on the
real nuScenes frame; on the real KITTI frame 000008: SECOND, PointPillars
(hard voxels; ``pointpillars_dv``: dynamic voxels), all three mmdet3d's KITTI
car configs, and PV-RCNN, mmdet3d's KITTI 3-class config; with ``--full``
also CenterPoint voxel 0.1 on its full 1024 x 1024 x 41 grid) the script
builds the model with random weights and
BatchNorm statistics set from the frame; ``--config CONFIG --checkpoint
CKPT`` adds a trained detector (e.g. the small SECOND that ``make demo``
trains, with ``configs/kitti_like/rd-channel_second_tiny_kitti-like.py``).
Then, for every FLOPs reduction (2x and 4x by default):

1. allocates channels under the FLOPs budget ``1 / reduction``: with
   :class:`RDChannelPruner` (``--allocation rd``, ``--num-levels`` per
   curve, curves cached in the work dir and shared by both budgets) or with
   one kept share for every group (``--allocation uniform``, the largest
   share whose exact FLOPs meet the budget; no curves: speed does not depend
   on which channels are kept), with one threshold on the filter norms
   across groups (``--allocation global``), or with the least modelled time
   whose FLOPs meet the budget, distortion ignored (``--allocation
   fastest``: what any allocation could reach on this machine); the three
   baselines are :class:`ChannelBaselinePruner`'s allocations. With ``--allocation rd --budget-by
   latency`` the pruner's budget is a share of the layers' measured time
   (:mod:`rdprune_mm.channels.latency`, timed once and cached), the largest
   share (bisection, ``--search-steps``) whose allocation still removes the
   asked FLOPs. ``--budget-by flops --time-over-flops R`` keeps the FLOPs
   budget and caps the layers' modelled time at ``R`` times it (the
   pruner's ``latency_budget``);
2. slims a copy (:func:`rdprune_mm.channels.slim_copy`) and checks that its
   head outputs equal the masked model's (a two-stage model's RoI head on
   the masked model's proposals);
3. times, interleaved with the dense model and the other slim models (so
   that load from other processes hits all alike), ``--repeats`` rounds
   after ``--warmup`` rounds of ``model(**batch, mode='predict')`` on the
   preprocessed frame (the network, box decoding and NMS; voxelization is
   part of the preprocessing and not timed; every pass on clones of the
   input tensors, which mmdet3d's PillarFeatureNet writes into), and of the
   network alone (up to the head outputs,
   :class:`rdprune_mm.head_outputs.HeadOutputs`; a two-stage model's RoI
   head on the proposals of its first pass).

FLOPs are measured on both models (2 x multiply-accumulates of every weight
layer, sparse convs from spconv's active pairs). The table gives the FLOPs
reduction, the speed-up (median dense latency / median slim latency) and
their ratio, the efficiency (goal >= 0.7). It also times the model slimmed
to one channel per group: the time channels do not change (index
generation, voxel and box bookkeeping, decoding and NMS), so dense over
that is the most speed-up any channel allocation can reach. RD rows also
give the measured distortion of the allocation and the share of the
layers' modelled time it keeps. Writes ``speed.md`` and ``speed.json`` into
``--work-dir``.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_channel_speed.py \
        [--models centerpoint second pointpillars pointpillars_dv pv_rcnn] \
        [--full] [--reductions 2 4] \
        [--allocation rd|uniform|global|fastest] [--budget-by flops|latency] \
        [--time-over-flops 1.25] \
        [--num-levels 5] [--repeats 5] \
        [--work-dir work_dirs/bench_channel_speed]
"""
from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

import rdprune_mm
from rdprune_mm.apis import prepare_detector
from rdprune_mm.channels import find_channel_groups, slim_copy
from rdprune_mm.errors import PruningInputError
from rdprune_mm.fileio import write_json, write_text
from rdprune_mm.flops import measure_flops
from rdprune_mm.head_outputs import HeadOutputs, clone_tensors
from rdprune_mm.pruners import ChannelBaselinePruner, RDChannelPruner
from rdprune_mm.targets import find_targets

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = dict(
    centerpoint=osp.join(REPO, 'configs', 'centerpoint',
                         'rd-channel_centerpoint_voxel02-quick_nus.py'),
    second=osp.join(REPO, 'configs', 'second',
                    'rd-channel_second_hv_secfpn_kitti-3d-car.py'),
    pointpillars=osp.join(
        REPO, 'configs', 'pointpillars',
        'rd-channel_pointpillars_hv_secfpn_kitti-3d-car.py'),
    pointpillars_dv=osp.join(
        REPO, 'configs', 'pointpillars',
        'rd-channel_pointpillars_dv_secfpn_kitti-3d-car.py'),
    pv_rcnn=osp.join(REPO, 'configs', 'pv_rcnn',
                     'rd-channel_pv_rcnn_kitti-3d-3class.py'),
    centerpoint_full=osp.join(
        REPO, 'configs', 'centerpoint',
        'rd-channel_centerpoint_voxel01_second_secfpn_nus.py'))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='CPU latency of slim (channel-pruned) detectors against '
        'the dense ones at given FLOPs reductions.')
    parser.add_argument('--models', nargs='*', default=['centerpoint',
                                                        'second'],
                        choices=['centerpoint', 'second', 'pointpillars',
                                 'pointpillars_dv', 'pv_rcnn'])
    parser.add_argument('--full', action='store_true',
                        help='also CenterPoint voxel 0.1 on its full grid')
    parser.add_argument('--config',
                        help='also this channel-pruning config (its '
                        'calibration frames), with --checkpoint')
    parser.add_argument('--checkpoint',
                        help='trained weights of --config')
    parser.add_argument('--reductions', nargs='+', type=float,
                        default=[2.0, 4.0],
                        help='FLOPs reductions (budget = 1 / reduction)')
    parser.add_argument('--allocation',
                        choices=['rd', 'uniform', 'global', 'fastest'],
                        default='rd',
                        help='rd: RDChannelPruner; uniform, global, '
                        'fastest: ChannelBaselinePruner (uniform: one kept '
                        'share for every group; global: one threshold on '
                        'the filter norms; fastest: the least modelled time '
                        'at the FLOPs budget, distortion ignored (what any '
                        'allocation could reach)')
    parser.add_argument('--budget-by', choices=['flops', 'latency'],
                        default='flops',
                        help='what the RD pruner\'s budget counts: FLOPs, '
                        'or the layers\' measured time (the budget then is '
                        'the largest time share that removes the FLOPs)')
    parser.add_argument('--time-over-flops', type=float,
                        help='with --budget-by flops, also cap the layers\' '
                        'modelled time at this multiple of the FLOPs budget '
                        '(RDChannelPruner latency_budget; e.g. 1.25 asks '
                        'the pruned layers for a speed-up of 0.8x the FLOPs '
                        'reduction)')
    parser.add_argument('--search-steps', type=int, default=8,
                        help='bisection steps of --budget-by latency')
    parser.add_argument('--num-levels', type=int, default=5,
                        help='levels per curve of --allocation rd')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--work-dir',
                        default=osp.join('work_dirs', 'bench_channel_speed'))
    args = parser.parse_args(argv)
    if bool(args.config) != bool(args.checkpoint):
        parser.error('--config and --checkpoint go together')
    if args.time_over_flops is not None and (
            args.allocation != 'rd' or args.budget_by != 'flops'
            or args.time_over_flops <= 0):
        parser.error('--time-over-flops is a positive multiple and goes '
                     'with --allocation rd --budget-by flops')
    return args


# ------------------------------------------------------------ allocation
def latency_allocation(args, model, batches, flops_budget: float,
                       cache_dir: str):
    """RD under the largest time budget whose allocation keeps at most
    ``flops_budget`` of the FLOPs (bisection on the time share)."""
    logger = MMLogger.get_current_instance()
    best, low, high = None, 0.0, 1.0
    for _ in range(args.search_steps):
        share = 0.5 * (low + high)
        masked = copy.deepcopy(model)
        try:
            result = RDChannelPruner(
                budget=share, num_levels=args.num_levels,
                budget_by='latency').prune(masked, batches,
                                           cache_dir=cache_dir)
        except PruningInputError:  # below the least time min_keep allows
            low = share
            continue
        if result.flops_kept <= flops_budget:
            best, low = (masked, result), share
        else:
            high = share
    if best is None:
        raise RuntimeError(
            f'no time budget removes {1 / flops_budget:g}x of the FLOPs; '
            'raise --search-steps')
    masked, result = best
    logger.info(f'time share {result.budget:.4f}: keeps '
                f'{result.flops_kept:.4f} of the FLOPs and '
                f'{result.latency_kept:.4f} of the modelled time')
    return masked, result.keeps, result


def allocate(args, model, batches, budget: float, cache_dir: str):
    """A masked copy of ``model``, its keep-masks and the RD pruning
    result (None for the baselines) under ``budget``."""
    if args.allocation == 'rd' and args.budget_by == 'latency':
        return latency_allocation(args, model, batches, budget, cache_dir)
    masked = copy.deepcopy(model)
    if args.allocation == 'rd':
        cap = (None if args.time_over_flops is None else
               min(1.0, args.time_over_flops * budget))
        pruner = RDChannelPruner(
            budget=budget, num_levels=args.num_levels, budget_by='flops',
            latency_budget=cap)
        result = pruner.prune(masked, batches, cache_dir=cache_dir)
        return masked, result.keeps, result
    baseline = ChannelBaselinePruner(
        allocation=args.allocation, budget=budget,
        num_levels=args.num_levels)
    return masked, baseline.prune(masked, batches,
                                  cache_dir=cache_dir).keeps, None


def allocation_fields(result) -> dict:
    """Distortion and modelled time of an RD allocation (None without
    one)."""
    if result is None:
        return dict(predicted_distortion=None, measured_distortion=None,
                    modelled_time_kept=None, latency_budget=None)
    return dict(predicted_distortion=result.predicted_distortion,
                measured_distortion=result.measured_distortion,
                modelled_time_kept=result.latency_kept,
                latency_budget=(result.budget if result.budget_by ==
                                'latency' else result.latency_budget))


# ------------------------------------------------------------ timing
def total_flops(model, batches) -> float:
    return sum(
        measure_flops(model, find_targets(model), batches,
                      HeadOutputs(model)).values())


def runners(model, batch) -> Dict[str, Callable[[], object]]:
    head = HeadOutputs(model)
    return dict(
        predict=lambda: model(
            **{**batch, 'inputs': clone_tensors(batch['inputs'])},
            mode='predict'),
        network=lambda: head(batch))


@torch.no_grad()
def time_models(models: Dict[str, torch.nn.Module], batch: dict,
                repeats: int, warmup: int) -> Dict[str, Dict[str, float]]:
    """Median seconds per frame of every model and runner, interleaved."""
    calls = {name: runners(model, batch) for name, model in models.items()}
    seconds: Dict[str, Dict[str, List[float]]] = {
        name: {kind: [] for kind in run} for name, run in calls.items()}
    for round_ in range(warmup + repeats):
        for name, run in calls.items():
            for kind, call in run.items():
                start = time.perf_counter()
                call()
                if round_ >= warmup:
                    seconds[name][kind].append(time.perf_counter() - start)
    return {name: {kind: statistics.median(values)
                   for kind, values in kinds.items()}
            for name, kinds in seconds.items()}


def max_difference(a: Dict[str, torch.Tensor],
                   b: Dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def masked_vs_slim(masked, slim, batch: dict) -> float:
    """Largest difference of the head outputs; a two-stage slim model's
    RoI head gets the masked model's proposals (RPN scores equal up to
    rounding could rank other proposals first)."""
    masked_head = HeadOutputs(masked)
    reference = masked_head(batch)
    slim_head = HeadOutputs(slim)
    slim_head._proposals = masked_head._proposals
    return max_difference(reference, slim_head(batch))


@torch.no_grad()
def bench_model(args, name: str, config: str,
                checkpoint: Optional[str] = None) -> List[dict]:
    logger = MMLogger.get_current_instance()
    cfg = Config.fromfile(config)
    model, _, batches = prepare_detector(cfg, checkpoint, 'cpu', seed=0)
    batch = batches[0]
    cache_dir = osp.join(args.work_dir, 'curves', name)
    dense_flops = total_flops(model, batches)
    # one channel in every group: the time that channels do not change
    floor, _ = slim_copy(model, {g.name: g.keep_mask(1)
                                 for g in find_channel_groups(model)})
    models = {'dense': model, 'floor': floor}
    rows = []
    for reduction in args.reductions:
        start = time.perf_counter()
        masked, keeps, result = allocate(args, model, batches,
                                         1.0 / reduction, cache_dir)
        slim, _ = slim_copy(masked, keeps)
        difference = masked_vs_slim(masked, slim, batch)
        key = f'{reduction:g}x'
        models[key] = slim
        rows.append(dict(
            model=name, config=osp.relpath(config, REPO),
            checkpoint=checkpoint,
            reduction_asked=reduction, allocation=args.allocation,
            flops_dense=dense_flops, flops_slim=total_flops(slim, batches),
            params_dense=sum(p.numel() for p in model.parameters()),
            params_slim=sum(p.numel() for p in slim.parameters()),
            masked_vs_slim_max_abs=difference,
            **allocation_fields(result),
            allocation_seconds=time.perf_counter() - start, key=key))
        del masked
    logger.info(f'{name}: timing {list(models)} ({args.warmup} warm-up + '
                f'{args.repeats} rounds, interleaved)')
    medians = time_models(models, batch, args.repeats, args.warmup)
    for row in rows:
        row['flops_reduction'] = row['flops_dense'] / row['flops_slim']
        for kind in ('predict', 'network'):
            dense, slim = medians['dense'][kind], medians[row['key']][kind]
            row[f'{kind}_dense_s'] = dense
            row[f'{kind}_slim_s'] = slim
            row[f'{kind}_speedup'] = dense / slim
            row[f'{kind}_efficiency'] = (dense / slim) / row[
                'flops_reduction']
            row[f'{kind}_floor_s'] = medians['floor'][kind]
            row[f'{kind}_most_speedup'] = dense / medians['floor'][kind]
    return rows


def markdown(rows: Sequence[dict]) -> str:
    lines = [
        '| model | FLOPs dense -> slim (G) | FLOPs reduction | params '
        'dense -> slim (M) | predict dense / slim (s) | predict speed-up | '
        'efficiency | network dense / slim (s) | network speed-up | '
        'efficiency | predict, one channel per group (s) | most speed-up | '
        'distortion (measured) | layers\' time kept (modelled) |',
        '|' + '---|' * 14
    ]

    def optional(value) -> str:
        return '' if value is None else f'{value:.3f}'

    for row in rows:
        lines.append(
            f"| {row['model']} {row['key']} | {row['flops_dense'] / 1e9:.2f}"
            f" -> {row['flops_slim'] / 1e9:.2f} | "
            f"{row['flops_reduction']:.2f}x | "
            f"{row['params_dense'] / 1e6:.2f} -> "
            f"{row['params_slim'] / 1e6:.2f} | "
            f"{row['predict_dense_s']:.3f} / {row['predict_slim_s']:.3f} | "
            f"{row['predict_speedup']:.2f}x | "
            f"{row['predict_efficiency']:.2f} | "
            f"{row['network_dense_s']:.3f} / {row['network_slim_s']:.3f} | "
            f"{row['network_speedup']:.2f}x | "
            f"{row['network_efficiency']:.2f} | "
            f"{row['predict_floor_s']:.3f} | "
            f"{row['predict_most_speedup']:.2f}x | "
            f"{optional(row['measured_distortion'])} | "
            f"{optional(row['modelled_time_kept'])} |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    MMLogger.get_instance('bench_channel_speed', logger_name='rdprune_mm')
    names = list(args.models) + (['centerpoint_full'] if args.full else [])
    rows = []
    for name in names:
        rows.extend(bench_model(args, name, CONFIGS[name]))
    if args.config:
        name = osp.splitext(osp.basename(args.config))[0] + '_trained'
        rows.extend(
            bench_model(args, name, args.config, args.checkpoint))
    table = markdown(rows)
    header = (
        f'CPU: {platform.processor() or platform.machine()}, torch '
        f'{torch.__version__}, {torch.get_num_threads()} thread(s), '
        f'allocation {args.allocation}'
        + (f' ({args.num_levels} levels, budget by {args.budget_by}'
           + ('' if args.time_over_flops is None else
              f', layers\' time capped at {args.time_over_flops:g} x the '
              'FLOPs budget') + ')'
           if args.allocation == 'rd' else '')
        + f', median of {args.repeats} after {args.warmup} warm-up; '
        'speed-up = dense / slim latency; efficiency = speed-up / FLOPs '
        'reduction (goal >= 0.7)\n\n')
    print()
    print(header + table)
    write_text(osp.join(args.work_dir, 'speed.md'), header + table)
    write_json(
        osp.join(args.work_dir, 'speed.json'),
        dict(args=vars(args), rdprune_mm_version=rdprune_mm.__version__,
             torch_threads=torch.get_num_threads(), rows=rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
