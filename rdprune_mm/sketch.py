"""A random-projection sketch of the head outputs' Gauss-Newton matrix.

Near the unpruned weights the distortion of the head outputs ``F`` is the
quadratic form ``D(dw) ~ dw^T J^T W J dw`` with ``J = dF/dw`` and ``W`` the
distortion's weights (:meth:`NormalizedMSE.quadratic_weights`); the first
order term vanishes because ``D`` is smallest at ``dw = 0``. For random
output directions ``v_j`` with ``E[v v^T] = I`` and
``g_j = d<v_j, W^(1/2) F>/dw`` (one backward pass each),
``E[(g_j . dw)^2] = dw^T J^T W J dw``. Averaging over ``r`` directions per
calibration sample therefore estimates the distortion of *any* change of
*any* layer, cross terms inside a layer included, from ``r`` backward passes
per sample, whatever the number of layers and levels.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from mmengine import dist

from .distributed import is_distributed, run_everywhere, split_round_robin
from .progress import progress_bar
from .targets import PruningTarget

HeadTensors = Dict[str, torch.Tensor]
#: Maps a target and the gradient of one projection on its weight to the
#: row the sketch keeps (default: the flattened gradient).
RowOf = Callable[[PruningTarget, torch.Tensor], torch.Tensor]


class GradientSketch:
    """Projected gradients ``g_j`` of every target, ``[rows, numel]`` each.

    Args:
        gradients: Per target name, one flattened gradient per row.
        row_samples: Calibration sample of every row.
        num_projections: Rows per sample.
        sample_reduction: ``'sum'`` or ``'max'`` over the samples, as the
            distortion measure reduces them.
    """

    def __init__(self, gradients: Dict[str, torch.Tensor],
                 row_samples: torch.Tensor, num_projections: int,
                 sample_reduction: str) -> None:
        if sample_reduction not in ('sum', 'max'):
            raise ValueError(
                f'sample_reduction must be sum or max, got {sample_reduction}')
        self.gradients = gradients
        self.row_samples = row_samples
        self.num_projections = num_projections
        self.sample_reduction = sample_reduction

    @classmethod
    def measure(cls,
                targets: Sequence[PruningTarget],
                batches: Sequence[dict],
                head_outputs: Callable[[dict], HeadTensors],
                weights: torch.Tensor,
                sample_reduction: str,
                num_projections: int = 16,
                seed: int = 0,
                row_of: Optional[RowOf] = None) -> 'GradientSketch':
        """Run ``num_projections`` backward passes per calibration batch.

        Under torch.distributed each rank sketches a round-robin share of
        the batches and the rows are all-gathered in batch order: every
        rank ends with the sketch that one process would make.

        Args:
            targets: The layers whose weights get a sketch.
            batches: Preprocessed calibration batches.
            head_outputs: Maps a batch to the head's named tensors, with
                autograd (e.g. :class:`rdprune_mm.head_outputs.HeadOutputs`).
            weights: Weights of the squared errors: a ``[samples,
                tensors]`` matrix (tensors in sorted name order), or per
                sample a ``{name: tensor}`` dict of per-element weights
                (a distortion's ``quadratic_weights``).
            sample_reduction: How the distortion reduces over samples.
            num_projections: Random output directions per batch.
            seed: Seed of the directions (drawn on the CPU, so they are the
                same on every device).
            row_of: What is kept of each projected gradient (None: all of
                it); a reduction keeps the sketch small on large models.

        Returns:
            GradientSketch: float32 gradients on the weights' devices.
        """
        if num_projections < 1:
            raise ValueError(
                f'num_projections must be at least 1, got {num_projections}')
        mine = split_round_robin(range(len(batches)))
        local = run_everywhere(
            lambda: _sketch_rows(targets, batches, mine, head_outputs, weights,
                                 num_projections, seed, row_of or _flat_row))
        if is_distributed():
            by_sample = {}
            for part in dist.all_gather_object(
                    {i: {n: r.cpu() for n, r in rows.items()}
                     for i, rows in local.items()}):
                by_sample.update(part)
            devices = {t.name: t.weight.device for t in targets}
            local = {
                i: {n: r.to(devices[n]) for n, r in rows.items()}
                for i, rows in by_sample.items()
            }
        order = sorted(local)
        gradients = {
            t.name: torch.cat([local[i][t.name] for i in order])
            for t in targets
        }
        row_samples = torch.arange(len(batches)).repeat_interleave(
            num_projections)
        return cls(gradients, row_samples, num_projections, sample_reduction)

    def diagonal_scores(self, name: str,
                        weight: torch.Tensor) -> torch.Tensor:
        """Estimated distortion of pruning each weight of ``name`` alone:
        ``w_i^2 * diag(J^T W J)_i``, shaped like ``weight``."""
        gradients = self.gradients[name]
        diagonal = gradients.double().square().sum(0) / self.num_projections
        return (weight.detach().double().flatten().square() *
                diagonal).view(weight.shape)

    def curve(self, name: str, weight: torch.Tensor, order: torch.Tensor,
              counts: np.ndarray) -> np.ndarray:
        """Estimated distortion of pruning ``counts[k]`` weights of ``name``
        in ``order``, for every level ``k``.

        Args:
            name: The target.
            weight: Its weight.
            order: Flat weight indices, the first to prune first.
            counts: Number of weights each level prunes.

        Returns:
            np.ndarray: One distortion per level.
        """
        gradients = self.gradients[name]
        flat = weight.detach().flatten().double()
        removed = gradients.double()[:, order] * flat[order]
        prefix = torch.cat([
            torch.zeros(len(gradients), 1, dtype=torch.float64,
                        device=removed.device),
            removed.cumsum(1)
        ], 1)
        index = torch.as_tensor(counts, device=prefix.device)
        squared = prefix[:, index].square().cpu()
        per_sample = torch.zeros(
            int(self.row_samples.max()) + 1, len(counts),
            dtype=torch.float64).index_add_(0, self.row_samples, squared)
        per_sample /= self.num_projections
        if self.sample_reduction == 'max':
            return per_sample.max(0).values.numpy()
        return per_sample.sum(0).numpy()


def _projection_scales(weights: Union[torch.Tensor, HeadTensors],
                       names: Sequence[str]) -> list:
    """Square roots of one sample's weights, per output in ``names``' order:
    numbers for a row of a weight matrix, tensors for per-element weights."""
    if isinstance(weights, dict):
        return [weights[name].sqrt() for name in names]
    return weights.sqrt().tolist()


def _flat_row(target: PruningTarget, grad: torch.Tensor) -> torch.Tensor:
    return grad.flatten()


def _sketch_rows(targets: Sequence[PruningTarget], batches: Sequence[dict],
                 indices: Sequence[int], head_outputs: Callable[[dict],
                                                                HeadTensors],
                 weights, num_projections: int, seed: int,
                 row_of: RowOf) -> Dict[int, Dict[str, torch.Tensor]]:
    """The projected gradients of the batches at ``indices``: per batch
    index, ``[num_projections, numel]`` per target. Each batch draws its
    directions from a generator seeded by ``(seed, index)``, so any split of
    the batches across processes gives the same rows."""
    params = [t.weight for t in targets]
    out: Dict[int, Dict[str, torch.Tensor]] = {}
    requires_grad = [p.requires_grad for p in params]
    with progress_bar(len(indices) * num_projections) as progress:
        try:
            for param in params:
                param.requires_grad_(True)
            with torch.enable_grad():
                for index in indices:
                    generator = torch.Generator().manual_seed(
                        int(np.random.SeedSequence([seed, index]).
                            generate_state(1)[0]))
                    outputs = head_outputs(batches[index])
                    names = sorted(outputs)
                    scales = _projection_scales(weights[index], names)
                    rows: Dict[str, List[torch.Tensor]] = {
                        t.name: []
                        for t in targets
                    }
                    for j in range(num_projections):
                        projection = sum(
                            (torch.randn(outputs[n].shape,
                                         generator=generator).to(
                                             outputs[n].device,
                                             outputs[n].dtype) * outputs[n] *
                             scale).sum() for n, scale in zip(names, scales))
                        grads = torch.autograd.grad(
                            projection,
                            params,
                            retain_graph=j < num_projections - 1,
                            allow_unused=True)
                        for target, grad in zip(targets, grads):
                            if grad is None:
                                grad = torch.zeros_like(target.weight)
                            rows[target.name].append(
                                row_of(target, grad.detach()).float())
                        progress.update()
                    del outputs
                    out[index] = {n: torch.stack(r) for n, r in rows.items()}
        finally:
            for param, flag in zip(params, requires_grad):
                param.requires_grad_(flag)
    return out
