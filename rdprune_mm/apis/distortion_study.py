"""Which distortion measure follows detection accuracy: what
``tools/analyze_distortion.py`` runs.

Random allocations at several FLOPs budgets are applied to a trained
detector one at a time (magnitude masks inside each layer). For each one,
every distortion measure is computed on the calibration frames and the
one-shot mAP is measured with the config's test evaluator (KittiMetric) on
the val frames. The Spearman correlation between a measure and the mAP loss
says how well the measure ranks allocations by the accuracy they cost,
which is all the allocator needs of it.
"""
from __future__ import annotations

import ast
import os.path as osp
import pickle
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from ..additivity import measure_allocation
from ..errors import PruningInputError
from ..fileio import atomic_write, read_json, write_json, write_text
from ..finetune import prepare_runner_process
from ..flops import flops_cost_table, measure_uses
from ..head_outputs import HeadOutputs
from ..masks import magnitude_order, pruned_counts
from ..plots import plot_distortion_study
from ..progress import progress_bar
from ..registry import DISTORTIONS, PRUNERS
from .prepare import prepare_detector
from .prune import config_with_name, default_work_dir

#: The measures compared by default.
DEFAULT_MEASURES = ('NormalizedMSE', 'DecodedDistortion')
#: KittiMetric's classes of the per-class columns.
CLASSES = ('Pedestrian', 'Cyclist', 'Car')
#: The allocations measured so far, saved after each one (a rerun with the
#: same settings reuses them).
RECORDS_FILE = 'allocations.json'


def _check(budgets: Sequence[float], samples: int, val_frames: int) -> None:
    if any(not 0 < b < 1 for b in budgets):
        raise PruningInputError(
            f'--budgets {list(budgets)}: each must be in (0, 1), the share '
            'of FLOPs to keep')
    if samples < 2:
        raise PruningInputError(f'--samples {samples}: give 2 or more')
    if val_frames is not None and val_frames < 1:
        raise PruningInputError(f'--val-frames {val_frames}: give 1 or more')


def measure_config(spec: str) -> dict:
    """The distortion config of ``'Type'`` or ``'Type(key=value, ...)'``
    (literal values), e.g. ``'DecodedDistortion(score_weight=0.25)'``."""
    problem = PruningInputError(
        f'--measures {spec!r}: give a registered distortion as Type or '
        "Type(key=value, ...), e.g. 'DecodedDistortion(score_weight=0.25)'")
    try:
        node = ast.parse(spec.strip(), mode='eval').body
    except SyntaxError:
        raise problem from None
    if isinstance(node, ast.Name):
        name, kwargs = node.id, {}
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and not node.args and all(k.arg for k in node.keywords)):
        name = node.func.id
        try:
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise problem from None
    else:
        raise problem
    if name not in DISTORTIONS:
        raise PruningInputError(
            f'--measures {spec!r}: {name} is not a registered distortion; '
            f'registered: {", ".join(sorted(DISTORTIONS.module_dict))}')
    return dict(type=name, **kwargs)


def measure_spec(config: Optional[dict]) -> str:
    """The inverse of :func:`measure_config`: ``'Type'`` or
    ``'Type(key=value, ...)'`` (keys sorted) of a distortion config (None:
    the pruners' default, ``NormalizedMSE``)."""
    config = dict(config or dict(type='NormalizedMSE'))
    name = config.pop('type')
    if not config:
        return name
    return name + '(' + ', '.join(f'{k}={v!r}'
                                  for k, v in sorted(config.items())) + ')'


def overall_map(metrics: Dict[str, float], kind: str = '3D') -> float:
    """Moderate AP40 over classes from KittiMetric's output."""
    for key, value in metrics.items():
        if key.endswith(f'KITTI/Overall_{kind}_AP40_moderate'):
            return float(value)
    raise PruningInputError(
        'the test evaluator gave no KITTI Overall AP40 (moderate): '
        f'{sorted(metrics)[:5]}...; analyze_distortion needs KittiMetric')


def class_maps(metrics: Dict[str, float]) -> Dict[str, float]:
    """Moderate AP40 3D (strict IoU) of each class KittiMetric gave."""
    out = {}
    for name in CLASSES:
        for key, value in metrics.items():
            if key.endswith(f'KITTI/{name}_3D_AP40_moderate_strict'):
                out[name] = float(value)
    return out


