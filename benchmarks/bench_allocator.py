"""Time :func:`rdprune_mm.allocator.allocate` on large synthetic problems.

Loads the allocator module from its file so that neither torch nor the
package ``__init__`` is imported. Prints seconds per solve; asserts nothing.

Usage:
    python3 benchmarks/bench_allocator.py [--layers 200] [--levels 101]
"""
from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import time

import numpy as np

_PATH = pathlib.Path(__file__).parents[1] / 'rdprune_mm' / 'allocator.py'


def _load():
    name = 'rdprune_mm_allocator_standalone'
    spec = importlib.util.spec_from_file_location(name, _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _problems(layers: int, levels: int, seed: int) -> dict:
    """Return named ``(distortions, costs, budget)`` problems."""
    rng = np.random.default_rng(seed)
    shares = np.linspace(1.0, 0.0, levels)
    sizes = rng.integers(1_000, 100_000, size=layers)
    curves = [
        np.cumsum(np.sort(rng.random(levels))) * rng.random()
        for _ in range(layers)
    ]
    equal = np.full(layers, 10_000)
    return {
        'float costs, 50% budget': ([shares * s for s in sizes], curves,
                                    0.5 * float(sizes.sum())),
        'integer costs, 50% budget':
        ([np.round(shares * s) for s in sizes], curves,
         0.5 * float(sizes.sum())),
        'every layer spans the budget': ([shares * s for s in equal], curves,
                                         float(equal[0])),
        'random tables, 50% budget':
        ([rng.random(levels) * s for s in sizes],
         [rng.random(levels) for _ in range(layers)], 0.5 * sizes.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--layers', type=int, default=200)
    parser.add_argument('--levels', type=int, default=101)
    parser.add_argument('--resolution', type=int, default=10_000)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    allocate = _load().allocate
    print(f'{args.layers} layers x {args.levels} levels, resolution '
          f'{args.resolution}, best and median of {args.repeats} solves')
    problems = _problems(args.layers, args.levels, args.seed)
    for name, (costs, dists, budget) in problems.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = allocate(
                dists, costs, budget, resolution=args.resolution)
            times.append(time.perf_counter() - start)
        print(f'{name:30s} best {min(times):.4f} s  median '
              f'{float(np.median(times)):.4f} s  '
              f'cost/budget {result.cost / budget:.4f}')


if __name__ == '__main__':
    main()
