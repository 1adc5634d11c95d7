"""The detector knowledge: run a detector up to its head and read the head.

Distortion is measured on the raw tensors that the detection head(s) return,
before decoding and NMS (CenterPoint: per task heatmap, reg, height, dim,
rot, vel; anchor heads: cls, bbox, dir). :class:`HeadOutputs` hooks the head
modules, runs the detector's ``predict`` on a preprocessed batch and stops
the forward pass as soon as the last head has returned, so decoding and NMS
never run.

Two-stage detectors (PV-RCNN, Part-A2, Faster R-CNN) decode and NMS their RPN
outputs into proposals before the RoI head runs. A pruned RPN would change
the proposals, and the RoI head's outputs would no longer line up with the
reference ones. :class:`HeadOutputs` therefore records each batch's proposals
on its first pass and hands the same proposals to the RoI head on every later
pass, so the RoI head's distortion is measured on the reference proposals.

Every pass runs on clones of the batch's input tensors: some modules write
into their inputs (mmdet3d's ``PillarFeatureNet`` with ``legacy=True``, its
default, subtracts the pillar centres from the voxels in place), and a
second pass over the same batch would otherwise see other inputs.
"""
from __future__ import annotations

import copy
import functools
from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

from .errors import PruningInputError

#: Head attributes tried in order when no ``head_modules`` are given.
_SINGLE_STAGE_HEADS = ('pts_bbox_head', 'bbox_head')
#: Heads of a two-stage ``roi_head`` whose ``forward`` runs in predict.
_ROI_SUBHEADS = ('semantic_head', 'bbox_head', 'mask_head')


@functools.lru_cache(maxsize=None)
def sparse_tensor_types() -> tuple:
    """spconv's ``SparseConvTensor``, imported on first use (``()``
    without spconv: no object is one)."""
    try:
        from spconv.pytorch import SparseConvTensor
    except ImportError:
        return ()
    return (SparseConvTensor, )


