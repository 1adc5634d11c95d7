"""FLOPs of the prunable layers, measured on calibration frames.

Every weight element of a layer is used a number of times per forward pass
(multiply-accumulates, MACs, per weight element). :class:`UseCounter` hooks
the targets and counts these uses on the batches that run while it is
active:

* dense ``conv`` (``nn.Conv1d/2d/3d``): every weight element is used once
  per output position, ``N * prod(out spatial)`` times
  (``output.numel() / out_channels``);
* ``linear``: once per row, ``output.numel() / out_features``;
* ``deconv`` (``nn.ConvTranspose``): once per input position,
  ``input.numel() / in_channels`` (the positions that ``padding`` crops
  away are counted too);
* ``spconv`` / ``mmcv_spconv``: a weight element at kernel offset ``k`` is
  used once per active input-output pair of that offset. The pairs are the
  ones spconv itself computed for the layer: the ``indice_pair_num[k]`` of
  the ``IndiceData`` that the layer leaves in the output's
  ``indice_dict[indice_key]`` (``(pair_fwd[k] >= 0).sum()`` for spconv's
  implicit GEMM data; the 4th entry of mmcv's tuple), completed for
  submanifold layers (:func:`submanifold_counts`). A layer without an
  ``indice_key`` is given a temporary one for the pass so that spconv
  records its pairs. An inverse convolution reads the pairs of the
  convolution it inverts, which are the same pairs reversed.

The uses are averaged over the batches. A layer's FLOPs with a keep-mask
are ``2 * sum(uses[mask])``: one multiply and one add per use of a kept
weight; biases, normalization and activations are not counted. Pruned
weights are assumed to cost nothing, as with a sparse kernel. For dense
layers all weight elements of the layer are used equally often, so the
FLOPs are proportional to the kept weights; for sparse convolutions the
kernel offsets differ (the centre offset of a submanifold convolution is
used by every voxel, the corners by few), and the counts are exact per
offset.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .targets import PruningTarget

_SPARSE_KINDS = ('spconv', 'mmcv_spconv')
_TEMP_KEY = '__rdprune_mm_flops_{}'


def _dense_uses(target: PruningTarget, args: tuple,
                output: torch.Tensor) -> torch.Tensor:
    """Uses of each weight element of a dense layer in one call (scalar)."""
    module = target.module
    if target.kind == 'deconv':
        count = args[0].numel() / module.in_channels
    elif target.kind == 'linear':
        count = output.numel() / module.out_features
    else:
        count = output.numel() / module.out_channels
    return torch.tensor(float(count), dtype=torch.float64)


def pairs_per_offset(indice_data) -> torch.Tensor:
    """Active input-output pairs per kernel offset of spconv's pair data.

    Args:
        indice_data: spconv 2's ``IndiceData`` (``indice_pair_num``) or
            ``ImplicitGemmIndiceData`` (``pair_fwd``, -1 where no pair), or
            mmcv's ``(outids, indices, indice_pairs, indice_pair_num,
            spatial_shape)`` tuple.

    Returns:
        torch.Tensor: float64, one count per flat kernel offset.
    """
    if isinstance(indice_data, (tuple, list)):
        counts = indice_data[3]
    elif getattr(indice_data, 'indice_pair_num', None) is not None:
        counts = indice_data.indice_pair_num
    else:
        counts = (indice_data.pair_fwd >= 0).sum(dim=1)
    return counts.detach().reshape(-1).to('cpu', torch.float64)


def submanifold_counts(counts: torch.Tensor,
                       num_sites: int) -> torch.Tensor:
    """Complete the pair counts of a submanifold convolution.

    spconv's native algorithm stores only the offsets before the kernel
    centre: the centre is one dense product over all ``num_sites`` active
    sites, and offset ``k`` after the centre reuses the pairs of its mirror
    ``kv - 1 - k`` reversed. Submanifold pairs are symmetric (the output
    sites are the input sites), so offset ``k`` and its mirror always have
    as many pairs and the completion is exact for counts stored either way.

    Args:
        counts: Pairs per flat kernel offset as spconv stored them.
        num_sites: Active sites of the layer's input (and output).

    Returns:
        torch.Tensor: Pairs per offset, centre and mirrors filled in.
    """
    counts = torch.maximum(counts, counts.flip(0))
    counts[counts.numel() // 2] = num_sites
    return counts


def _kernel_view(weight: torch.Tensor, kernel_size: Sequence[int],
                 counts: torch.Tensor) -> torch.Tensor:
    """Reshape per-offset counts to broadcast over a sparse conv weight."""
    kernel = tuple(int(k) for k in kernel_size)
    counts = counts[:math.prod(kernel)]
    shape = tuple(weight.shape)
    if shape[1:-1] == kernel:  # (out, k..., in)
        return counts.view(1, *kernel, 1)
    if shape[:-2] == kernel:  # (k..., in, out)
        return counts.view(*kernel, 1, 1)
    raise ValueError(f'cannot place kernel {kernel} in a sparse conv weight '
                     f'of shape {shape}')


class UseCounter:
    """Context manager that counts the uses of every target's weights.

    Args:
        targets: The layers to count.

    Example:
        >>> with UseCounter(targets) as counter:
        ...     for batch in batches:
        ...         head_outputs(batch)
        >>> uses = counter.uses(len(batches))
    """

    def __init__(self, targets: Sequence[PruningTarget]) -> None:
        self.targets = list(targets)
        self._totals: Dict[str, torch.Tensor] = {}
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._temp_keys: Dict[int, nn.Module] = {}

    def _add(self, name: str, uses: torch.Tensor) -> None:
        if name in self._totals:
            uses = self._totals[name] + uses
        self._totals[name] = uses

    def _dense_hook(self, target: PruningTarget) -> Callable:

        def hook(module, args, output):
            self._add(target.name, _dense_uses(target, args, output))

        return hook

    def _sparse_pre_hook(self, module: nn.Module, args: tuple) -> None:
        if module.indice_key is None:
            module.indice_key = _TEMP_KEY.format(id(module))
            self._temp_keys[id(module)] = module

    def _sparse_hook(self, target: PruningTarget) -> Callable:

        def hook(module, args, output):
            key = module.indice_key
            kernel_volume = math.prod(module.kernel_size)
            counts = pairs_per_offset(
                output.indice_dict[key])[:kernel_volume]
            if module.subm:
                counts = submanifold_counts(counts, output.features.shape[0])
            self._add(target.name,
                      _kernel_view(module.weight, module.kernel_size, counts))
            if self._temp_keys.pop(id(module), None) is not None:
                module.indice_key = None
                output.indice_dict.pop(key, None)

        return hook

    def __enter__(self) -> 'UseCounter':
        for target in self.targets:
            module = target.module
            if target.kind in _SPARSE_KINDS:
                self._handles.append(
                    module.register_forward_pre_hook(self._sparse_pre_hook))
                hook = self._sparse_hook(target)
            else:
                hook = self._dense_hook(target)
            self._handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._temp_keys.values():
            module.indice_key = None
        self._temp_keys.clear()

    def uses(self, num_batches: int) -> Dict[str, torch.Tensor]:
        """Uses per weight element, averaged over ``num_batches``.

        Returns:
            dict[str, torch.Tensor]: float64 CPU tensors that broadcast to
            each target's weight (scalars for dense layers); 0 for a target
            that never ran.
        """
        zero = torch.zeros((), dtype=torch.float64)
        return {
            t.name: self._totals.get(t.name, zero) / max(num_batches, 1)
            for t in self.targets
        }


def measure_uses(targets: Sequence[PruningTarget], batches: Sequence[dict],
                 head_outputs: Callable[[dict], object]
                 ) -> Dict[str, torch.Tensor]:
    """Run the batches once and count the uses of every weight element.

    Args:
        targets: The layers to count.
        batches: Preprocessed calibration batches.
        head_outputs: Runs one batch through the model, e.g.
            ``HeadOutputs(model)``.

    Returns:
        dict[str, torch.Tensor]: See :meth:`UseCounter.uses`.
    """
    with torch.no_grad(), UseCounter(targets) as counter:
        for batch in batches:
            head_outputs(batch)
    return counter.uses(len(batches))


def layer_flops(uses: torch.Tensor, weight: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> float:
    """FLOPs of one layer: ``2 * sum`` of the uses of its kept weights.

    Args:
        uses: Uses per weight element, broadcastable to ``weight``.
        weight: The layer's weight (for its shape).
        mask: Boolean keep-mask of the weight's shape (None: all kept).

    Returns:
        float: Multiplies plus adds of the weight multiplications.
    """
    per_weight = uses.expand(weight.shape)
    if mask is not None:
        per_weight = per_weight * mask.to('cpu', torch.float64)
    return 2.0 * float(per_weight.sum())


def measure_flops(model: nn.Module, targets: Sequence[PruningTarget],
                  batches: Sequence[dict],
                  head_outputs: Callable[[dict], object]) -> Dict[str, float]:
    """Dense (unpruned) FLOPs of every target, averaged over the batches.

    Args:
        model: The model the targets belong to (run by ``head_outputs``).
        targets: The layers to count.
        batches: Preprocessed calibration batches.
        head_outputs: Runs one batch through the model, e.g.
            ``HeadOutputs(model)``.

    Returns:
        dict[str, float]: Per target name, ``2 * MACs`` of its weight.
    """
    uses = measure_uses(targets, batches, head_outputs)
    return {t.name: layer_flops(uses[t.name], t.weight) for t in targets}


def flops_cost_table(uses: torch.Tensor, weight: torch.Tensor,
                     order: torch.Tensor, counts: np.ndarray,
                     keep_within: Optional[torch.Tensor] = None
                     ) -> np.ndarray:
    """FLOPs left at every pruning level of a magnitude-ordered layer.

    Args:
        uses: Uses per weight element, broadcastable to ``weight``.
        weight: The layer's weight.
        order: Flat weight indices, the first to prune first.
        counts: Number of weights each level prunes.
        keep_within: Keep-mask of an earlier round: weights it prunes cost
            nothing at any level.

    Returns:
        np.ndarray: Per level, ``2 * sum`` of the uses of the kept weights.
    """
    per_weight = uses.expand(weight.shape).flatten()
    if keep_within is not None:
        per_weight = per_weight * keep_within.flatten().to(
            'cpu', torch.float64)
    cumulative = torch.cat([
        torch.zeros(1, dtype=torch.float64),
        per_weight[order.cpu()].cumsum(0)
    ])
    left = cumulative[-1] - cumulative[torch.as_tensor(counts)]
    return 2.0 * left.clamp_min(0).numpy()