def val_subset(cfg: Config, frames: Optional[int], work_dir: str) -> None:
    """Point the test dataloader and evaluator at the first ``frames`` val
    frames (a subset info file in ``work_dir``; KittiMetric needs the
    annotation file to hold exactly the frames it sees)."""
    if frames is None:
        return
    dataset = cfg.test_dataloader.dataset
    source = osp.join(dataset.data_root, dataset.ann_file)
    with open(source, 'rb') as f:
        infos = pickle.load(f)
    if frames > len(infos['data_list']):
        raise PruningInputError(f'--val-frames {frames}: {source} has only '
                                f'{len(infos["data_list"])} frames')
    subset = dict(metainfo=infos['metainfo'],
                  data_list=infos['data_list'][:frames])
    path = osp.abspath(osp.join(work_dir, f'val_infos_{frames}.pkl'))

    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            pickle.dump(subset, f)

    atomic_write(path, write)
    dataset.ann_file = path
    evaluators = cfg.test_evaluator
    for evaluator in (evaluators
                      if isinstance(evaluators, list) else [evaluators]):
        if 'ann_file' in evaluator:
            evaluator.ann_file = path


def _read_records(path: str, settings: dict) -> List[dict]:
    """The saved allocations of the same settings; the measures compared
    are not part of them, so a measure added later is computed for the
    saved allocations without evaluating them again."""
    saved = read_json(path)
    if saved is None:
        return []
    settings = {k: v for k, v in settings.items() if k != 'measures'}
    kept = {k: v for k, v in saved['settings'].items() if k != 'measures'}
    return saved['records'] if kept == settings else []


def _write_records(path: str, settings: dict, records: List[dict]) -> None:
    write_json(path, dict(settings=settings, records=records))


def level_magnitudes(weight: torch.Tensor, order: torch.Tensor,
                     counts: np.ndarray) -> np.ndarray:
    """Per level, the largest magnitude it prunes (0 for none)."""
    ranked = weight.detach().abs().flatten()[order].double().cpu().numpy()
    return np.array([ranked[c - 1] if c > 0 else 0.0 for c in counts])


def scaled_global_levels(magnitudes: Sequence[np.ndarray],
                         tables: Sequence[np.ndarray], scales: np.ndarray,
                         budget: float, last: int) -> List[int]:
    """Global magnitude pruning with each layer's magnitudes times its
    scale: the levels whose kept FLOPs come closest to ``budget`` of the
    total from below (no layer beyond level ``last``).

    Args:
        magnitudes: Per layer, :func:`level_magnitudes`.
        tables: Per layer, the kept FLOPs at each level.
        scales: Per layer, a positive factor on its magnitudes.
        budget: Share of the total FLOPs to keep.
        last: The deepest level a layer may reach.
    """
    total = sum(float(t[0]) for t in tables)

    def levels_at(threshold: float) -> List[int]:
        return [
            int(np.searchsorted(m[:last + 1] * scale, threshold, side='right'))
            - 1 for m, scale in zip(magnitudes, scales)
        ]

    def kept(levels: List[int]) -> float:
        return sum(float(t[level]) for t, level in zip(tables, levels))

    low, high = 0.0, max(
        float(m[last]) * s for m, s in zip(magnitudes, scales)) + 1.0
    for _ in range(100):
        middle = (low + high) / 2
        if kept(levels_at(middle)) > budget * total:
            low = middle
        else:
            high = middle
    return levels_at(high)


def random_plan(targets: Sequence,
                orders: Sequence[torch.Tensor],
                counts: Sequence[np.ndarray],
                tables: Sequence[np.ndarray],
                sparsities: Sequence[float],
                budgets: Sequence[float],
                samples: int,
                seed: int,
                spread: float = 1.0) -> List[tuple]:
    """``samples`` random allocations per budget: ``(budget, levels)``.

    No distortion measure chooses them: each is global magnitude pruning
    with every layer's magnitudes scaled by a random log-normal factor (its
    log's standard deviation drawn uniformly in [0, ``spread``], from
    global magnitude itself to uneven), never pruning more than 0.9 of a
    layer. The one-shot models thus range from close to a known baseline
    to broken.
    """
    rng = np.random.default_rng(seed)
    last = max(i for i, s in enumerate(sparsities) if s <= 0.9 + 1e-9)
    magnitudes = [
        level_magnitudes(t.weight, order, count)
        for t, order, count in zip(targets, orders, counts)
    ]
    plan = []
    for budget in budgets:
        for _ in range(samples):
            sigma = rng.uniform(0.0, spread)
            scales = np.exp(sigma * rng.standard_normal(len(tables)))
            plan.append((budget,
                         scaled_global_levels(magnitudes, tables, scales,
                                              budget, last)))
    return plan


