"""Distillation from the dense detector while fine-tuning a pruned one."""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from ..checkpoint import (TRUSTED_PREFIX, checkpoint_misfit,
                          strip_module_prefix)
from ..errors import PruningInputError
from ..head_outputs import HeadOutputs, default_head_names, flatten_tensors
from ..registry import DISTORTIONS

HeadTensors = Dict[str, torch.Tensor]


def distillation_loss(student: HeadTensors, teacher: HeadTensors,
                      weights) -> torch.Tensor:
    """``sum w (student - teacher)^2`` over every head tensor.

    Args:
        student: The student's head tensors (with autograd).
        teacher: The teacher's, same names and shapes.
        weights: One sample's quadratic weights of a distortion measure:
            a ``{name: tensor}`` dict, or a row of numbers in sorted name
            order.
    """
    names = sorted(teacher)
    total = None
    for index, name in enumerate(names):
        weight = weights[name] if isinstance(weights, dict) else float(
            weights[index])
        if isinstance(weight, torch.Tensor):
            weight = weight.to(student[name].device, student[name].dtype)
        term = (weight * (student[name] - teacher[name])**2).sum()
        total = term if total is None else total + term
    return total


@HOOKS.register_module()
class HeadDistillationHook(Hook):
    """Add a loss between the model's head outputs and those of a frozen
    dense teacher, on every training batch.

    The teacher is the model of ``teacher_checkpoint`` (by default the
    config's ``load_from``, the dense detector that pruning starts from),
    frozen in eval mode on the model's device. On each batch it sees the
    same (augmented) inputs as the student; the loss is the distortion
    measure's quadratic form between the two heads' raw tensors, the same
    tensors and weights that pruning measures, times ``loss_weight``. It is
    logged as ``loss_distill``.

    Args:
        teacher_checkpoint: The dense checkpoint; None: the config's
            ``load_from``.
        distortion: The distortion measure (``DISTORTIONS`` registry) whose
            ``quadratic_weights`` weigh the squared differences.
        loss_weight: Factor on the loss.
        head_modules: Head module names; None: as
            :class:`~rdprune_mm.head_outputs.HeadOutputs` picks them.
    """

    priority = 'NORMAL'

    def __init__(self,
                 teacher_checkpoint: Optional[str] = None,
                 distortion: dict = dict(type='DecodedDistortion'),
                 loss_weight: float = 1.0,
                 head_modules: Optional[Sequence[str]] = None) -> None:
        if not loss_weight > 0:
            raise PruningInputError(
                f'HeadDistillationHook loss_weight must be > 0, got '
                f'{loss_weight}')
        self.teacher_checkpoint = teacher_checkpoint
        self.distortion = DISTORTIONS.build(dict(distortion))
        self.loss_weight = float(loss_weight)
        self.head_modules = list(head_modules) if head_modules else None
        self.teacher: Optional[nn.Module] = None
        self._student: Optional[nn.Module] = None

    def before_run(self, runner) -> None:
        # before RDPruneHook may slim the student (before_train, or while
        # a slim checkpoint loads): the teacher is the dense model
        student = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        path = self.teacher_checkpoint or runner.cfg.get('load_from')
        if not path:
            raise PruningInputError(
                'HeadDistillationHook needs the dense teacher: set its '
                'teacher_checkpoint, or load_from in the config')
        self.teacher = build_teacher(student, path)
        self._student = student
        heads = self.head_modules or default_head_names(student)
        teacher_outputs = HeadOutputs(self.teacher, heads)
        original_loss = student.loss

        def loss_with_distillation(batch_inputs, batch_data_samples, *args,
                                   **kwargs):
            # the teacher first: some encoders write into their inputs
            # (PillarFeatureNet with legacy=True), HeadOutputs runs a copy
            with torch.no_grad():
                target = teacher_outputs(
                    dict(inputs=batch_inputs, data_samples=batch_data_samples))
            captured: Dict[str, object] = {}
            modules = dict(student.named_modules())
            handles = [
                modules[name].register_forward_hook(
                    lambda module, inputs, output, name=name: captured.
                    __setitem__(name, output)) for name in heads
            ]
            try:
                losses = original_loss(batch_inputs, batch_data_samples, *args,
                                       **kwargs)
            finally:
                for handle in handles:
                    handle.remove()
            outputs: HeadTensors = {}
            for name in heads:
                outputs.update(flatten_tensors(captured.get(name), name))
            check_same_tensors(outputs, target)
            weights = self.distortion.quadratic_weights([target])[0]
            losses['loss_distill'] = self.loss_weight * distillation_loss(
                outputs, target, weights)
            return losses

        student.loss = loss_with_distillation
        runner.logger.info(
            f'HeadDistillationHook: teacher {path}, '
            f'{type(self.distortion).__name__} weights, loss weight '
            f'{self.loss_weight:g}, heads {heads}')

    def after_run(self, runner) -> None:
        if self._student is not None and 'loss' in vars(self._student):
            del self._student.loss
        self.teacher = None


def build_teacher(student: nn.Module, path: str) -> nn.Module:
    """A frozen copy of ``student`` with the weights of ``path``.

    Raises:
        PruningInputError: If the checkpoint does not fit the model.
    """
    # imported here: rdprune_mm.apis imports the hooks
    from ..apis import read_checkpoint
    trust = path.startswith(TRUSTED_PREFIX)
    checkpoint = read_checkpoint(path[len(TRUSTED_PREFIX):] if trust else path,
                                 trust)
    misfit = checkpoint_misfit(student.state_dict(), checkpoint)
    if misfit:
        raise PruningInputError(
            f'the teacher checkpoint {path} does not fit the model '
            f'({misfit}); give the dense checkpoint of this config')
    teacher = copy.deepcopy(student)
    state = checkpoint.get('state_dict', checkpoint)
    teacher.load_state_dict({
        strip_module_prefix(k): v
        for k, v in state.items()
    })
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_same_tensors(student: HeadTensors, teacher: HeadTensors) -> None:
    """Refuse head outputs that cannot be compared (two-stage heads whose
    training proposals differ from the teacher's, for one)."""
    mismatched: List[str] = [
        name for name in teacher
        if name not in student or student[name].shape != teacher[name].shape
    ]
    if mismatched or len(student) != len(teacher):
        raise PruningInputError(
            'HeadDistillationHook: the head outputs in training differ from '
            f'the teacher\'s ({mismatched[:3] or sorted(student)[:3]}); set '
            'head_modules to heads whose outputs do not depend on sampling, '
            "e.g. ['rpn_head']")
