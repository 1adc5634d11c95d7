"""The demo's report: the results table and the machine it ran on."""
from __future__ import annotations

import os
import platform
from typing import Optional

import mmcv
import mmdet
import mmdet3d
import mmengine
import numpy
import torch

import rdprune_mm
from .configs import CLASSES

try:
    import spconv
except ImportError:  # pragma: no cover
    spconv = None


def format_ap(value: Optional[float]) -> str:
    """An AP with two decimals, ``-`` when missing."""
    return '-' if value is None else f'{value:.2f}'


def format_count(value: float) -> str:
    """A count with a k, M or G suffix, e.g. ``1.25 M``."""
    if value >= 1e9:
        return f'{value / 1e9:.2f} G'
    if value >= 1e6:
        return f'{value / 1e6:.2f} M'
    if value >= 1e3:
        return f'{value / 1e3:.1f} k'
    return f'{value:.0f}'


def results_table(results: dict) -> str:
    """The markdown table: dense against one-shot and fine-tuned pruning.

    Args:
        results: What :func:`rdprune_mm.demo.run` writes to
            ``results.json``.

    Returns:
        str: The table and a note on the budget, FLOPs and latency.
    """
    prune = results['prune']
    budget = prune['budget']
    totals = prune['totals']
    evals = [('dense', results['eval_dense']),
             ('RD one-shot', results['eval_oneshot']),
             ('RD + fine-tuning', results['eval_pruned'])]
    header = '| | ' + ' | '.join(name for name, _ in evals) + ' |'
    lines = [header, '|---|' + '---:|' * len(evals)]
    for name in CLASSES + ('Overall', ):
        for kind in ('3D', 'BEV'):
            label = ('mAP' if name == 'Overall' else f'{name} AP') + \
                f' {kind} (moderate, AP40)'
            lines.append(f'| {label} | ' + ' | '.join(
                format_ap(e['ap'][name][kind]) for _, e in evals) + ' |')
    params = results['params']
    lines.append(
        '| parameters (nonzero) | ' +
        f'{format_count(params["dense"]["nonzero"])} | ' +
        f'{format_count(params["oneshot"]["nonzero"])} | ' +
        f'{format_count(params["pruned"]["nonzero"])} |')
    kept_params = totals['params_after'] / totals['params_before']
    kept_flops = totals['flops_kept']
    lines.append(
        '| prunable weights kept | 1 | ' +
        f'{kept_params:.3f} | {kept_params:.3f} |')
    lines.append(
        '| FLOPs of the prunable layers per frame | ' +
        f'{format_count(totals["flops_before"])} | ' +
        f'{format_count(totals["flops_after"])} ({kept_flops:.3f}) | ' +
        f'{format_count(totals["flops_after"])} ({kept_flops:.3f}) |')
    lat = results['latency']
    lines.append(
        f'| CPU latency per frame, median of {lat["frames"]} '
        f'({lat["threads"]} threads) | {lat["dense"]["median_ms"]:.0f} ms | '
        f'{lat["oneshot"]["median_ms"]:.0f} ms | '
        f'{lat["pruned"]["median_ms"]:.0f} ms |')
    lines.append(
        '| head-output distortion (NormalizedMSE) | 0 | '
        f'{totals["measured_distortion"]:.4g} | - |')
    notes = [
        '',
        f'Budget: keep {budget["asked"]} of the prunable layers\' '
        f'{budget["unit"]} (achieved {budget["achieved"]:.4f}). FLOPs are '
        '2 x multiply-accumulates of the conv weights on the calibration '
        'frames (sparse convs: spconv\'s active pairs). Unstructured '
        'pruning leaves the dense kernels dense, so the latency does not '
        'drop; the FLOPs count is what a sparse kernel would save.',
    ]
    return '\n'.join(lines + notes) + '\n'


def environment() -> dict:
    """The machine, its threads and the versions of the packages used.

    Returns:
        dict: ``platform``, ``processor``, ``cpu_count``, ``torch_threads``,
        ``omp_num_threads`` and ``versions``.
    """
    versions = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=numpy.__version__,
        mmengine=mmengine.__version__,
        mmcv=mmcv.__version__,
        mmdet=mmdet.__version__,
        mmdet3d=mmdet3d.__version__,
        spconv=None if spconv is None else spconv.__version__,
        rdprune_mm=rdprune_mm.__version__)
    return dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
        versions=versions)
