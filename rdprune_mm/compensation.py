"""The compensate stage: what the pruning left is updated, without labels.

Two steps, each switchable (``pruner.compensate``):

- ``reconstruct``: each pruned weight layer's kept weights are refitted by
  least squares so that the layer's outputs on the calibration frames come
  as close as they can to the unpruned layer's (OBC / SparseGPT's layer-wise
  problem), with every pruned weight held at exactly zero. For output row
  ``w`` with kept entries ``S`` and the Gram matrix ``H = X Xᵀ`` of the
  layer's inputs ``X`` (image patches for a conv), the refit is
  ``w_S = (H_SS + λI)⁻¹ (H_S: w + λ w_S)``, with ``λ`` a ``damp`` share of
  H's mean diagonal. It covers nn.Linear, nn.Conv2d, 1x1 nn.Conv1d and nn.Conv3d,
  nn.ConvTranspose2d whose kernel equals its stride, and sparse
  convolutions (spconv 2 and mmcv.ops; not spconv's 1x1 layers), whose
  input rows are gathered through the layer's own input-output pairs
  (:func:`sparse_input_rows`); other layers are left as they are and
  counted.
- ``batchnorm``: every BatchNorm's running statistics re-estimated on the
  calibration frames (:func:`rdprune_mm.batchnorm.recalibrate_batchnorm`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import recalibrate_batchnorm
from .errors import PruningInputError
from .head_outputs import HeadOutputs
from .progress import progress_bar
from .targets import PruningTarget

_SPARSE_KINDS = ('spconv', 'mmcv_spconv')


def _is_pointwise(module: nn.Module) -> bool:
    return (all(k == 1 for k in module.kernel_size)
            and all(s == 1 for s in module.stride)
            and all(p == 0 for p in module.padding))


def reconstructable(target: PruningTarget) -> bool:
    """Whether :class:`LayerInputs` can form the target's inputs."""
    module = target.module
    if target.kind == 'spconv' and getattr(module, 'conv1x1', False):
        # spconv 2's 1x1 path multiplies by weight.view(in, out), which is
        # not the (out, 1, 1, 1, in) layout every other path reads
        return False
    if target.kind in ('linear', *_SPARSE_KINDS):
        return True
    if target.kind == 'conv':
        if module.groups != 1 or module.padding_mode != 'zeros':
            return False
        return isinstance(module, nn.Conv2d) or _is_pointwise(module)
    if target.kind == 'deconv':
        return (isinstance(module, nn.ConvTranspose2d) and module.groups == 1
                and tuple(module.kernel_size) == tuple(module.stride)
                and all(p == 0 for p in module.padding)
                and all(p == 0 for p in module.output_padding)
                and all(d == 1 for d in module.dilation))
    return False


def input_rows(target: PruningTarget, x: torch.Tensor) -> torch.Tensor:
    """The layer's input vectors, one row each: what one output row of
    :func:`weight_rows` multiplies.

    Args:
        target: A layer that :func:`reconstructable` accepts.
        x: The layer's input tensor in one call.

    Returns:
        torch.Tensor: ``(n, d)``.
    """
    module = target.module
    if target.kind in _SPARSE_KINDS:
        return sparse_input_rows(target, x)
    if target.kind == 'linear':
        return x.reshape(-1, module.in_features)
    if target.kind == 'deconv' or _is_pointwise(module):
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    patches = F.unfold(x, module.kernel_size, module.dilation,
                       module.padding, module.stride)  # (B, d, L)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def weight_rows(target: PruningTarget, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as ``(rows, d)``: one row per output (per output and
    kernel tap for a deconvolution), in the order of :func:`input_rows`."""
    if target.kind == 'deconv':  # (in, out, k...) -> (out * k..., in)
        return weight.movedim(0, -1).reshape(-1, weight.shape[0])
    if target.kind in _SPARSE_KINDS:  # -> (out, k... * in)
        return weight.movedim(target.out_axis,
                              0).reshape(weight.shape[target.out_axis], -1)
    return weight.reshape(weight.shape[0], -1)


def rows_to_weight(target: PruningTarget, rows: torch.Tensor,
                   like: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`weight_rows`; for a sparse convolution ``like``
    gives the layout and ``rows`` may have any number of rows."""
    if target.kind == 'deconv':
        shape = (*like.shape[1:], like.shape[0])
        return rows.reshape(shape).movedim(-1, 0)
    if target.kind in _SPARSE_KINDS:
        moved = like.movedim(target.out_axis, 0).shape[1:]
        return rows.reshape(-1, *moved).movedim(0, target.out_axis)
    return rows.reshape(like.shape)


