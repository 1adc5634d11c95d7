"""The calibrate and reference-outputs stages: one run of the calibration
frames through the unpruned model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from mmengine.logging import MMLogger
from torch import nn

from ..curves import FrameSplit
from ..errors import PruningInputError
from ..fileio import fingerprint
from ..flops import UseCounter
from ..head_outputs import HeadOutputs
from ..targets import PruningTarget


@dataclass
class Calibration:
    """The unpruned model's outputs on the calibration frames.

    Attributes:
        head: Runs a batch up to the detection head.
        reference: Head outputs of every batch.
        uses: Per target name, uses per weight (see :mod:`rdprune_mm.flops`).
        measure: Runs the calibration set on the model as it is and returns
            the distortion against ``reference``.
        unpruned_distortion: ``measure()`` of the unpruned model.
        frames: ``measure`` from per-frame error terms, for ranks that
            share the frames (None: the distortion has no
            ``sample_errors``).
    """

    head: HeadOutputs
    reference: List[Dict[str, torch.Tensor]] = field(repr=False)
    uses: Dict[str, torch.Tensor] = field(repr=False)
    measure: Callable[[], float] = field(repr=False)
    unpruned_distortion: float
    frames: Optional[FrameSplit] = None

    def fingerprint(self, model: nn.Module, settings: dict) -> str:
        """Key of what the curves depend on: the model's tensors, the
        reference outputs and the pruner's ``settings``."""
        reference_tensors = ((f'{i}.{name}', tensor)
                             for i, outputs in enumerate(self.reference)
                             for name, tensor in sorted(outputs.items()))
        return fingerprint(
            (*model.state_dict().items(), *reference_tensors),
            extra=settings)


def check_batches(batches: Sequence[dict]) -> None:
    """Refuse an empty calibration set."""
    if not batches:
        raise PruningInputError(
            'the calibration set is empty; give at least one frame')


@torch.no_grad()
def calibrate(model: nn.Module, batches: Sequence[dict],
              targets: Sequence[PruningTarget],
              head_modules: Optional[Sequence[str]],
              distortion: Callable) -> Calibration:
    """Run the calibration frames once through the unpruned model.

    Args:
        model: The detector, in eval mode, on its device.
        batches: Preprocessed calibration batches.
        targets: The layers whose uses per weight are counted.
        head_modules: Modules whose outputs define the distortion (None:
            the detector's detection head).
        distortion: A measure of the ``DISTORTIONS`` registry.

    Returns:
        Calibration: The reference outputs and how to measure against them.
    """
    check_batches(batches)
    for target in targets:
        if not bool(torch.isfinite(target.weight).all()):
            raise PruningInputError(
                f'layer {target.name} holds NaN or Inf weights; give a '
                'checkpoint whose training did not diverge')
    head = HeadOutputs(model, head_modules)
    with UseCounter(targets) as counter:
        reference = [head(batch) for batch in batches]
    for index, outputs in enumerate(reference):
        for name, tensor in outputs.items():
            if not bool(torch.isfinite(tensor).all()):
                raise PruningInputError(
                    f'head output {name} holds NaN or Inf on calibration '
                    f'frame {index}; check the frame and the checkpoint')

    def measure() -> float:
        return distortion(reference, [head(batch) for batch in batches])

    unpruned = measure()
    if unpruned != 0:
        MMLogger.get_current_instance().warning(
            f'the unpruned model reproduces its own outputs only to a '
            f'distortion of {unpruned:.3g}: its forward pass is not '
            'deterministic, and curves below that level are noise')
    frames = None
    if hasattr(distortion, 'sample_errors'):

        def frame_errors(indices: Sequence[int]) -> torch.Tensor:
            return distortion.sample_errors(
                [reference[i] for i in indices],
                [head(batches[i]) for i in indices])

        frames = FrameSplit(
            len(batches), frame_errors,
            lambda errors: distortion.reduce(reference, errors))
    return Calibration(head, reference, counter.uses(len(batches)), measure,
                       unpruned, frames)
