"""Measured latency of channel-pruned layers, as a cost for the allocator.

FLOPs are a poor stand-in for time on real hardware: a sparse conv's gather
and scatter grow with its channels, not with their product, and index
generation and kernel launches do not shrink at all. On the CPU a FLOP of
SECOND's sparse encoder costs several times one of its dense BEV backbone.

:func:`measure_latency_model` therefore times every weight layer on slim
copies of the model that keep the same share of every group's channels
(1, 3/4, 1/2, 1/4 by default). A layer's time runs from its call to the
next weight layer's (:func:`layer_timer`), so that the normalization,
activation, concatenation and reshapes after it count with it: together
the layers cover the network from its first weight layer to the head
outputs. Per layer it fits the non-negative coefficients of::

    t(o, i) = quadratic * o * i + linear * p + constant

where ``o`` and ``i`` are the kept shares of the layer's output and input
channels and ``p`` is the mean kept share of the sides that the groups
prune (``(o + i) / 2``, or ``o`` alone when no group prunes the input). The
product term is the multiply-accumulates, the linear one the memory
traffic (gather, scatter, im2col), the constant what channels do not
change. :class:`LatencyModel` gives the exact time of any allocation and the
allocator's separable tables: the product term through the upper bound of
:mod:`.costs`, the other two exactly.
"""
from __future__ import annotations

import itertools
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.logging import MMLogger
from torch import nn

from ..curves import CurveCache
from ..fileio import fingerprint
from ..head_outputs import HeadOutputs
from ..progress import progress_bar
from .costs import channel_counts, coverage, separable_costs
from .export import slim_copy
from .groups import ChannelGroup, layer_fractions

#: Kept shares of every group at which the layers are timed.
LATENCY_SHARES = (1.0, 0.75, 0.5, 0.25)
_TERMS = ('quadratic', 'linear', 'constant')


def kept_shares(groups: Sequence[ChannelGroup],
                keep_counts: Mapping[str, int],
                layer_names: Sequence[str]
                ) -> Dict[str, Tuple[float, float, float]]:
    """``(o, i, p)`` of every layer: kept output and input shares, and the
    mean kept share of the sides that some group prunes (1 for a layer no
    group touches)."""
    fractions = layer_fractions(groups, keep_counts)
    sides = coverage(groups, layer_names)
    shares = {}
    for name in layer_names:
        out_share, in_share = fractions.get(name, (1.0, 1.0))
        pruned = [share for side, share in (('out', out_share),
                                            ('in', in_share))
                  if sides.get(name, {}).get(side)]
        shares[name] = (out_share, in_share,
                        float(np.mean(pruned)) if pruned else 1.0)
    return shares


@dataclass
class LatencyModel:
    """Seconds per frame of every weight layer as a function of the kept
    shares of its channels (see the module docstring).

    Args:
        quadratic: Per layer, the seconds that scale with ``o * i``.
        linear: Per layer, the seconds that scale with ``p``.
        constant: Per layer, the seconds that do not change.
        measured: Per layer, the median seconds measured at ``shares``.
        shares: The uniform kept shares the layers were timed at.
    """

    quadratic: Dict[str, float]
    linear: Dict[str, float]
    constant: Dict[str, float]
    measured: Dict[str, List[float]] = field(default_factory=dict)
    shares: List[float] = field(default_factory=list)

    @property
    def dense(self) -> Dict[str, float]:
        """Modelled seconds of every layer with all channels kept."""
        return {name: self.quadratic[name] + self.linear[name] +
                self.constant[name] for name in self.quadratic}

    def after(self, groups: Sequence[ChannelGroup],
              keep_counts: Mapping[str, int]) -> Dict[str, float]:
        """Modelled seconds of every layer once the groups keep
        ``keep_counts`` channels."""
        shares = kept_shares(groups, keep_counts, list(self.quadratic))
        return {
            name: self.quadratic[name] * o * i + self.linear[name] * p +
            self.constant[name]
            for name, (o, i, p) in shares.items()
        }

    def total_after(self, groups: Sequence[ChannelGroup],
                    keep_counts: Mapping[str, int]) -> float:
        """Sum of :meth:`after` over the layers."""
        return sum(self.after(groups, keep_counts).values())

    def separable(self, groups: Sequence[ChannelGroup],
                  counts: Sequence[np.ndarray]
                  ) -> Tuple[List[np.ndarray], float]:
        """Per-group tables (seconds at every level of ``counts``) and the
        constant: their sum bounds :meth:`total_after` from above, exactly
        so when both sides of every layer keep the same share."""
        product, fixed = separable_costs(groups, counts, self.quadratic)
        linear, linear_fixed = separable_costs(groups, counts, self.linear,
                                               linear=True)
        tables = [a + b for a, b in zip(product, linear)]
        return tables, fixed + linear_fixed + sum(self.constant.values())

    def to_dict(self) -> dict:
        return dict(quadratic=self.quadratic, linear=self.linear,
                    constant=self.constant, measured=self.measured,
                    shares=self.shares)


