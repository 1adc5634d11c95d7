"""Is distortion additive? Random allocations, measured against the sum.

The allocator adds up per-layer distortions. :func:`analyze_additivity`
checks that premise on the model at hand: it draws random allocations at
several budgets, prunes each one jointly, and compares the measured
distortion of the whole model with the sum of the layers' curves.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, TypeVar

import numpy as np
import torch

from .masks import magnitude_order, mask_from_order
from .targets import PruningTarget

T = TypeVar('T')


@dataclass
class AdditivitySample:
    """One random allocation: its budget, cost and both distortions."""

    budget: float
    kept_share: float
    predicted: float
    measured: float

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted else np.nan


def random_levels(costs: Sequence[np.ndarray],
                  budget: float,
                  rng: np.random.Generator,
                  preference: Optional[np.ndarray] = None) -> List[int]:
    """A random allocation that keeps at most ``budget`` of the cost.

    Starting from every layer unpruned, a random layer goes one level
    further until the kept cost fits the budget; layers at their last level
    drop out of the draw.

    Args:
        costs: Per layer, the kept cost at each level (non-increasing).
        budget: Share of the total unpruned cost to keep, in (0, 1].
        rng: The random generator.
        preference: Per layer, a positive weight of its chance to be drawn
            (None: all alike); uneven weights give uneven allocations.

    Returns:
        list[int]: One level per layer.
    """
    levels = [0] * len(costs)
    total = sum(float(c[0]) for c in costs)
    kept = total
    open_layers = [i for i, c in enumerate(costs) if len(c) > 1]
    while kept > budget * total and open_layers:
        if preference is None:
            i = open_layers[rng.integers(len(open_layers))]
        else:
            chance = preference[open_layers] / preference[open_layers].sum()
            i = open_layers[rng.choice(len(open_layers), p=chance)]
        kept -= float(costs[i][levels[i]] - costs[i][levels[i] + 1])
        levels[i] += 1
        if levels[i] == len(costs[i]) - 1:
            open_layers.remove(i)
    return levels


@torch.no_grad()
def measure_allocation(targets: Sequence[PruningTarget],
                       counts: Sequence[np.ndarray], levels: Sequence[int],
                       measure: Callable[[], T]) -> T:
    """What ``measure`` gives (the joint distortion, say) with every target
    pruned at its level by magnitude; the weights are restored
    afterwards."""
    saved = [t.weight.detach().clone() for t in targets]
    try:
        for target, count, level in zip(targets, counts, levels):
            mask = mask_from_order(
                magnitude_order(target.weight), target.weight.shape,
                int(count[level]))
            target.weight.masked_fill_(~mask, 0.0)
        return measure()
    finally:
        for target, weight in zip(targets, saved):
            target.weight.copy_(weight)


def analyze_additivity(targets: Sequence[PruningTarget],
                       curves: Dict[str, np.ndarray],
                       counts: Sequence[np.ndarray],
                       costs: Sequence[np.ndarray],
                       measure: Callable[[], float],
                       budgets: Sequence[float],
                       samples_per_budget: int,
                       seed: int = 0) -> List[AdditivitySample]:
    """Measure random allocations against the sum of their curves.

    Args:
        targets: The prunable layers.
        curves: Layer name -> distortion per level.
        counts: Per layer, the number of weights each level prunes.
        costs: Per layer, the kept cost at each level.
        measure: Distortion of the model as it is now.
        budgets: Shares of the cost to keep.
        samples_per_budget: Random allocations per budget.
        seed: Seed of the draws.

    Returns:
        list[AdditivitySample]: One entry per allocation.
    """
    rng = np.random.default_rng(seed)
    total = sum(float(c[0]) for c in costs)
    samples = []
    for budget in budgets:
        for _ in range(samples_per_budget):
            levels = random_levels(costs, budget, rng)
            predicted = sum(
                float(curves[t.name][level])
                for t, level in zip(targets, levels))
            kept = sum(float(c[level]) for c, level in zip(costs, levels))
            samples.append(
                AdditivitySample(
                    budget=float(budget),
                    kept_share=kept / total,
                    predicted=predicted,
                    measured=measure_allocation(targets, counts, levels,
                                                measure)))
    return samples


def summarize(samples: Sequence[AdditivitySample]) -> dict:
    """Correlations (Pearson on logs, Spearman) and the ratio's spread."""
    predicted = np.array([s.predicted for s in samples])
    measured = np.array([s.measured for s in samples])
    ratios = np.array([s.ratio for s in samples])
    positive = (predicted > 0) & (measured > 0)

    def ranks(values: np.ndarray) -> np.ndarray:
        return np.argsort(np.argsort(values)).astype(float)

    def correlation(a: np.ndarray, b: np.ndarray) -> float:
        if len(a) < 2 or a.std() == 0 or b.std() == 0:
            return float('nan')
        return float(np.corrcoef(a, b)[0, 1])

    return dict(
        samples=len(samples),
        pearson_log=correlation(
            np.log(predicted[positive]), np.log(measured[positive])),
        spearman=correlation(ranks(predicted), ranks(measured)),
        ratio_median=float(np.nanmedian(ratios)),
        ratio_min=float(np.nanmin(ratios)),
        ratio_max=float(np.nanmax(ratios)),
        by_budget={
            str(b): float(
                np.nanmedian([s.ratio for s in samples if s.budget == b]))
            for b in sorted({s.budget for s in samples})
        },
        points=[dict(asdict(s), ratio=s.ratio) for s in samples])
