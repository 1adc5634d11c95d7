"""The allocate stage: levels of least predicted distortion whose exact
cost meets a budget, on arrays and a :class:`CostModel`.

With exact separable costs one solve of the shared allocator
(:func:`rdprune_mm.allocator.allocate`) is the optimum. With a separable
upper bound (channel pruning) the allocator's optimum meets the budget
exactly; the search then raises the budget the allocator sees (bisection,
``search_steps`` solves) as long as the exact cost of its optimum stays
within the budget, and keeps the feasible allocation of least objective.
A second cost capped beside the budget (time beside FLOPs) enters as a
Lagrange weight on its tables: the least weight whose optimum meets the
cap (:func:`search_with_cap`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..allocator import Allocation, InfeasibleBudgetError, allocate
from ..errors import PruningInputError
from .cost_models import CostModel


@dataclass
class BudgetSearch:
    """Settings of the search.

    Args:
        budget: Share of the cost model's total to keep, in (0, 1].
        resolution: Budget units of the allocator's dynamic program.
        search_steps: Bisection steps that raise the allocator's budget
            while the exact cost stays within the budget.
        min_keep: Smallest share of every unit the allocator may keep
            (levels whose tables say less are not chosen); None when the
            levels already respect it.
        floor: The settings that set the least cost, for the message of
            an unreachable budget.
    """

    budget: float
    resolution: int = 10_000
    search_steps: int = 12
    min_keep: Optional[float] = None
    floor: str = 'pruner.min_keep'

    def unreachable(self, cost: CostModel, least: float) -> PruningInputError:
        """The error of a budget below the ``least`` cost."""
        return PruningInputError(
            f'budget {self.budget} is below {least / cost.total:.4f} (share '
            f'of {cost.unit}), the least that {self.floor} allows; raise '
            'pruner.budget or lower pruner.min_keep')

    def check_reachable(self, cost: CostModel) -> float:
        """The budget in cost units, a hair below the asked share so that
        float sums in another order (the reported totals) cannot exceed it.

        Raises:
            PruningInputError: If even the cheapest levels exceed it.
        """
        if cost.exact_is_separable:  # the allocator knows min_keep
            tables, fixed = cost.separable()
            self._solve_once([np.zeros(len(t)) for t in tables], cost,
                             tables, fixed)
            return self.budget * cost.total
        target = self.budget * cost.total * (1 - 1e-12)
        least = cost.exact(cost.cheapest_levels())
        if least > target:
            raise self.unreachable(cost, least)
        return target

    def solve(self, objective: Sequence[np.ndarray], tables: List[np.ndarray],
              budget: float) -> Optional[Allocation]:
        """The allocator's optimum (None if even the cheapest levels exceed
        ``budget``)."""
        try:
            return allocate(objective, tables, budget,
                            min_keep=self.min_keep,
                            resolution=self.resolution)
        except InfeasibleBudgetError:
            return None

    def search(self, objective: Sequence[np.ndarray], cost: CostModel
               ) -> Tuple[Tuple[int, ...], float, float]:
        """Levels whose exact cost meets the budget, of least ``objective``
        (per unit, one value per level) among those the search tries.

        Returns:
            tuple: The levels, the budget the allocator was given (in cost
            units, the constant of the tables included) and the separable
            cost of the levels.

        Raises:
            PruningInputError: If the budget cannot be met.
        """
        tables, fixed = cost.separable()

        def separable(levels: Sequence[int]) -> float:
            return fixed + math.fsum(t[k] for t, k in zip(tables, levels))

        if cost.exact_is_separable:
            return self._solve_once(objective, cost, tables, fixed)
        total = cost.total
        if self.budget >= 1:  # every level fits: the least objective
            levels = tuple(
                int(np.lexsort((np.arange(len(o)), o))[0]) for o in objective)
            return levels, total, separable(levels)
        target = self.check_reachable(cost)

        def value(levels: Sequence[int]) -> float:
            return math.fsum(o[k] for o, k in zip(objective, levels))

        best = cost.cheapest_levels()
        best_budget = separable(best)
        low = max(target, best_budget)
        high = max(total, separable([0] * len(tables)))

        def attempt(dp_budget: float) -> bool:
            nonlocal best, best_budget
            solved = self.solve(objective, tables, dp_budget - fixed)
            if solved is None or cost.exact(solved.levels) > target:
                return False
            if value(solved.levels) < value(best):
                best, best_budget = tuple(solved.levels), dp_budget
            return True

        attempt(low)
        if attempt(high):
            low = high
        for _ in range(self.search_steps):
            if high - low <= 1e-9 * total:
                break
            middle = 0.5 * (low + high)
            if attempt(middle):
                low = middle
            else:
                high = middle
        return best, best_budget, separable(best)

    def _solve_once(self, objective: Sequence[np.ndarray], cost: CostModel,
                    tables: List[np.ndarray], fixed: float
                    ) -> Tuple[Tuple[int, ...], float, float]:
        budget = self.budget * cost.total
        try:
            found = allocate(objective, tables, budget - fixed,
                             min_keep=self.min_keep,
                             resolution=self.resolution)
        except InfeasibleBudgetError as error:
            raise self.unreachable(cost, error.min_budget) from None
        return (tuple(int(k) for k in found.levels), budget,
                fixed + float(found.cost))

    def search_with_cap(self, distortions: Sequence[np.ndarray],
                        cost: CostModel, capped: CostModel, cap: float,
                        cap_key: str) -> Tuple[Tuple[int, ...], float, float,
                                               float]:
        """:meth:`search` of ``distortion + weight * capped share``, with
        the least weight whose levels keep at most ``cap`` of ``capped``'s
        total (0 if the budget alone meets it; else grown fourfold, then
        bisected in ``search_steps``). No allocation within the allocator's
        budget that is as cheap in ``capped``'s separable tables is less
        distorted; one under the cap that no weight selects (a duality gap)
        may be.

        Returns:
            tuple: :meth:`search`'s levels, allocator budget and separable
            cost, and the weight.

        Raises:
            PruningInputError: If no weight brings ``capped`` within the
                cap.
        """
        dense = capped.total
        limit = cap * dense * (1 - 1e-12)
        capped_tables, _ = capped.separable()
        shares = [t / dense for t in capped_tables]

        def predicted(levels: Sequence[int]) -> float:
            return math.fsum(d[k] for d, k in zip(distortions, levels))

        def solve(weight: float):
            objective = [d + weight * s for d, s in zip(distortions, shares)]
            found = self.search(objective, cost)
            kept = capped.exact(found[0])
            return found, kept <= limit, kept

        found, fits, kept = solve(0.0)
        if fits:
            return (*found, 0.0)
        low, high = 0.0, 1.0
        scale = max(1.0, math.fsum(float(np.ptp(d)) for d in distortions))
        while True:
            found, fits, kept = solve(high)
            if fits:
                break
            if high > 1e9 * scale:
                within = ('' if self.budget >= 1 else
                          f' within {self.budget} of the {cost.unit}')
                raise PruningInputError(
                    f'{cap_key.rsplit(".", 1)[-1]} {cap} is below '
                    f'{kept / dense:.4f}, the least share of the layers\' '
                    f'modelled time the allocator reaches{within}; '
                    f'raise {cap_key} or lower pruner.min_keep')
            low, high = high, 4 * high
        best, weight = found, high
        for _ in range(self.search_steps):
            middle = 0.5 * (low + high)
            found, fits, _ = solve(middle)
            if not fits:
                low = middle
                continue
            high = middle
            if predicted(found[0]) <= predicted(best[0]):
                best, weight = found, middle
        return (*best, weight)


def bisect_edge(fits: Callable[[float], bool], low: float, high: float,
                fits_low: bool, steps: int = 30) -> float:
    """The end of ``[low, high]`` where ``fits`` flips, narrowed by
    bisection: the largest fitting value when ``fits_low`` (``low`` fits),
    else the smallest (``high`` fits)."""
    for _ in range(steps):
        middle = 0.5 * (low + high)
        if fits(middle) == fits_low:
            low = middle
        else:
            high = middle
    return low if fits_low else high
