"""Pictures of a pruning run: distortion curves and the allocation.

Drawn with matplotlib's Agg canvas on a bare :class:`~matplotlib.figure.Figure`
so that no global backend is switched (a user's interactive session keeps its
own) and no pyplot state is touched.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter

from .fileio import atomic_write

CURVES_FILE = 'curves.png'
ALLOCATION_FILE = 'allocation.png'
PLOT_FILES = (CURVES_FILE, ALLOCATION_FILE)
ADDITIVITY_FILE = 'additivity.png'

_DPI = 120
_MAX_TICK_LABELS = 60
_MAX_VALUE_LABELS = 40


def layer_group(name: str) -> str:
    """The group of a layer: the first component of its module name."""
    return name.split('.', 1)[0]


def group_colors(names: Sequence[str]) -> Dict[str, str]:
    """One colour per layer group, in order of first appearance.

    Args:
        names: Layer names in model order.

    Returns:
        dict: Group name -> hex colour (``tab10``, then ``tab20`` cycled).
    """
    groups = list(dict.fromkeys(layer_group(n) for n in names))
    cmap = colormaps['tab10' if len(groups) <= 10 else 'tab20']
    return {g: to_hex(cmap(i % cmap.N)) for i, g in enumerate(groups)}


def _save(fig: Figure, path: str) -> None:
    """Render ``fig`` to PNG at ``path`` atomically."""
    FigureCanvasAgg(fig)

    def write(tmp: str) -> None:
        fig.savefig(tmp, format='png', dpi=_DPI)

    atomic_write(path, write)


def _group_legend(colors: Dict[str, str], marker: bool) -> List:
    """Legend handles, one per group (lines for curves, patches for bars)."""
    if marker:
        return [Line2D([], [], color=c, label=g) for g, c in colors.items()]
    return [Patch(color=c, label=g) for g, c in colors.items()]


def _budget_text(report: dict) -> str:
    """``'kept share asked 0.400, achieved 0.398'`` from ``report['budget']``."""
    budget = report.get('budget') or {}

    def fmt(value: Optional[float]) -> str:
        return 'n/a' if value is None else f'{value:.3f}'

    return (f'kept share asked {fmt(budget.get("asked"))}, '
            f'achieved {fmt(budget.get("achieved"))}')


def _distortion_scale(values: np.ndarray) -> Tuple[str, dict]:
    """A y scale for distortions: log, symlog or linear.

    Log when every finite value is positive; symlog (linear below the
    smallest positive magnitude) when there are zeros or negatives next to
    positive values; linear when nothing is non-zero.

    Args:
        values: All plotted distortions.

    Returns:
        tuple: The scale name and its keyword arguments.
    """
    finite = values[np.isfinite(values)]
    nonzero = np.abs(finite[finite != 0])
    if nonzero.size == 0:
        return 'linear', {}
    if np.all(finite > 0):
        return 'log', {}
    floor = 10.0**np.floor(np.log10(nonzero.min()))
    return 'symlog', dict(linthresh=floor)


def _curve_points(report: dict, curves: Dict[str, np.ndarray]
                  ) -> List[Tuple[dict, np.ndarray, np.ndarray]]:
    """Pair each reported layer with its curve's x (pruned share) and y.

    Raises:
        ValueError: If a curve's length differs from the level grid.
    """
    levels = np.asarray(report['levels'], dtype=float)
    points = []
    for layer in report['layers']:
        if layer['name'] not in curves:
            continue
        curve = np.asarray(curves[layer['name']], dtype=float)
        if curve.shape != levels.shape:
            raise ValueError(
                f'curve of {layer["name"]} has {curve.size} values for '
                f'{levels.size} levels')
        points.append((layer, levels, curve))
    return points


def plot_curves(report: dict, curves: Dict[str, np.ndarray],
                path: str) -> None:
    """Draw every layer's distortion curve with its chosen level marked.

    Args:
        report: What :func:`rdprune_mm.report.allocation_report` returned.
        curves: Layer name -> distortion at each of ``report['levels']``.
        path: The PNG to write (atomically).
    """
    points = _curve_points(report, curves)
    colors = group_colors([layer['name'] for layer in report['layers']])
    alpha = 0.9 if len(points) <= 20 else 0.5
    fig = Figure(figsize=(9, 6), layout='constrained')
    ax = fig.add_subplot()
    for layer, x, y in points:
        color = colors[layer_group(layer['name'])]
        ax.plot(x, y, color=color, alpha=alpha, linewidth=1.2)
        ax.plot(x[layer['level']], y[layer['level']], 'o', color=color,
                markeredgecolor='black', markeredgewidth=0.5, markersize=6)
    values = (np.concatenate([y for _, _, y in points])
              if points else np.zeros(0))
    scale, kwargs = _distortion_scale(values)
    ax.set_yscale(scale, **kwargs)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel('pruned share of the layer')
    ax.set_ylabel(f'distortion ({scale} scale)')
    ax.grid(True, which='major', alpha=0.3)
    handles = _group_legend(colors, marker=True)
    handles.append(Line2D([], [], marker='o', linestyle='', color='grey',
                          markeredgecolor='black', label='chosen level'))
    ax.legend(handles=handles, loc='upper left', fontsize='small')
    ax.set_title(f'Distortion curves of {len(points)} layers '
                 f'({_budget_text(report)})')
    _save(fig, path)


def _short_name(name: str) -> str:
    """The layer name without its group prefix (the colour shows it)."""
    rest = name.split('.', 1)
    return rest[1] if len(rest) > 1 else name


def _label_layers(ax, names: Sequence[str]) -> None:
    """Name the bars, or number them when there are too many to read."""
    index = np.arange(len(names))
    if len(names) <= _MAX_TICK_LABELS:
        ax.set_xticks(index, [_short_name(n) for n in names], rotation=90,
                      fontsize='x-small')
    else:
        ax.set_xlabel('layer index (model order)')
    ax.set_xlim(-0.6, len(names) - 0.4)


def plot_allocation(report: dict, path: str) -> None:
    """Bar chart of each layer's kept share (top) and cost (bottom).

    Args:
        report: What :func:`rdprune_mm.report.allocation_report` returned.
        path: The PNG to write (atomically).
    """
    layers = report['layers']
    names = [layer['name'] for layer in layers]
    colors = group_colors(names)
    bar_colors = [colors[layer_group(n)] for n in names]
    index = np.arange(len(layers))
    kept = [1.0 - layer['sparsity'] for layer in layers]
    cost = [layer['params_before'] for layer in layers]
    width = min(max(8.0, 0.22 * len(layers) + 2.0), 40.0)
    fig = Figure(figsize=(width, 7.5), layout='constrained')
    top, bottom = fig.subplots(2, 1, sharex=True,
                               gridspec_kw=dict(height_ratios=(3, 2)))
    bars = top.bar(index, kept, color=bar_colors, width=0.8)
    if len(layers) <= _MAX_VALUE_LABELS:
        top.bar_label(bars, fmt='%.2f', fontsize='x-small', padding=1)
    asked = (report.get('budget') or {}).get('asked')
    if asked is not None:
        top.axhline(asked, color='black', linestyle='--', linewidth=1,
                    label='asked budget')
    top.set_ylim(0, 1.08)
    top.set_ylabel('kept share of the layer')
    top.grid(True, axis='y', alpha=0.3)
    top.legend(handles=_group_legend(colors, marker=False) +
               top.get_legend_handles_labels()[0], fontsize='small',
               loc='upper left', bbox_to_anchor=(1.0, 1.0))
    bottom.bar(index, cost, color=bar_colors, width=0.8)
    if cost and max(cost) > 100 * max(min(cost), 1):
        bottom.set_yscale('log')
    bottom.set_ylabel('cost: parameters before pruning')
    bottom.grid(True, axis='y', alpha=0.3)
    _label_layers(bottom, names)
    fig.suptitle(f'Allocation of {len(layers)} layers: '
                 f'{_budget_text(report)}')
    _save(fig, path)


def write_plots(report: dict, curves: Dict[str, np.ndarray],
                work_dir: str) -> List[str]:
    """Write ``curves.png`` and ``allocation.png`` into ``work_dir``.

    Args:
        report: What :func:`rdprune_mm.report.allocation_report` returned.
        curves: ``PruningResult.curves``.
        work_dir: The folder beside ``allocation.json``.

    Returns:
        list[str]: The written paths.
    """
    curves_path = osp.join(work_dir, CURVES_FILE)
    allocation_path = osp.join(work_dir, ALLOCATION_FILE)
    plot_curves(report, curves, curves_path)
    plot_allocation(report, allocation_path)
    return [curves_path, allocation_path]


def plot_additivity(summary: dict, rd_point: dict, path: str) -> None:
    """Measured joint distortion of random allocations against the sum of
    the layers' curves, with the RD allocation as a star.

    Args:
        summary: :func:`rdprune_mm.additivity.summarize` output.
        rd_point: ``predicted`` and ``measured`` of the RD allocation.
        path: The PNG file to write.
    """
    fig = Figure(figsize=(6, 5), layout='tight')
    ax = fig.add_subplot()
    points = summary['points']
    budgets = sorted({p['budget'] for p in points})
    for budget in budgets:
        chosen = [p for p in points if p['budget'] == budget]
        ax.scatter([p['predicted'] for p in chosen],
                   [p['measured'] for p in chosen],
                   s=18, label=f'random, keep {budget:g}')
    ax.scatter([rd_point['predicted']], [rd_point['measured']], marker='*',
               s=160, color='black', label='RD allocation')
    values = [v for p in points for v in (p['predicted'], p['measured'])]
    values += [rd_point['predicted'], rd_point['measured']]
    positive = [v for v in values if v > 0]
    if positive:
        low, high = min(positive), max(positive)
        ax.plot([low, high], [low, high], 'k--', lw=0.8,
                label='measured = sum')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel('predicted: sum of the layers\' curves')
    ax.set_ylabel('measured: all layers pruned together')
    ax.set_title(f'Spearman {summary["spearman"]:.3f}, median ratio '
                 f'{summary["ratio_median"]:.3f}')
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_distortion_study(report: dict, path: str) -> None:
    """mAP loss against each distortion measure for random allocations,
    one panel per measure, coloured by FLOPs budget.

    Args:
        report: :func:`rdprune_mm.apis.analyze_detector_distortion` output.
        path: The PNG file to write.
    """
    measures = list(report['correlation'])
    columns = min(3, len(measures))
    rows = -(-len(measures) // columns)
    fig = Figure(figsize=(5 * columns, 4.5 * rows), layout='tight')
    dense = report['dense']['map_3d']
    allocations = report['allocations']
    budgets = sorted({a['budget'] for a in allocations})
    for index, name in enumerate(measures):
        ax = fig.add_subplot(rows, columns, index + 1)
        for budget in budgets:
            chosen = [a for a in allocations if a['budget'] == budget]
            ax.scatter([a['distortion'][name] for a in chosen],
                       [dense - a['map_3d'] for a in chosen], s=18,
                       label=f'keep {budget:.3g} of the FLOPs')
        if all(a['distortion'][name] > 0 for a in allocations):
            ax.set_xscale('log')
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(f'{name} on the calibration frames', fontsize=8)
        ax.set_ylabel('mAP 3D loss (moderate AP40)')
        ax.set_title(f'{name}\nSpearman '
                     f'{report["correlation"][name]["spearman"]:.3f}',
                     fontsize=9)
        ax.legend(fontsize=8)
    _save(fig, path)