def correlations(
        records: Sequence[dict],
        dense_map: float,
        measures: Sequence[str],
        dense_classes: Optional[Dict[str, float]] = None) -> Dict[str, dict]:
    """Spearman correlation of each measure with the mAP loss, over all
    allocations and per budget, and with each class's AP loss where the
    records and ``dense_classes`` have it (``class_3d``)."""
    # imported here: scipy.stats adds warning filters on import
    from scipy.stats import spearmanr
    loss = np.array([dense_map - r['map_3d'] for r in records])
    classes = [
        c for c in CLASSES
        if c in (dense_classes or {}) and all(c in r.get('class_3d', {})
                                              for r in records)
    ]
    out = {}
    for name in measures:
        values = np.array([r['distortion'][name] for r in records])
        per_budget = {}
        for budget in sorted({r['budget'] for r in records}):
            chosen = np.array([r['budget'] == budget for r in records])
            per_budget[str(budget)] = float(
                spearmanr(values[chosen], loss[chosen]).statistic)
        per_class = {
            c:
            float(
                spearmanr(
                    values,
                    [dense_classes[c] - r['class_3d'][c]
                     for r in records]).statistic)
            for c in classes
        }
        out[name] = dict(spearman=float(spearmanr(values, loss).statistic),
                         by_budget=per_budget,
                         by_class=per_class)
    return out


