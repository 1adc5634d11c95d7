"""A distortion of what the detector decodes, weighted toward objects.

:class:`NormalizedMSE` compares the raw head tensors. Most of their
elements are background anchors or heatmap cells whose logits sit far below
the score threshold, and changes there cost no accuracy; changes to the box
regression of an object cost a lot. :class:`DecodedDistortion` compares:

* scores after their sigmoid, as the decoder reads them (CenterPoint's
  ``heatmap``, an anchor head's class scores);
* box regression and direction outputs weighted by the reference's
  foreground score at the same place: CenterPoint's heatmap (the largest
  class score of the task at that cell), an anchor head's largest class
  score of that anchor.

Head types are told from the tensor names of
:class:`rdprune_mm.head_outputs.HeadOutputs`: a ``<prefix>.heatmap`` tensor
makes a CenterPoint task with the other ``<prefix>.*`` tensors as its
regression; ``<head>.0.<level>``, ``<head>.1.<level>`` and
``<head>.2.<level>`` tensors make an anchor head level (class scores, boxes,
directions). Any other tensor is compared as :class:`NormalizedMSE` does.

Every term is normalised by its reference energy (squared scores, or the
foreground-weighted squared regression; with ``regression_energy='centered'``
the foreground-weighted squared deviation of each regression channel from
its foreground-weighted mean, so that an output whose values vary little
between objects, a box size say, is compared with that variation rather
than with its offset from zero), every group (task, anchor level,
other tensor) weighs alike, and within a group the scores weigh
``score_weight`` and the regression tensors share the rest.
:meth:`DecodedDistortion.quadratic_weights` gives the per-element weights of
the second-order expansion (the sigmoid's slope squared for scores), which
is what the Taylor curves (:mod:`rdprune_mm.sketch`) need.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from .distortion import HeadTensors, SampleErrors
from .registry import DISTORTIONS


_ANCHOR_NAME = re.compile(r'^(?P<head>.+)\.(?P<kind>[012])\.(?P<level>\d+)$')


@dataclass
class OutputGroup:
    """Head tensors decoded together.

    Attributes:
        kind: ``'center'``, ``'anchor'`` or ``'other'``.
        score: The score tensor (``None`` for ``'other'``).
        regression: Tensors weighted by the foreground score (for
            ``'other'``: the one tensor compared as it is).
    """
    kind: str
    score: Optional[str]
    regression: List[str] = field(default_factory=list)


def output_groups(names: Sequence[str]) -> List[OutputGroup]:
    """Group head tensor names by head type (see the module docstring)."""
    names = sorted(names)
    taken = set()
    groups = []
    for name in names:
        if name.endswith('.heatmap'):
            prefix = name[:-len('heatmap')]
            regression = [
                n for n in names if n.startswith(prefix) and n != name
                and '.' not in n[len(prefix):]
            ]
            groups.append(OutputGroup('center', name, regression))
            taken.update([name, *regression])
    for name in names:
        match = _ANCHOR_NAME.match(name)
        if name in taken or not match or match['kind'] != '0':
            continue
        boxes = f'{match["head"]}.1.{match["level"]}'
        if boxes not in names or boxes in taken:
            continue
        directions = f'{match["head"]}.2.{match["level"]}'
        regression = [boxes] + ([directions] if directions in names
                                and directions not in taken else [])
        groups.append(OutputGroup('anchor', name, regression))
        taken.update([name, *regression])
    groups += [
        OutputGroup('other', None, [n]) for n in names if n not in taken
    ]
    return groups


def foreground(group: OutputGroup, reference: HeadTensors,
               name: str) -> torch.Tensor:
    """The reference's foreground score, broadcastable to ``name``'s
    tensor of ``group`` (``[N, C, H, W]`` head maps)."""
    scores = reference[group.score].double().sigmoid()
    target = reference[name]
    if group.kind == 'center':
        return scores.amax(1, keepdim=True)
    # anchor heads: channels are (anchor, class), (anchor, box code) and
    # (anchor, direction bin), the anchor outermost
    num_anchors = _num_anchors(group, reference)
    batch, _, *spatial = scores.shape
    per_anchor = scores.reshape(batch, num_anchors, -1, *spatial).amax(2)
    per_channel = target.shape[1] // num_anchors
    return per_anchor.repeat_interleave(per_channel, dim=1)


def _num_anchors(group: OutputGroup, reference: HeadTensors) -> int:
    """Anchors per location of an anchor head: from its direction tensor
    (2 bins per anchor), else 1 (every class and box channel of a location
    then shares the location's largest score)."""
    if len(group.regression) > 1:
        return reference[group.regression[1]].shape[1] // 2
    return 1


@DISTORTIONS.register_module()
class DecodedDistortion(SampleErrors):
    """Distortion of decoded scores and foreground-weighted boxes.

    ``D = mean_g [a_g E_g(score) + (1 - a_g) mean_t E_g(t)]`` over the
    groups ``g`` (CenterPoint tasks, anchor head levels, other tensors),
    where ``E(score) = sum_s ||sig(y_hat) - sig(y)||^2 / sum_s ||sig(y)||^2``
    and ``E(t) = sum_s sum f (y_hat - y)^2 / sum_s sum f (y - m)^2`` with
    ``f`` the reference's foreground score, ``m`` 0 (``'raw'``) or the
    channel's ``f``-weighted mean over all samples (``'centered'``), and
    ``a_g = score_weight`` (1 for a group without regression, 0 for an
    'other' tensor).

    Args:
        score_weight: Share of a group's scores, in [0, 1].
        regression_energy: ``'raw'`` or ``'centered'``: the normaliser of
            the regression terms.
        eps: Added to every normaliser.
    """

    sample_reduction = 'sum'

    def __init__(self,
                 score_weight: float = 0.5,
                 regression_energy: str = 'raw',
                 eps: float = 1e-12) -> None:
        if not 0 <= score_weight <= 1:
            raise ValueError(
                f'score_weight must be in [0, 1], got {score_weight}')
        if regression_energy not in ('raw', 'centered'):
            raise ValueError("regression_energy must be 'raw' or "
                             f"'centered', got {regression_energy!r}")
        self.score_weight = score_weight
        self.regression_energy = regression_energy
        self.eps = eps

    def _term_weights(self, groups: List[OutputGroup]) -> Dict[str, float]:
        """Each tensor's weight in the mean over groups."""
        weights = {}
        for group in groups:
            if group.kind == 'other':
                weights[group.regression[0]] = 1.0 / len(groups)
                continue
            share = self.score_weight if group.regression else 1.0
            weights[group.score] = share / len(groups)
            for name in group.regression:
                weights[name] = (1 - share) / len(
                    group.regression) / len(groups)
        return weights

    def _sample_terms(self,
                      reference: Sequence[HeadTensors],
                      outputs: Sequence[HeadTensors],
                      energies: bool = True) -> tuple:
        """The groups, the tensor names, and ``[samples, names]`` weighted
        squared errors and reference energies (about the regression
        centres only when ``energies`` are wanted)."""
        if len(reference) != len(outputs) or not reference:
            raise ValueError('reference and outputs must be equally long and '
                             f'non-empty, got {len(reference)} and '
                             f'{len(outputs)}')
        groups = output_groups(list(reference[0]))
        names = list(self._term_weights(groups))
        centres = (regression_means(groups, reference) if energies
                   and self.regression_energy == 'centered' else {})
        err, energy = [], []
        for ref, out in zip(reference, outputs):
            if sorted(out) != sorted(ref):
                raise ValueError('head outputs changed their names: '
                                 f'{sorted(out)} != {sorted(ref)}')
            terms = {}
            for group in groups:
                terms.update(_group_terms(group, ref, out, centres))
            err.append([terms[name][0] for name in names])
            energy.append([terms[name][1] for name in names])
        return (groups, names, torch.tensor(err, dtype=torch.float64),
                torch.tensor(energy, dtype=torch.float64))

    def sample_errors(self, reference: Sequence[HeadTensors],
                      outputs: Sequence[HeadTensors]) -> torch.Tensor:
        """``[samples, terms]`` weighted squared errors of the decoded
        scores and boxes (see :meth:`SampleErrors.sample_errors`)."""
        return self._sample_terms(reference, outputs, energies=False)[2]

    def reduce(self, reference: Sequence[HeadTensors],
               errors: torch.Tensor) -> float:
        """See :meth:`SampleErrors.reduce`."""
        groups, names, _, energy = self._sample_terms(reference, reference)
        weights = self._term_weights(groups)
        totals, energies = errors.sum(0), energy.sum(0)
        return float(
            sum(weights[name] * float(totals[j]) /
                (float(energies[j]) + self.eps)
                for j, name in enumerate(names)))

    def quadratic_weights(
            self, reference: Sequence[HeadTensors]) -> List[HeadTensors]:
        """Per sample, per tensor, per element: the weights ``w`` of
        ``D ~ sum_s sum_t sum w (y_hat - y)^2`` near ``y_hat = y``."""
        groups, names, _, energies = self._sample_terms(reference, reference)
        term = self._term_weights(groups)
        energy = dict(zip(names, energies.sum(0).tolist()))
        weights = []
        for ref in reference:
            sample = {}
            for group in groups:
                for name in ([group.score] if group.score else []) + \
                        group.regression:
                    scale = term[name] / (energy[name] + self.eps)
                    y = ref[name].detach().double()
                    if name == group.score:
                        slope = y.sigmoid() * (1 - y.sigmoid())
                        sample[name] = slope.square() * scale
                    elif group.kind == 'other':
                        sample[name] = torch.full_like(y, scale)
                    else:
                        sample[name] = foreground(
                            group, ref, name).double().expand_as(y) * scale
            weights.append(sample)
        return weights


def regression_means(
        groups: Sequence[OutputGroup],
        reference: Sequence[HeadTensors]) -> Dict[str, torch.Tensor]:
    """Per regression tensor, each channel's foreground-weighted mean over
    all samples (``[1, C, 1, 1]``)."""
    means = {}
    for group in groups:
        if group.kind == 'other':
            continue
        for name in group.regression:
            total, weight = 0.0, 0.0
            for ref in reference:
                f = foreground(group, ref, name).double().expand_as(ref[name])
                total = total + (f * ref[name].double()).sum((0, 2, 3))
                weight = weight + f.sum((0, 2, 3))
            means[name] = (total / weight.clamp_min(1e-12)).reshape(
                1, -1, 1, 1)
    return means


def _group_terms(
        group: OutputGroup,
        reference: HeadTensors,
        outputs: HeadTensors,
        centres: Optional[Dict[str, torch.Tensor]] = None) -> Dict[str, tuple]:
    """``{name: (weighted squared error, reference energy)}`` of one
    sample's group; the energy of a regression tensor is taken about its
    ``centres`` entry where there is one, else about zero."""
    terms = {}
    if group.kind == 'other':
        name = group.regression[0]
        y, y_hat = reference[name].double(), outputs[name].double()
        return {
            name: (float((y_hat - y).square().sum()), float(y.square().sum()))
        }
    y = reference[group.score].double().sigmoid()
    y_hat = outputs[group.score].double().sigmoid()
    terms[group.score] = (float(
        (y_hat - y).square().sum()), float(y.square().sum()))
    for name in group.regression:
        weight = foreground(group, reference, name).double()
        y, y_hat = reference[name].double(), outputs[name].double()
        centre = (centres or {}).get(name, 0.0)
        terms[name] = (float((weight * (y_hat - y).square()).sum()),
                       float((weight * (y - centre).square()).sum()))
    return terms
