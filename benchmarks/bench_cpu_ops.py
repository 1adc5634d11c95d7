"""Time a LiDAR detector on CPU, op by op: predict and one training step.

Builds the detector from mmdet3d's shipped config (random weights, seed 0)
and runs the real KITTI frame ../shared/data/lidar/000008.bin through the
config's own pipelines (the training pipeline without database sampling).
Every CPU kernel of :mod:`rdprune_mm.cpu_ops` is timed while it runs; the
table shows each op's calls and seconds beside the total, and the rest
(convolutions, losses, Python) as one line. A second table times our CPU
``nms_rotated`` against mmcv's own CPU kernel on the same boxes (the RPN's
proposals before NMS), measured in the same run. Prints; asserts nothing.

Usage:
    .venv/bin/python benchmarks/bench_cpu_ops.py
        [--config pv_rcnn/pv_rcnn_8xb2-80e_kitti-3d-3class.py] [--repeats 3]
"""
from __future__ import annotations

import argparse
import collections
import os.path as osp
import platform
import sys
import time
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List

import torch

import rdprune_mm
import rdprune_mm.cpu  # noqa: F401  (CPU kernels, timed below)
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import set_random_seed
from rdprune_mm.calibration import dataloader_batches
from rdprune_mm.cpu_ops import CPU_KERNELS, CPU_OVERRIDES
from rdprune_mm.cpu_ops.dispatch import _replace_references

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
KITTI_FRAME = dict(
    data_root=osp.join(osp.dirname(REPO), 'shared', 'data', 'lidar') + '/',
    ann_file='000008.pkl',
    data_prefix=dict(pts='', img=''))

Timings = Dict[str, List[float]]


def _timed(name: str, func: Callable, timings: Timings) -> Callable:

    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            timings[name].append(time.perf_counter() - start)

    return run


@contextmanager
def timed_kernels(timings: Timings) -> Iterator[None]:
    """Record the seconds of every call of every registered CPU kernel."""
    saved = dict(CPU_KERNELS), dict(CPU_OVERRIDES)
    for name, func in saved[0].items():
        CPU_KERNELS[name] = _timed(name, func, timings)
    for (module, qualname), func in saved[1].items():
        CPU_OVERRIDES[(module, qualname)] = _timed(qualname, func, timings)
    try:
        yield
    finally:
        CPU_KERNELS.update(saved[0])
        CPU_OVERRIDES.update(saved[1])


def _train_step(model, data, optimizer) -> None:
    model.train()
    batch = model.data_preprocessor(data, training=True)
    losses = model(**batch, mode='loss')
    loss, _ = model.parse_losses(losses)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@torch.no_grad()
def _predict(model, data) -> None:
    model.eval()
    batch = model.data_preprocessor(data, training=False)
    model(**batch, mode='predict')