def analyze_detector_distortion(config: Union[str, Config],
                                checkpoint: str,
                                work_dir: Optional[str] = None,
                                device: Optional[str] = None,
                                budgets: Sequence[float] = (0.8, 0.65, 0.5),
                                samples: int = 10,
                                measures: Sequence[str] = DEFAULT_MEASURES,
                                val_frames: Optional[int] = None,
                                seed: int = 0,
                                spread: float = 1.0,
                                **overrides: Any) -> dict:
    """Distortion measures against the one-shot mAP of random allocations.

    Args:
        config: A weight-pruning config whose test dataloader and evaluator
            are the detector's (KittiMetric): a file, ``'<package>::<path>'``
            or a :class:`~mmengine.config.Config`.
        checkpoint: The trained detector.
        work_dir: Output folder; default as :func:`prune_detector`.
        device: ``'cpu'`` or ``'cuda'``; default: CUDA when available.
        budgets: Shares of the prunable layers' FLOPs to keep.
        samples: Random allocations per budget.
        measures: Registered distortion measures to compare.
        val_frames: Evaluate on the first this many val frames (None: all).
        seed: Seed of the allocations.
        spread: Largest standard deviation of the log of the per-layer
            factors on the magnitudes (:func:`random_plan`).
        **overrides: Config settings to merge, as for
            :func:`prune_detector`.

    Returns:
        dict: What ``distortion_study.json`` holds: the dense mAP, every
        allocation, and per measure the Spearman correlation with the mAP
        loss.
    """
    _check(budgets, samples, val_frames)
    cfg, name = config_with_name(config, overrides)
    work_dir = work_dir or default_work_dir(cfg, name)
    logger = MMLogger.get_instance('rdprune_mm_distortion_study',
                                   logger_name='rdprune_mm')
    pruner = PRUNERS.build(cfg.pruner)
    model, _, batches = prepare_detector(cfg, checkpoint, device)
    targets = pruner.find_targets(model)
    head = HeadOutputs(model, pruner.head_modules)
    distortions = {m: DISTORTIONS.build(measure_config(m)) for m in measures}
    with torch.no_grad():
        reference = [head(batch) for batch in batches]
    uses = measure_uses(targets, batches, head)
    orders = [magnitude_order(t.weight) for t in targets]
    counts = [pruned_counts(t.num_params, pruner.sparsities) for t in targets]
    tables = [
        flops_cost_table(uses[t.name], t.weight, order, count)
        for t, order, count in zip(targets, orders, counts)
    ]
    total = sum(float(t[0]) for t in tables)

    eval_cfg = cfg.copy()
    eval_cfg.work_dir = osp.join(work_dir, 'eval')
    eval_cfg.load_from = None
    eval_cfg.pop('custom_hooks', None)
    val_subset(eval_cfg, val_frames, work_dir)
    prepare_runner_process()
    runner = Runner.from_cfg(eval_cfg)
    runner.model.load_state_dict(model.state_dict())

    settings = dict(checkpoint=osp.abspath(checkpoint),
                    budgets=list(budgets),
                    samples=samples,
                    val_frames=val_frames,
                    seed=seed,
                    spread=spread,
                    levels=[float(s) for s in pruner.sparsities],
                    calibration=len(batches),
                    measures=list(measures))
    records_path = osp.join(work_dir, RECORDS_FILE)
    records = _read_records(records_path, settings)
    if not records:
        metrics = runner.test()
        records = [
            dict(budget=1.0,
                 levels=[0] * len(targets),
                 kept=1.0,
                 distortion={m: 0.0
                             for m in measures},
                 map_3d=overall_map(metrics),
                 map_bev=overall_map(metrics, 'BEV'),
                 class_3d=class_maps(metrics))
        ]
        _write_records(records_path, settings, records)
    dense = records[0]
    plan = random_plan(targets, orders, counts, tables, pruner.sparsities,
                       budgets, samples, seed, spread)

    def measure(names: Sequence[str] = tuple(measures)) -> Dict[str, float]:
        """The measures ``names`` of the model as masked now; the runner's
        model takes its weights for the evaluation."""
        outputs = [head(batch) for batch in batches]
        runner.model.load_state_dict(model.state_dict())
        return {m: float(distortions[m](reference, outputs)) for m in names}

    with progress_bar(len(plan)) as progress:
        for index, (budget, levels) in enumerate(plan):
            if index + 1 < len(records):
                record = records[index + 1]
                missing = [
                    m for m in measures if m not in record['distortion']
                ]
                if missing:
                    record['distortion'].update(
                        measure_allocation(targets, counts, levels,
                                           lambda: measure(missing)))
                    _write_records(records_path, settings, records)
                progress.update()
                continue
            values = measure_allocation(targets, counts, levels, measure)
            metrics = runner.test()
            kept = sum(float(t[level]) for t, level in zip(tables, levels))
            records.append(
                dict(budget=float(budget),
                     levels=levels,
                     kept=kept / total,
                     distortion=values,
                     map_3d=overall_map(metrics),
                     map_bev=overall_map(metrics, 'BEV'),
                     class_3d=class_maps(metrics)))
            _write_records(records_path, settings, records)
            logger.info(f'allocation {index + 1}/{len(plan)}: keep '
                        f'{kept / total:.3f} of the FLOPs, mAP 3D '
                        f'{records[-1]["map_3d"]:.2f} (dense '
                        f'{dense["map_3d"]:.2f}), ' +
                        ', '.join(f'{m} {v:.4g}' for m, v in values.items()))
            progress.update()
    allocations = [
        dict(r, distortion={m: r['distortion'][m]
                            for m in measures}) for r in records[1:]
    ]
    report = dict(config=name,
                  checkpoint=checkpoint,
                  settings=settings,
                  dense=dict(map_3d=dense['map_3d'],
                             map_bev=dense['map_bev'],
                             class_3d=dense.get('class_3d', {})),
                  correlation=correlations(allocations, dense['map_3d'],
                                           measures, dense.get('class_3d')),
                  allocations=allocations)
    write_json(osp.join(work_dir, 'distortion_study.json'), report)
    write_text(osp.join(work_dir, 'distortion_study.md'), study_table(report))
    plot_distortion_study(report, osp.join(work_dir, 'distortion_study.png'))
    logger.info('distortion against mAP loss:\n' + study_table(report))
    return report


def study_table(report: dict) -> str:
    """Markdown: Spearman correlation per measure, overall, per budget and
    with each class's AP loss."""
    budgets = sorted({a['budget'] for a in report['allocations']})
    classes = [
        c for c in CLASSES if all(c in corr['by_class']
                                  for corr in report['correlation'].values())
    ]
    lines = [
        '| measure | Spearman, all | ' +
        ' | '.join([f'keep {b:.3g}'
                    for b in budgets] + [f'{c} AP loss'
                                         for c in classes]) + ' |',
        '|---|---:|' + '---:|' * (len(budgets) + len(classes))
    ]
    for name, corr in report['correlation'].items():
        cells = [corr['by_budget'][str(b)] for b in budgets]
        cells += [corr['by_class'][c] for c in classes]
        lines.append(f'| {name} | {corr["spearman"]:.3f} | ' +
                     ' | '.join(f'{v:.3f}' for v in cells) + ' |')
    return '\n'.join(lines) + '\n'