def _nonnegative_fit(design: np.ndarray,
                     seconds: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, over every subset of
    the (three) columns."""
    best, best_residual = np.zeros(design.shape[1]), float(np.sum(seconds**2))
    for size in range(1, design.shape[1] + 1):
        for columns in itertools.combinations(range(design.shape[1]), size):
            coef, *_ = np.linalg.lstsq(design[:, columns], seconds,
                                       rcond=None)
            if np.any(coef < 0):
                continue
            residual = float(
                np.sum((design[:, columns] @ coef - seconds)**2))
            if residual < best_residual - 1e-18:
                best = np.zeros(design.shape[1])
                best[list(columns)] = coef
                best_residual = residual
    return best


def fit_latency_model(groups: Sequence[ChannelGroup],
                      shares: Sequence[float],
                      measured: Mapping[str, Sequence[float]]
                      ) -> LatencyModel:
    """Fit every layer's coefficients to its times at uniform shares.

    Args:
        groups: The channel groups.
        shares: Kept share of every group in each timing.
        measured: Per layer name, the seconds at each share.

    Returns:
        LatencyModel: Non-negative coefficients of least squares error.
    """
    names = list(measured)
    counts = channel_counts(groups, shares)
    rows = [
        kept_shares(groups, {g.name: int(c[k])
                             for g, c in zip(groups, counts)}, names)
        for k in range(len(shares))
    ]
    coefficients = {term: {} for term in _TERMS}
    for name in names:
        design = np.array([[o * i, p, 1.0]
                           for o, i, p in (row[name] for row in rows)])
        fitted = _nonnegative_fit(design,
                                  np.asarray(measured[name], np.float64))
        for term, value in zip(_TERMS, fitted):
            coefficients[term][name] = float(value)
    return LatencyModel(
        **coefficients,
        measured={name: [float(s) for s in measured[name]]
                  for name in names},
        shares=[float(s) for s in shares])


def _synchronize(module: nn.Module) -> None:
    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.is_cuda:
        torch.cuda.synchronize(parameter.device)


@contextmanager
def layer_timer(model: nn.Module, names: Sequence[str]
                ) -> Iterator[Dict[str, List[float]]]:
    """Seconds of every call of the named modules, each counted up to the
    next call of any of them (or the end of the block): a layer's time
    includes what follows it before the next layer (normalization,
    activation, concatenation, reshapes), which shrinks with its channels
    too. CUDA is synchronized at every boundary."""
    modules = dict(model.named_modules())
    seconds: Dict[str, List[float]] = {name: [] for name in names}
    running: List = []  # [name, start] of the open segment

    def close(now: float) -> None:
        if running:
            name, started = running
            seconds[name].append(now - started)
            running.clear()

    def before(name):

        def hook(module, args):
            _synchronize(module)
            now = time.perf_counter()
            close(now)
            running[:] = [name, now]

        return hook

    handles = [modules[name].register_forward_pre_hook(before(name))
               for name in names]
    try:
        yield seconds
    finally:
        _synchronize(model)
        close(time.perf_counter())
        for handle in handles:
            handle.remove()


@torch.no_grad()
def time_layers(model: nn.Module, batch: dict, names: Sequence[str],
                head_modules: Optional[Sequence[str]] = None,
                repeats: int = 3, warmup: int = 1) -> Dict[str, float]:
    """Median seconds per pass of every named layer (its calls summed,
    each up to the next layer's, :func:`layer_timer`) on the head-output
    pass of ``batch``."""
    head = HeadOutputs(model, head_modules)
    for _ in range(warmup):
        head(batch)
    per_pass: Dict[str, List[float]] = {name: [] for name in names}
    for _ in range(repeats):
        with layer_timer(model, names) as seconds:
            head(batch)
        for name in names:
            per_pass[name].append(sum(seconds[name]))
    return {name: statistics.median(values)
            for name, values in per_pass.items()}


def measure_latency_model(model: nn.Module,
                          groups: Sequence[ChannelGroup],
                          batch: dict,
                          layer_names: Sequence[str],
                          exclude: Sequence[str] = (),
                          head_modules: Optional[Sequence[str]] = None,
                          shares: Sequence[float] = LATENCY_SHARES,
                          repeats: int = 3,
                          progress=None) -> LatencyModel:
    """Time every layer on slim copies at uniform shares and fit the model.

    Args:
        model: The unpruned detector on its device (left as it is).
        groups: Its channel groups (the pruner's selection).
        batch: One preprocessed calibration batch.
        layer_names: The weight layers to time.
        exclude: The ``exclude`` patterns the groups were found with.
        head_modules: Modules whose outputs end the pass (None: the head).
        shares: Kept share of every group in each timing.
        repeats: Timed passes per share (the median counts).
        progress: Something with ``update()``, called once per share.

    Returns:
        LatencyModel: The fitted model, with the measured seconds.
    """
    counts = channel_counts(groups, shares)
    measured: Dict[str, List[float]] = {name: [] for name in layer_names}
    for k in range(len(shares)):
        keeps = {g.name: g.keep_mask(int(c[k]))
                 for g, c in zip(groups, counts)}
        slim, _ = slim_copy(model, keeps, exclude)
        seconds = time_layers(slim, batch, layer_names, head_modules,
                              repeats=repeats)
        for name in layer_names:
            measured[name].append(seconds[name])
        del slim
        if progress is not None:
            progress.update()
    return fit_latency_model(groups, shares, measured)


@torch.no_grad()
def cached_latency_model(model: nn.Module,
                         groups: Sequence[ChannelGroup],
                         layer_names: Sequence[str],
                         reference: Mapping[str, torch.Tensor],
                         batch: dict,
                         cache_dir: Optional[str] = None,
                         exclude: Sequence[str] = (),
                         head_modules: Optional[Sequence[str]] = None,
                         shares: Sequence[float] = LATENCY_SHARES,
                         repeats: int = 3) -> LatencyModel:
    """:func:`measure_latency_model`, cached beside the curves.

    The key is the architecture, the groups, the frame (through its
    ``reference`` head outputs), the timing settings, the device, the
    thread count and the torch version.
    """
    logger = MMLogger.get_current_instance()
    device = next(model.parameters()).device
    key = fingerprint(
        sorted(reference.items()),
        extra=dict(timing='segments to the next layer',
                   architecture=str(model),
                   groups={g.name: g.num_channels for g in groups},
                   shares=tuple(shares),
                   repeats=repeats,
                   device=str(device),
                   device_name=(torch.cuda.get_device_name(device)
                                if device.type == 'cuda' else
                                platform.processor() or platform.machine()),
                   threads=torch.get_num_threads(),
                   torch=torch.__version__))
    cache = CurveCache(cache_dir, key, prefix='latency',
                       length=len(shares))
    if all(name in cache for name in layer_names):
        logger.info(f'latency: {len(layer_names)} layers loaded from '
                    f'{cache.path}')
        return fit_latency_model(groups, shares,
                                 {name: cache[name] for name in layer_names})
    logger.info(f'latency: timing {len(layer_names)} layers on slim copies '
                f'at kept shares {list(shares)} on {device} ({repeats} '
                'passes each)')
    with progress_bar(len(shares)) as progress:
        latency = measure_latency_model(model, groups, batch, layer_names,
                                        exclude, head_modules, shares,
                                        repeats, progress=progress)
    cache.update({name: latency.measured[name] for name in layer_names})
    return latency
