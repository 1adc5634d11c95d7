"""The allocation report (``allocation.json``) of a pruning run."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict

from .pruners.weight_pruner import PruningResult


def allocation_report(result: PruningResult, **context: Any
                      ) -> Dict[str, Any]:
    """A JSON-ready summary of a pruning result.

    Args:
        result: What the pruner returned.
        **context: Extra top-level fields (config, checkpoint, ...).

    Returns:
        dict: Budget asked and achieved, totals, and one entry per layer.
    """
    return dict(
        **context,
        budget=dict(
            unit='share of the prunable layers\' weights kept',
            asked=result.budget,
            achieved=result.achieved_budget),
        totals=dict(
            params_before=result.params_before,
            params_after=result.params_after,
            predicted_distortion=result.predicted_distortion,
            measured_distortion=result.measured_distortion,
            additivity_ratio=result.additivity_ratio,
            unpruned_distortion=result.unpruned_distortion),
        levels=[float(s) for s in result.sparsities],
        layers=[asdict(layer) for layer in result.layers])