def _measure(step: Callable[[], None], repeats: int):
    """Median wall time of ``step`` and the kernel times of that run."""
    runs = []
    for _ in range(repeats):
        timings: Timings = collections.defaultdict(list)
        with timed_kernels(timings):
            start = time.perf_counter()
            step()
            total = time.perf_counter() - start
        runs.append((total, timings))
    runs.sort(key=lambda run: run[0])
    return runs[len(runs) // 2]


def _print_table(title: str, total: float, timings: Timings) -> None:
    print(f'\n{title}: {total:.2f} s (median run)')
    print(f'| {"op":42s} | calls | seconds | share |')
    print(f'|{"-" * 44}|-------|---------|-------|')
    rows = sorted(timings.items(), key=lambda item: -sum(item[1]))
    for name, times in rows:
        print(f'| {name:42s} | {len(times):5d} | {sum(times):7.3f} | '
              f'{sum(times) / total:5.1%} |')
    rest = total - sum(sum(t) for t in timings.values())
    print(f'| {"everything else (convs, losses, Python)":42s} |       | '
          f'{rest:7.3f} | {rest / total:5.1%} |')


def _rpn_boxes(model, data) -> torch.Tensor:
    """The RPN's decoded boxes before NMS (BEV x, y, w, l, yaw)."""
    captured = {}
    original = sys.modules['mmcv.ops.nms'].nms_rotated

    def record(dets, scores, iou_threshold, labels=None, clockwise=True):
        captured.setdefault('boxes', (dets.clone(), scores.clone()))
        return original(dets, scores, iou_threshold, labels, clockwise)
    _replace_references(original, record)
    try:
        _train_step(model, data, torch.optim.SGD(model.parameters(), lr=0))
    finally:
        _replace_references(record, original)
    return captured.get('boxes')


def _compare_nms(boxes, scores, repeats: int) -> None:
    from mmcv.utils import ext_loader
    mmcv_ext = ext_loader.load_ext('_ext', ['nms_rotated'])
    ours = CPU_KERNELS['nms_rotated']
    order = scores.sort(descending=True)[1]
    args = (boxes, scores, order, boxes[order], scores.new_empty(
        0, dtype=torch.int), 0.8, False)

    def best_of(func):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            keep = func(*args)
            times.append(time.perf_counter() - start)
        return min(times), keep

    mmcv_time, mmcv_keep = best_of(mmcv_ext.nms_rotated)
    our_time, our_keep = best_of(ours)
    differ = set(mmcv_keep.tolist()) ^ set(our_keep.tolist())
    print(f'\nnms_rotated on the RPN\'s {len(boxes):,} training proposals '
          '(IoU 0.8, best of runs):')
    print('| kernel | seconds | kept | speed-up |\n|---|---|---|---|')
    print(f'| mmcv CPU | {mmcv_time:.3f} | {len(mmcv_keep)} | 1.0x |')
    print(f'| rdprune_mm CPU | {our_time:.3f} | {len(our_keep)} | '
          f'{mmcv_time / our_time:.1f}x |')
    print(f'boxes kept by one kernel only: {len(differ)}' + (
        ' (random weights decode degenerate boxes, up to 1e7 m long, on '
        "which mmcv's float32 IoU breaks down; see rdprune_mm/cpu_ops/"
        'nms_rotated.py)' if differ else ''))


def _compare_rotate_iou(num: int, repeats: int) -> None:
    """The KITTI metric's CPU rotated-box IoU (for mmdet3d's CUDA-only
    ``rotate_iou_gpu_eval``) against mmcv's CPU ``box_iou_rotated`` on the
    same ``num`` x ``num`` boxes."""
    import numpy as np
    from mmcv.ops import box_iou_rotated
    from rdprune_mm.cpu_ops.kitti_eval import rotate_iou_cpu_eval
    rng = np.random.default_rng(7)
    boxes = np.concatenate([
        rng.uniform(-40, 40, (num, 2)), rng.uniform(0.5, 4, (num, 2)),
        rng.uniform(-np.pi, np.pi, (num, 1))
    ], 1).astype(np.float32)
    rotate_iou_cpu_eval(boxes[:2], boxes[:2])  # numba compiles

    def best_of(func):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            func()
            times.append(time.perf_counter() - start)
        return min(times)

    ours = best_of(lambda: rotate_iou_cpu_eval(boxes, boxes))
    tensor = torch.from_numpy(boxes)
    mmcv_time = best_of(
        lambda: box_iou_rotated(tensor, tensor, clockwise=False))
    print(f'\nrotated IoU of {num:,} x {num:,} BEV boxes (KITTI metric): '
          f'{ours * 1e3:.1f} ms, mmcv CPU box_iou_rotated {mmcv_time * 1e3:.1f}'
          f' ms, ratio {mmcv_time / ours:.2f}x')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--config',
        default='pv_rcnn/pv_rcnn_8xb2-80e_kitti-3d-3class.py',
        help='config path inside mmdet3d/configs')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument(
        '--skip-nms-baseline',
        action='store_true',
        help="skip mmcv's own CPU nms_rotated (about a minute)")
    args = parser.parse_args()

    import mmdet3d
    from mmdet3d.registry import MODELS
    cfg = Config.fromfile(
        osp.join(osp.dirname(mmdet3d.__file__), '.mim', 'configs',
                 args.config))
    init_default_scope('mmdet3d')
    set_random_seed(0)
    model = MODELS.build(cfg.model)
    test_data = dataloader_batches(cfg, 'val_dataloader', KITTI_FRAME)[0]
    train_data = dataloader_batches(
        cfg, 'train_dataloader', KITTI_FRAME,
        skip_transforms=('ObjectSample', ))[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    print(f'{args.config} on KITTI 000008 ({len(test_data["inputs"]["points"][0]):,} '
          f'points after the test pipeline), random weights, seed 0')
    print(f'machine: {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} torch threads; torch {torch.__version__}'
          f', rdprune_mm {rdprune_mm.__version__}')
    _predict(model, test_data)  # warm-up: numba compiles, caches fill
    _train_step(model, train_data, optimizer)

    total, timings = _measure(lambda: _predict(model, test_data),
                              args.repeats)
    _print_table('predict', total, timings)
    total, timings = _measure(
        lambda: _train_step(model, train_data, optimizer), args.repeats)
    _print_table('training step (loss, backward, AdamW step)', total,
                 timings)

    if not args.skip_nms_baseline:
        captured = _rpn_boxes(model, train_data)
        if captured is not None:
            _compare_nms(*captured, repeats=1)
    _compare_rotate_iou(2000, args.repeats)


if __name__ == '__main__':
    main()
