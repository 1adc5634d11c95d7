"""Distortion between the reference head outputs and the pruned model's.

Each measure takes two equally long lists (one entry per calibration
sample) of ``{name: tensor}`` dicts and returns one float. The samples are
the calibration batches, one frame each by default.

Every measure is a weighted sum of squared errors per sample and output
tensor, reduced over the samples by a sum or a maximum. It says so through
:meth:`quadratic_weights` and ``sample_reduction``, which is what the
Taylor curve estimator (:mod:`rdprune_mm.sketch`) needs to approximate it.

A measure is computed in two steps, so that ranks can share the samples:
``sample_errors(reference, outputs)`` gives one row of error terms per
sample, computed from that sample alone, and ``reduce(reference, errors)``
turns the rows of every sample, in order, into the distortion (the
normalisers come from the whole ``reference``). Calling a measure
is ``reduce(reference, sample_errors(reference, outputs))``.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

from .registry import DISTORTIONS

HeadTensors = Dict[str, torch.Tensor]


def error_terms(
    reference: Sequence[HeadTensors], outputs: Sequence[HeadTensors]
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared error, reference energy and element count per sample/tensor.

    Returns:
        tuple[torch.Tensor]: Three float64 ``[samples, tensors]`` matrices:
        ``sum((y - y_hat)^2)``, ``sum(y^2)`` and the number of elements.
    """
    if len(reference) != len(outputs) or not reference:
        raise ValueError('reference and outputs must be equally long and '
                         f'non-empty, got {len(reference)} and '
                         f'{len(outputs)}')
    names = sorted(reference[0])
    err, energy, count = [], [], []
    for ref, out in zip(reference, outputs):
        if sorted(out) != names:
            raise ValueError('head outputs changed their names: '
                             f'{sorted(out)} != {names}')
        err.append(torch.stack([
            ((out[n].double() - ref[n].double())**2).sum() for n in names
        ]).cpu())
        energy.append(
            torch.stack([(ref[n].double()**2).sum() for n in names]).cpu())
        count.append(
            torch.tensor([float(ref[n].numel()) for n in names],
                         dtype=torch.float64))
    return torch.stack(err), torch.stack(energy), torch.stack(count)


class SampleErrors:
    """Base of the measures: the distortion is :meth:`reduce` of every
    sample's :meth:`sample_errors` (by default the squared error of each
    output tensor)."""

    def __call__(self, reference: Sequence[HeadTensors],
                 outputs: Sequence[HeadTensors]) -> float:
        return self.reduce(reference, self.sample_errors(reference, outputs))

    def sample_errors(self, reference: Sequence[HeadTensors],
                      outputs: Sequence[HeadTensors]) -> torch.Tensor:
        """``[samples, terms]`` error terms, each row from its sample alone
        (here the squared error of each tensor, sorted by name)."""
        return error_terms(reference, outputs)[0]

    def reduce(self, reference: Sequence[HeadTensors],
               errors: torch.Tensor) -> float:
        """The distortion from the :meth:`sample_errors` rows of every
        sample of ``reference``, in its order."""
        raise NotImplementedError


@DISTORTIONS.register_module()
class NormalizedMSE(SampleErrors):
    """Squared error over reference energy, averaged over output tensors.

    ``D = mean_t sum_s ||y_st - y_hat_st||^2 / sum_s ||y_st||^2``, so a
    heatmap and a regression map weigh alike whatever their scale.

    Args:
        eps: Added to the energy of all-zero reference tensors.
    """

    sample_reduction = 'sum'

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = eps

    def reduce(self, reference: Sequence[HeadTensors],
               errors: torch.Tensor) -> float:
        """See :meth:`SampleErrors.reduce`."""
        _, energy, _ = error_terms(reference, reference)
        return float((errors.sum(0) / (energy.sum(0) + self.eps)).mean())

    def quadratic_weights(self,
                          reference: Sequence[HeadTensors]) -> torch.Tensor:
        """``[samples, tensors]`` weights ``w`` of the squared errors:
        ``D = reduce_s sum_t w_st ||y_st - y_hat_st||^2``, tensors in
        sorted name order."""
        _, energy, _ = error_terms(reference, reference)
        weights = 1.0 / (energy.sum(0) + self.eps) / energy.shape[1]
        return weights.expand_as(energy).clone()


@DISTORTIONS.register_module()
class MSE(SampleErrors):
    """Plain mean squared error over every output element."""

    sample_reduction = 'sum'

    def reduce(self, reference: Sequence[HeadTensors],
               errors: torch.Tensor) -> float:
        """See :meth:`SampleErrors.reduce`."""
        _, _, count = error_terms(reference, reference)
        return float(errors.sum() / count.sum())

    def quadratic_weights(self,
                          reference: Sequence[HeadTensors]) -> torch.Tensor:
        """See :meth:`NormalizedMSE.quadratic_weights`."""
        _, _, count = error_terms(reference, reference)
        return torch.full_like(count, 1.0 / float(count.sum()))


@DISTORTIONS.register_module()
class WorstCaseNormalizedMSE(SampleErrors):
    """The largest per-sample :class:`NormalizedMSE` over the samples.

    Args:
        eps: Added to the energy of all-zero reference tensors.
    """

    sample_reduction = 'max'

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = eps

    def reduce(self, reference: Sequence[HeadTensors],
               errors: torch.Tensor) -> float:
        """See :meth:`SampleErrors.reduce`."""
        _, energy, _ = error_terms(reference, reference)
        return float((errors / (energy + self.eps)).mean(1).max())

    def quadratic_weights(self,
                          reference: Sequence[HeadTensors]) -> torch.Tensor:
        """See :meth:`NormalizedMSE.quadratic_weights`."""
        _, energy, _ = error_terms(reference, reference)
        return 1.0 / (energy + self.eps) / energy.shape[1]
