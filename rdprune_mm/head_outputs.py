"""The detector knowledge: run a detector up to its head and read the head.

Distortion is measured on the raw tensors that the detection head(s) return,
before decoding and NMS (CenterPoint: per task heatmap, reg, height, dim,
rot, vel; anchor heads: cls, bbox, dir). :class:`HeadOutputs` hooks the head
modules, runs the detector's ``predict`` on a preprocessed batch and stops
the forward pass as soon as the last head has returned, so decoding and NMS
never run.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from .errors import PruningInputError

#: Head attributes tried in order when no ``head_modules`` are given.
_DEFAULT_HEADS = (
    ('pts_bbox_head', ),
    ('bbox_head', ),
    ('rpn_head', 'roi_head'),
)


class _HeadsDone(Exception):
    """Raised from a forward hook once every head has returned."""


def default_head_names(model: nn.Module) -> List[str]:
    """The detection head module names of an mmdet3d or mmdet detector."""
    for names in _DEFAULT_HEADS:
        if all(getattr(model, name, None) is not None for name in names):
            return list(names)
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
            and ``roi_head``.
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
        try:
            self.model(**batch, mode='predict')
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
