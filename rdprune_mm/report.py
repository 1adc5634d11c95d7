"""The allocation report (``allocation.json``) of a pruning run."""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Dict, Optional

from .results import PruningResult

_UNIT_DESCRIPTIONS = dict(
    params='share of the prunable layers\' weights kept',
    flops='share of the prunable layers\' FLOPs (2 x multiply-accumulates '
    'of their weights, measured on the calibration frames) kept',
    latency='share of the pruned layers\' time per frame kept, modelled '
    'from times measured on slim copies on this machine (see '
    'cost_model.latency)')


def _finite(value: float) -> Optional[float]:
    """JSON has no NaN: a distortion nobody predicted is ``null``."""
    return None if math.isnan(value) else value


def _layer(layer) -> Dict[str, Any]:
    record = asdict(layer)
    record['predicted_distortion'] = _finite(record['predicted_distortion'])
    return record


def allocation_report(result: PruningResult, **context: Any
                      ) -> Dict[str, Any]:
    """A JSON-ready summary of a pruning result.

    Args:
        result: What the pruner returned.
        **context: Extra top-level fields (config, checkpoint, ...).

    Returns:
        dict: Budget asked and achieved in its unit (``params`` or
        ``flops``), totals and one entry per layer, both with parameters and
        FLOPs before and after pruning.
    """
    return dict(
        **context,
        budget=dict(
            unit=result.budget_by,
            description=_UNIT_DESCRIPTIONS[result.budget_by],
            asked=result.budget,
            achieved=result.achieved_budget),
        totals=dict(
            params_before=result.params_before,
            params_after=result.params_after,
            params_kept=result.params_kept,
            flops_before=result.flops_before,
            flops_after=result.flops_after,
            flops_kept=result.flops_kept,
            predicted_distortion=_finite(result.predicted_distortion),
            measured_distortion=result.measured_distortion,
            additivity_ratio=_finite(result.additivity_ratio),
            unpruned_distortion=result.unpruned_distortion),
        levels=[float(s) for s in result.sparsities],
        layers=[_layer(layer) for layer in result.layers],
        **({} if result.compensation is None else dict(
            compensation=result.compensation)))