@torch.no_grad()
def sparse_input_rows(target: PruningTarget, x) -> torch.Tensor:
    """The input rows of a sparse convolution, one per output site: the
    features at each kernel offset's input site (zero where that offset has
    no pair), in the order of :func:`weight_rows`.

    The layer itself gathers them: it runs once more on ``x`` with one
    output channel per (offset, input channel) and a one-hot weight, no
    bias and no fused activation, so that spconv's own input-output pairs
    (reused under the layer's ``indice_key``) decide which input feeds
    which output, for every algorithm, stride and submanifold layer alike.
    The module's hooks do not run and its attributes are restored.

    Args:
        target: A ``spconv`` or ``mmcv_spconv`` target.
        x: The layer's input ``SparseConvTensor`` in one call.

    Returns:
        torch.Tensor: ``(output sites, kernel volume * in channels)``.
    """
    module = target.module
    weight = module.weight
    width = weight.numel() // weight.shape[target.out_axis]
    eye = torch.eye(width, dtype=weight.dtype, device=weight.device)
    probe = rows_to_weight(target, eye, weight)
    params = module._parameters
    saved = dict(weight=params['weight'],
                 bias=params.get('bias'),
                 out_channels=module.out_channels,
                 act_type=getattr(module, 'act_type', None))
    try:
        params['weight'] = nn.Parameter(probe, requires_grad=False)
        if 'bias' in params:
            params['bias'] = None
        module.out_channels = width
        act = saved['act_type']
        if act is not None and hasattr(type(act), 'None_'):
            module.act_type = type(act).None_
        output = type(module).forward(module, x)
    finally:
        params['weight'] = saved['weight']
        if 'bias' in params:
            params['bias'] = saved['bias']
        module.out_channels = saved['out_channels']
        if saved['act_type'] is not None:
            module.act_type = saved['act_type']
    return output.features


