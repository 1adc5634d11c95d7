"""BatchNorm statistics of a randomly initialised detector.

A detector built from a config without a checkpoint has BatchNorm running
statistics of 0 and 1 whatever its activations are. Through a deep random
network the activations then shrink layer by layer (PV-RCNN's BEV features
end near 1e-11), the head's outputs barely depend on most layers, and every
distortion curve reads zero. Setting the statistics from the calibration
frames, as after training, gives each layer unit-scale activations.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .head_outputs import HeadOutputs


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Sequence[dict]) -> int:
    """Set every BatchNorm's running statistics from ``batches``.

    The model runs up to its heads once per batch with its BatchNorm layers
    in training mode (running averages over all batches), then goes back
    to eval mode. SyncBatchNorm layers are left alone.

    Args:
        model: The detector, in eval mode.
        batches: Preprocessed calibration batches.

    Returns:
        int: Number of BatchNorm layers recalibrated.
    """
    norms = [
        m for m in model.modules()
        if isinstance(m, _BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
        and m.track_running_stats
    ]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        head = HeadOutputs(model)
        for batch in batches:
            head(batch)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.eval()
    return len(norms)
