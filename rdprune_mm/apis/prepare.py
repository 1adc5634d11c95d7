"""A detector ready to prune: built, loaded, with its calibration batches."""
from __future__ import annotations

from typing import List, Optional, Tuple

from mmengine.config import Config
from mmengine.logging import MMLogger
from torch import nn

from ..batchnorm import recalibrate_batchnorm
from ..calibration import calibration_batches
from .detector import build_detector, default_device


def config_seed(cfg: Config) -> int:
    """The seed of the random initialisation: ``randomness.seed`` or 0."""
    return cfg.get('randomness', {}).get('seed') or 0


def prepare_detector(
        cfg: Config,
        checkpoint: Optional[str] = None,
        device: Optional[str] = None,
        seed: Optional[int] = None,
        trust_checkpoint: bool = False
) -> Tuple[nn.Module, dict, List[dict]]:
    """Build the detector, load its checkpoint and prepare the calibration.

    Without a checkpoint the weights are random; the BatchNorm statistics
    are then set from the calibration batches
    (:func:`~rdprune_mm.batchnorm.recalibrate_batchnorm`) and a warning says
    that the result only demonstrates the method.

    Args:
        cfg: A config with a model and a ``calibration`` dict.
        checkpoint: A trained checkpoint of the model, or None.
        device: Where the model runs; None: CUDA when available.
        seed: Seed of the random initialisation; None: the config's
            ``randomness.seed``, else 0.
        trust_checkpoint: Load the checkpoint with full unpickling.

    Returns:
        tuple: The model in eval mode, the checkpoint's ``meta`` (empty
        without one) and the preprocessed calibration batches.

    Raises:
        PruningInputError: If the checkpoint or the calibration data is
            missing or does not fit.
    """
    seed = config_seed(cfg) if seed is None else seed
    model, meta = build_detector(cfg, checkpoint, device or default_device(),
                                 seed, trust_checkpoint)
    batches = calibration_batches(cfg, model, cfg.get('calibration', {}))
    if checkpoint is None:
        count = recalibrate_batchnorm(model, batches)
        MMLogger.get_current_instance().warning(
            'no checkpoint given: the weights are random (seed '
            f'{seed}; {count} BatchNorm layers set from the calibration '
            'frames), so the result only demonstrates the method; give a '
            'checkpoint (--checkpoint) to prune a trained detector')
    return model, meta, batches