class LayerRows:
    """Context manager that hands each call's input rows of every target
    (:func:`input_rows`, float64) to ``consume(target, rows)`` while the
    model runs.

    Args:
        targets: Layers that :func:`reconstructable` accepts.
        consume: Called once per call of a target's layer.
    """

    def __init__(
            self, targets: Sequence[PruningTarget],
            consume: Callable[[PruningTarget, torch.Tensor], None]) -> None:
        self.targets = list(targets)
        self.consume = consume
        self._handles: list = []

    def _hook(self, target: PruningTarget):

        def hook(module, args, output):
            x = args[0]
            if isinstance(x, torch.Tensor):
                x = x.detach()
            self.consume(target, input_rows(target, x).double())

        return hook

    def __enter__(self):
        for target in self.targets:
            self._handles.append(
                target.module.register_forward_hook(self._hook(target)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class LayerInputs(LayerRows):
    """Context manager that sums ``H = Σ x xᵀ`` over the input rows of each
    target (float64, on the layer's device) while the model runs.

    Args:
        targets: Layers that :func:`reconstructable` accepts.
    """

    def __init__(self, targets: Sequence[PruningTarget]) -> None:
        super().__init__(targets, self._add)
        self.grams: Dict[str, torch.Tensor] = {}

    def _add(self, target: PruningTarget, rows: torch.Tensor) -> None:
        gram = rows.T @ rows
        if target.name in self.grams:
            gram += self.grams[target.name]
        self.grams[target.name] = gram


def refit_ridge(gram: torch.Tensor, damp: float) -> torch.Tensor:
    """The refit's ridge: ``damp`` times the mean diagonal of ``gram``."""
    return damp * gram.diagonal().mean().clamp_min(1e-12)


def refit_rows(dense: torch.Tensor,
               kept: torch.Tensor,
               gram: torch.Tensor,
               damp: float,
               cross: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Least-squares refit of each row's kept entries.

    Args:
        dense: ``(rows, d)`` unpruned weights.
        kept: ``(rows, d)`` bool, the entries that stay.
        gram: ``(d, d)`` Gram matrix of the inputs the refit layer gets.
        damp: Share of the mean diagonal added to it: a ridge towards the
            unpruned kept weights (a large ``damp`` leaves them as they
            are; OBC / SparseGPT's damping of H).
        cross: ``(d, rows)``: ``Σ x̂ yᵀ`` of those inputs and the unpruned
            layer's outputs on its own inputs; None when the inputs are the
            unpruned model's (then it is ``gram @ dense.T``).

    Returns:
        torch.Tensor: ``(rows, d)`` float64 weights, zero where not kept;
        with ``cross`` None, a row with every entry kept is returned
        unchanged.
    """
    dense = dense.double()
    ridge = refit_ridge(gram, damp)
    # minimises ||X̂ᵀ w_S - y||² + ridge ||w_S - dense_S||²
    refit = torch.zeros_like(dense)
    # row r: Σ x̂ y_r, plus the ridge's pull towards the unpruned weights
    targets = (dense @ gram if cross is None else cross.T) + ridge * dense
    for row in range(dense.shape[0]):
        keep = kept[row]
        if cross is None and bool(keep.all()):
            refit[row] = dense[row]
            continue
        index = keep.nonzero().squeeze(1)
        if index.numel() == 0:
            continue
        system = gram[index][:, index]
        system.diagonal().add_(ridge)
        refit[row, index] = torch.linalg.solve(system, targets[row, index])
    return refit


@dataclass
class DenseLayers:
    """What the reconstruction keeps of the unpruned model, recorded before
    the pruning.

    Attributes:
        weights: The unpruned weights of the layers to refit (sequential
            refit: of every target, to run the unpruned model again).
        grams: Each layer's input Gram matrix (empty for the sequential
            refit, which forms it after the pruning).
        refittable: Names of the layers that can be refitted.
        head_modules: The pruner's ``head_modules``.
    """

    weights: Dict[str, torch.Tensor]
    grams: Dict[str, torch.Tensor]
    refittable: List[str]
    head_modules: Optional[Sequence[str]] = None


def _set_weights(targets: Sequence[PruningTarget],
                 weights: Dict[str, torch.Tensor]) -> None:
    for target in targets:
        target.weight.copy_(weights[target.name])


def _call_order(head: HeadOutputs, batch: dict,
                targets: Sequence[PruningTarget]) -> List[PruningTarget]:
    """``targets`` in the order the model first calls them on ``batch``
    (layers it does not call are left out)."""
    order: List[PruningTarget] = []
    with LayerRows(
            targets, lambda target, rows: None
            if target in order else order.append(target)):
        head(batch)
    return order


class Compensation:
    """The compensate stage's settings and steps.

    Args:
        reconstruct: Refit the kept weights of each pruned layer
            (weight pruning only).
        batchnorm: Re-estimate every BatchNorm's running statistics on the
            calibration frames after the pruning.
        damp: Ridge of the refit towards the unpruned kept weights, a share
            of the mean diagonal of H (0: the least-squares fit; large:
            the kept weights as they were).
        sequential: Refit the layers in the order the model calls them,
            each on the inputs the pruned model gives it with the layers
            before it already refitted, towards the unpruned layer's outputs
            on the unpruned model's inputs (SparseGPT's order). Two passes
            of the calibration frames per refitted layer. False: every
            layer on the unpruned model's inputs, from one pass before the
            pruning.
        num_samples: Frames of the refit and the BatchNorm statistics: the
            calibration dataloader's first ``num_samples`` (None: the
            curves' calibration frames).
        curves: Measure the curves with each layer's kept weights refitted
            (:mod:`rdprune_mm.refitted_curves`), so that the allocation
            counts what the refit recovers; needs ``reconstruct``.
    """

    def __init__(self,
                 reconstruct: bool = False,
                 batchnorm: bool = False,
                 damp: float = 0.01,
                 sequential: bool = False,
                 num_samples: Optional[int] = None,
                 curves: bool = False) -> None:
        for key, value in (('reconstruct', reconstruct), ('batchnorm',
                                                          batchnorm),
                           ('sequential', sequential), ('curves', curves)):
            if not isinstance(value, bool):
                raise PruningInputError(
                    f'pruner.compensate.{key}={value!r} must be True or '
                    'False')
        if isinstance(damp, bool) or not isinstance(
                damp, (int, float)) or not 0 <= damp < math.inf:
            raise PruningInputError(
                f'pruner.compensate.damp={damp!r} must be a number >= 0, '
                'e.g. 0.01')
        if num_samples is not None and (isinstance(num_samples, bool)
                                        or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise PruningInputError(
                f'pruner.compensate.num_samples={num_samples!r} must be a '
                'number of frames >= 1, or None for the calibration frames')
        if curves and not reconstruct:
            raise PruningInputError(
                'pruner.compensate.curves=True measures the curves after the '
                'refit; it needs pruner.compensate.reconstruct=True')
        self.num_samples = num_samples
        self.curves = curves
        self.reconstruct = reconstruct
        self.batchnorm = batchnorm
        self.damp = float(damp)
        self.sequential = sequential

    @property
    def enabled(self) -> bool:
        return self.reconstruct or self.batchnorm

    @property
    def frames_wanted(self) -> Optional[int]:
        """The frames to prepare for this stage beside the calibration's:
        ``num_samples`` when the stage runs, else None."""
        return self.num_samples if self.enabled else None

    @torch.no_grad()
    def record(self, model: nn.Module, batches: Sequence[dict],
               targets: Sequence[PruningTarget],
               head_modules: Optional[Sequence[str]] = None
               ) -> Optional[DenseLayers]:
        """Before the pruning: the unpruned weights, and without
        ``sequential`` or with ``curves`` the input Gram matrices of the
        layers to refit (None without ``reconstruct``)."""
        if not self.reconstruct:
            return None
        layers = [t for t in targets if reconstructable(t)]
        names = [t.name for t in layers]
        if self.sequential and not self.curves:
            return DenseLayers(
                weights={t.name: t.weight.detach().clone()
                         for t in targets},
                grams={},
                refittable=names,
                head_modules=head_modules)
        head = HeadOutputs(model, head_modules)
        with LayerInputs(layers) as inputs, progress_bar(
                len(batches)) as progress:
            for batch in batches:
                head(batch)
                progress.update()
        kept = targets if self.sequential else layers
        return DenseLayers(
            weights={t.name: t.weight.detach().clone()
                     for t in kept},
            grams=inputs.grams,
            refittable=names,
            head_modules=head_modules)

    def _refit(self,
               target: PruningTarget,
               dense: DenseLayers,
               gram: torch.Tensor,
               cross: Optional[torch.Tensor] = None) -> None:
        weight = target.weight
        rows = refit_rows(weight_rows(target, dense.weights[target.name]),
                          weight_rows(target, weight != 0), gram, self.damp,
                          cross)
        weight.copy_(rows_to_weight(target, rows, weight))

    def _refit_one(self, head: HeadOutputs, batches: Sequence[dict],
                   targets: Sequence[PruningTarget], target: PruningTarget,
                   dense: DenseLayers, pruned: Dict[str,
                                                    torch.Tensor]) -> None:
        """One step of the sequential refit; ``pruned`` holds the weights
        of the pruned model and gets the refitted layer's."""
        dense_rows = weight_rows(target, dense.weights[target.name]).double()
        outputs: List[torch.Tensor] = []
        sums: dict = dict(gram=0, cross=0)

        def add(t: PruningTarget, rows: torch.Tensor) -> None:
            sums['gram'] = sums['gram'] + rows.T @ rows
            sums['cross'] = sums['cross'] + rows.T @ outputs.pop(0)

        # frame by frame, so that one frame's outputs are held at a time
        for batch in batches:
            _set_weights(targets, dense.weights)
            with LayerRows(
                [target], lambda t, rows: outputs.append(rows @ dense_rows.T)):
                head(batch)
            _set_weights(targets, pruned)
            with LayerRows([target], add):
                head(batch)
        self._refit(target, dense, sums['gram'], sums['cross'])
        pruned[target.name] = target.weight.detach().clone()

    def _refit_in_order(self, model: nn.Module, batches: Sequence[dict],
                        targets: Sequence[PruningTarget],
                        layers: Sequence[PruningTarget],
                        dense: DenseLayers) -> int:
        """The sequential refit of ``layers``: per layer, one pass of the
        unpruned model for its outputs and one of the pruned model for its
        inputs. Returns the number of layers refitted (those that run)."""
        head = HeadOutputs(model, dense.head_modules)
        pruned = {t.name: t.weight.detach().clone() for t in targets}
        # the first pass also fixes a two-stage head's proposals for
        # batches[0] (HeadOutputs): they must be the unpruned model's
        _set_weights(targets, dense.weights)
        order = _call_order(head, batches[0], layers)
        with progress_bar(len(order)) as progress:
            for target in order:
                self._refit_one(head, batches, targets, target, dense, pruned)
                progress.update()
        _set_weights(targets, pruned)
        return len(order)

    @torch.no_grad()
    def apply(self, model: nn.Module, batches: Sequence[dict],
              targets: Sequence[PruningTarget],
              dense: Optional[DenseLayers]) -> dict:
        """After the pruning: refit, then re-estimate BatchNorm.

        Returns:
            dict: ``reconstructed`` (layers refitted: partly pruned ones),
            ``not_reconstructed`` (pruned layers of other kinds, by kind),
            ``batchnorm`` (BatchNorm layers re-estimated) and ``frames``
            (the calibration frames they used).
        """
        report: dict = dict(reconstructed=0,
                            not_reconstructed={},
                            batchnorm=0,
                            frames=len(batches))
        if dense is not None:
            layers = []
            for target in targets:
                zeros = target.weight == 0
                if target.name not in dense.refittable:
                    if bool(zeros.any()):
                        kinds = report['not_reconstructed']
                        kinds[target.kind] = kinds.get(target.kind, 0) + 1
                elif bool(zeros.any()) and not bool(zeros.all()):
                    layers.append(target)  # partly pruned
            if self.sequential:
                report['reconstructed'] = self._refit_in_order(
                    model, batches, targets, layers, dense)
            else:
                for target in layers:
                    self._refit(target, dense, dense.grams[target.name])
                report['reconstructed'] = len(layers)
        if self.batchnorm:
            report['batchnorm'] = recalibrate_batchnorm(model, batches)
        return report


def build_compensation(cfg: Optional[dict],
                       allow_reconstruct: bool = True) -> Compensation:
    """A :class:`Compensation` from ``pruner.compensate`` (None: off).

    Args:
        cfg: ``dict(reconstruct=..., batchnorm=..., damp=...,
            sequential=..., num_samples=..., curves=...)`` or None.
        allow_reconstruct: False for pruners whose masks are not weight
            masks (channel pruning).
    """
    cfg = dict(cfg or {})
    allowed = {
        'reconstruct', 'batchnorm', 'damp', 'sequential', 'num_samples',
        'curves'
    }
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise PruningInputError(
            f'pruner.compensate has unknown key(s) {unknown}; the keys are '
            f'{sorted(allowed)}')
    compensation = Compensation(**cfg)
    if compensation.reconstruct and not allow_reconstruct:
        raise PruningInputError(
            'pruner.compensate.reconstruct=True refits weight-pruned layers '
            'only; a channel pruner takes compensate=dict(batchnorm=True)')
    return compensation