def clone_tensors(value: Any) -> Any:
    """A copy of nested dicts, lists and tuples whose tensors are cloned
    (other leaves are shared). A sparse tensor gets its own features,
    indices and index cache (the cached index pairs themselves are shared,
    never written)."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, sparse_tensor_types()):
        twin = value.replace_feature(value.features.clone())
        twin.indices = value.indices.clone()
        twin.indice_dict = dict(value.indice_dict)
        return twin
    if isinstance(value, dict):
        return {key: clone_tensors(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone_tensors(item) for item in value)
    return value


class _HeadsDone(Exception):
    """Raised from a forward hook once every head has returned."""


def default_head_names(model: nn.Module) -> List[str]:
    """The detection head module names of an mmdet3d or mmdet detector.

    Single-stage: ``pts_bbox_head`` or ``bbox_head``. Two-stage: ``rpn_head``
    and the sub-heads of ``roi_head`` (its own ``forward`` never runs in
    predict).
    """
    for name in _SINGLE_STAGE_HEADS:
        if getattr(model, name, None) is not None:
            return [name]
    rpn_head = getattr(model, 'rpn_head', None)
    roi_head = getattr(model, 'roi_head', None)
    if rpn_head is not None and roi_head is not None:
        subheads = [
            f'roi_head.{name}' for name in _ROI_SUBHEADS
            if getattr(roi_head, name, None) is not None
        ]
        if subheads:
            return ['rpn_head', *subheads]
    raise PruningInputError(
        f'cannot tell the detection head of {type(model).__name__}; set '
        "pruner.head_modules=['<module name>', ...] in the config")


def flatten_tensors(output: Any, prefix: str) -> Dict[str, torch.Tensor]:
    """Flatten nested tuples, lists and dicts of tensors into named tensors.

    Args:
        output: What a head returned.
        prefix: Name of the head; keys are ``prefix.index.key...``.

    Returns:
        dict[str, torch.Tensor]: One entry per tensor leaf; other leaves
        (None, numbers) are skipped.
    """
    if isinstance(output, torch.Tensor):
        return {prefix: output}
    if isinstance(output, dict):
        items = output.items()
    elif isinstance(output, (list, tuple)):
        items = enumerate(output)
    else:
        return {}
    flat: Dict[str, torch.Tensor] = {}
    for key, value in items:
        flat.update(flatten_tensors(value, f'{prefix}.{key}'))
    return flat


class HeadOutputs:
    """Callable that maps a preprocessed batch to the head's raw tensors.

    Args:
        model: An mmdet3d or mmdet detector.
        head_modules: Names of the head modules whose outputs count. None
            picks ``pts_bbox_head``, else ``bbox_head``, else ``rpn_head``
            and the sub-heads of ``roi_head``.
    """

    def __init__(self,
                 model: nn.Module,
                 head_modules: Optional[Sequence[str]] = None) -> None:
        self.model = model
        self.head_names = list(head_modules or default_head_names(model))
        modules = dict(model.named_modules())
        missing = [name for name in self.head_names if name not in modules]
        if missing:
            raise PruningInputError(
                f'head module(s) {missing} not found in '
                f'{type(model).__name__}; fix pruner.head_modules')
        self.heads = [modules[name] for name in self.head_names]
        rpn_head = getattr(model, 'rpn_head', None)
        self._replays_proposals = (
            rpn_head is not None and hasattr(rpn_head, 'predict_by_feat')
            and any(name != 'rpn_head' for name in self.head_names))
        # id(batch) -> (batch, proposals); the batch is kept so that its id
        # cannot be reused by another object.
        self._proposals: Dict[int, tuple] = {}
        #: Set by ``upstream_replay.replaying_unchanged_parts``.
        self.replay = None

    @contextmanager
    def _fixed_proposals(self, batch: dict) -> Iterator[None]:
        """Record the RPN's proposals for ``batch`` on its first pass; on
        every later pass the RPN still runs its ``forward`` but hands the RoI
        head copies of the recorded proposals instead of decoding its own."""
        if not self._replays_proposals:
            yield
            return
        rpn_head = self.model.rpn_head
        decode = rpn_head.predict_by_feat
        recorded = self._proposals.get(id(batch))

        def predict_by_feat(*args, **kwargs):
            if recorded is not None:
                return copy.deepcopy(recorded[1])
            proposals = decode(*args, **kwargs)
            self._proposals[id(batch)] = (batch, copy.deepcopy(proposals))
            return proposals

        rpn_head.predict_by_feat = predict_by_feat
        try:
            yield
        finally:
            del rpn_head.predict_by_feat

    def __call__(self, batch: dict) -> Dict[str, torch.Tensor]:
        """Run one preprocessed batch and return the heads' tensors.

        Args:
            batch: Output of the model's data preprocessor: a dict with
                ``inputs`` and ``data_samples``.

        Returns:
            dict[str, torch.Tensor]: The heads' outputs, flattened.
        """
        captured: Dict[str, Any] = {}

        def make_hook(name: str):

            def hook(module, args, output):
                captured[name] = output
                if len(captured) == len(self.heads):
                    raise _HeadsDone

            return hook

        handles = [
            head.register_forward_hook(make_hook(name))
            for name, head in zip(self.head_names, self.heads)
        ]
        replay = (self.replay.one_pass(batch)
                  if self.replay is not None else nullcontext())
        try:
            with self._fixed_proposals(batch), replay:
                self.model(**{**batch,
                              'inputs': clone_tensors(batch['inputs'])},
                           mode='predict')
        except _HeadsDone:
            pass
        finally:
            for handle in handles:
                handle.remove()
        not_run = [name for name in self.head_names if name not in captured]
        if not_run:
            raise RuntimeError(
                f'head module(s) {not_run} did not run in predict; set '
                'pruner.head_modules to modules that do')
        flat: Dict[str, torch.Tensor] = {}
        for name in self.head_names:
            flat.update(flatten_tensors(captured[name], name))
        return flat
