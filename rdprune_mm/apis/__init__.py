"""The public API: build a detector, prune it, fine-tune it.

- :mod:`.detector`: configs, checkpoints, building and saving a detector;
- :mod:`.prepare`: a detector ready to prune, with its calibration batches;
- :mod:`.prune`: :func:`prune_detector` and :func:`finetune_detector`, what
  ``rdprune-mm prune`` and ``tools/prune.py`` run;
- :mod:`.additivity`: :func:`analyze_detector_additivity`, what
  ``tools/analyze_additivity.py`` runs;
- :mod:`.distortion_study`: :func:`analyze_detector_distortion`, what
  ``tools/analyze_distortion.py`` runs.
"""
# .detector first: rdprune_mm.channels.export imports
# save_pruned_checkpoint from here while rdprune_mm.pruners is imported
from .detector import (build_detector, default_device, load_config,
                       read_checkpoint, save_pruned_checkpoint)  # isort:skip
from .additivity import analyze_detector_additivity
from .distortion_study import analyze_detector_distortion
from .prepare import config_seed, prepare_detector
from .prune import (OUTPUTS, check_outputs, default_work_dir,
                    finetune_detector, prune_detector, pruning_outputs)

__all__ = [
    'load_config', 'read_checkpoint', 'build_detector',
    'save_pruned_checkpoint', 'default_device', 'config_seed',
    'prepare_detector', 'prune_detector', 'finetune_detector',
    'analyze_detector_additivity', 'analyze_detector_distortion',
    'default_work_dir', 'pruning_outputs',
    'check_outputs', 'OUTPUTS'
]
