"""Check the additivity that RD allocation rests on, for one config: what
``tools/analyze_additivity.py`` runs."""
from __future__ import annotations

import os.path as osp
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from ..additivity import analyze_additivity, summarize
from ..errors import PruningInputError
from ..fileio import write_json
from ..head_outputs import HeadOutputs
from ..masks import pruned_counts
from ..plots import ADDITIVITY_FILE, plot_additivity
from ..registry import PRUNERS
from .prepare import prepare_detector
from .prune import config_with_name, default_work_dir


def _check(budgets: Sequence[float], samples: int) -> None:
    if any(not 0 < b <= 1 for b in budgets):
        raise PruningInputError(
            f'--budgets {list(budgets)}: each must be in (0, 1], the share '
            'of weights to keep')
    if samples < 1:
        raise PruningInputError(f'--samples {samples}: give 1 or more')


def analyze_detector_additivity(config: Union[str, Config],
                                checkpoint: Optional[str] = None,
                                work_dir: Optional[str] = None,
                                device: Optional[str] = None,
                                budgets: Sequence[float] = (0.3, 0.5, 0.7),
                                samples: int = 8,
                                seed: int = 0,
                                **overrides: Any) -> dict:
    """Measured joint distortion of random allocations against the sum of
    the layers' curves.

    Measures (or reads from ``<work_dir>/curves``, the cache that
    :func:`prune_detector` shares) every layer's curve, prunes ``samples``
    random allocations per budget jointly and compares the measured
    distortion with the sum of the curves; writes ``additivity.json`` and
    ``additivity.png`` to ``work_dir``.

    Args:
        config: A pruning config: a file, ``'<package>::<path>'`` or a
            :class:`~mmengine.config.Config`.
        checkpoint: A trained checkpoint, or None for random weights.
        work_dir: Output folder; default as :func:`prune_detector`.
        device: ``'cpu'`` or ``'cuda'``; default: CUDA when available.
        budgets: Shares of the weights to keep, each in (0, 1].
        samples: Random allocations per budget.
        seed: Seed of the random allocations.
        **overrides: Config settings to merge, as for
            :func:`prune_detector`.

    Returns:
        dict: The report written to ``additivity.json``: the summary
        (:func:`rdprune_mm.additivity.summarize`) and ``rd_allocation``.
    """
    _check(budgets, samples)
    cfg, name = config_with_name(config, overrides)
    work_dir = work_dir or default_work_dir(cfg, name)
    logger = MMLogger.get_instance(
        'rdprune_mm_additivity', logger_name='rdprune_mm')
    pruner = PRUNERS.build(cfg.pruner)
    model, _, batches = prepare_detector(cfg, checkpoint, device)
    targets = pruner.find_targets(model)
    original = [t.weight.detach().clone() for t in targets]
    result = pruner.prune(model, batches, osp.join(work_dir, 'curves'))
    with torch.no_grad():
        for target, weight in zip(targets, original):
            target.weight.copy_(weight)

    head = HeadOutputs(model, pruner.head_modules)
    reference = [head(batch) for batch in batches]

    def measure() -> float:
        return pruner.distortion(reference, [head(b) for b in batches])

    counts: List[np.ndarray] = [
        pruned_counts(t.num_params, pruner.sparsities) for t in targets
    ]
    costs = [t.num_params - c for t, c in zip(targets, counts)]
    points = analyze_additivity(targets, result.curves, counts, costs,
                                measure, list(budgets), samples, seed)
    summary = summarize(points)
    rd_point = dict(
        budget=pruner.budget,
        kept_share=result.achieved_budget,
        predicted=result.predicted_distortion,
        measured=result.measured_distortion,
        ratio=result.additivity_ratio)
    report = dict(config=name, checkpoint=checkpoint,
                  rd_allocation=rd_point, **summary)
    write_json(osp.join(work_dir, 'additivity.json'), report)
    plot_additivity(summary, rd_point, osp.join(work_dir, ADDITIVITY_FILE))
    logger.info(f'wrote additivity.json, {ADDITIVITY_FILE} to {work_dir}')
    return report
