"""The prunable layers of a model.

A :class:`PruningTarget` wraps one layer that carries a prunable weight and
knows where that weight keeps its output channels:

==============================================  ==================  ====
kind                                            weight layout       axis
==============================================  ==================  ====
``conv``: nn.Conv1d/2d/3d                       (out, in, k...)     0
``linear``: nn.Linear                           (out, in)           0
``deconv``: nn.ConvTranspose1d/2d/3d            (in, out, k...)     1
``spconv``: spconv 2 sparse convolutions        (out, k..., in)     0
``mmcv_spconv``: mmcv.ops sparse convolutions   (k..., in, out)     -1
==============================================  ==================  ====
"""
from __future__ import annotations

from functools import lru_cache
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple, Type

import torch
from torch import nn

from .errors import PruningInputError
from .patterns import matches_any


@lru_cache(maxsize=None)
def _sparse_conv_classes() -> Tuple[Tuple[Type[nn.Module], str, int], ...]:
    classes = []
    try:
        from spconv.pytorch.conv import SparseConvolution
        classes.append((SparseConvolution, 'spconv', 0))
    except ImportError:
        pass
    try:
        from mmcv.ops.sparse_conv import SparseConvolution as MMCVSparseConv
        classes.append((MMCVSparseConv, 'mmcv_spconv', -1))
    except ImportError:
        pass
    return tuple(classes)


_DENSE_KINDS: Tuple[Tuple[Type[nn.Module], str, int], ...] = (
    (nn.modules.conv._ConvTransposeNd, 'deconv', 1),
    (nn.modules.conv._ConvNd, 'conv', 0),
    (nn.Linear, 'linear', 0),
)


def layer_kind(module: nn.Module) -> Optional[Tuple[str, int]]:
    """Return ``(kind, out_axis)`` of a prunable layer, or None."""
    for cls, kind, axis in (*_sparse_conv_classes(), *_DENSE_KINDS):
        if isinstance(module, cls) and isinstance(
                getattr(module, 'weight', None), torch.Tensor):
            return kind, axis
    return None


@dataclass(eq=False)
class PruningTarget:
    """One prunable layer.

    Args:
        name: The module's name in the model (``model.named_modules()``).
        module: The layer.
        kind: One of ``conv``, ``linear``, ``deconv``, ``spconv``,
            ``mmcv_spconv``.
        out_axis: The axis of ``module.weight`` that indexes output channels.
    """

    name: str
    module: nn.Module
    kind: str
    out_axis: int

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def num_params(self) -> int:
        """Number of weights that pruning may remove (biases are kept)."""
        return self.module.weight.numel()

    @property
    def num_out_channels(self) -> int:
        return self.module.weight.shape[self.out_axis]

    def channel_view(self,
                     tensor: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A weight-shaped tensor viewed as ``[out_channels, rest]``."""
        tensor = self.module.weight if tensor is None else tensor
        return tensor.movedim(self.out_axis, 0).reshape(
            self.num_out_channels, -1)


def find_targets(model: nn.Module,
                 include: Optional[Iterable[str]] = None,
                 exclude: Optional[Iterable[str]] = None
                 ) -> List[PruningTarget]:
    """Find the prunable layers of a model.

    Args:
        model: Any mmdet3d or mmdet model (any ``nn.Module``).
        include: Regular expressions; a layer is kept when one of them
            matches its name (``re.search``). None keeps every layer.
        exclude: Regular expressions; a matching layer is dropped.

    Returns:
        list[PruningTarget]: The targets, in ``named_modules()`` order.

    Raises:
        PruningInputError: If the patterns select no layer.
    """
    include = list(include) if include else []
    exclude = list(exclude) if exclude else []
    found = []
    for name, module in model.named_modules():
        kind = layer_kind(module)
        if kind is None:
            continue
        found.append(PruningTarget(name, module, *kind))
    selected = [
        target for target in found
        if (not include or matches_any(target.name, include))
        and not matches_any(target.name, exclude)
    ]
    if not selected:
        examples = ', '.join(t.name for t in found[:5]) or 'none'
        raise PruningInputError(
            f'the patterns include={include} exclude={exclude} select no '
            f'prunable layer out of {len(found)} (e.g. {examples}); fix '
            'pruner.targets.include / exclude in the config')
    return selected
