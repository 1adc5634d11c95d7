"""The main job of ``tools/demo.py``: built-in KITTI-layout LiDAR data, a
small SECOND trained on it, RD pruning, a short fine-tuning with the masks
held, KittiMetric and CPU latency, dense against pruned.

Each step is skipped when its output exists and was made with the same
settings (:class:`StepDir`), so a second run reuses the data and the trained
model. :class:`Job` runs the steps on one work dir and is shared with
``benchmarks/bench_baselines.py``; :func:`run` is the whole demo.

- :mod:`.configs`: the configs and the options merged into them;
- :mod:`.step_dir`: step folders and their records;
- :mod:`.steps`: data, training, evaluation, pruning, fine-tuning,
  parameter counts and latency;
- :mod:`.report`: the results table and the environment;
- :mod:`.job`: :class:`Job` and :func:`run`;
- :mod:`.cli`: the command-line arguments.
"""
from .cli import parse_args
from .configs import (CLASSES, CONFIG_DATA_ROOT, DATA_ROOT, PRUNE_CONFIG,
                      TRAIN_CONFIG, config_digest, data_root_options,
                      job_options, load_config, merge_options,
                      parse_cfg_options, pruner_settings, schedule_options)
from .job import Job, make_logger, run
from .report import environment, format_ap, format_count, results_table
from .step_dir import (DONE_FILE, SETTINGS_FILE, StepDir, file_digest,
                       last_checkpoint, read_json)
from .steps import (check_masks, count_params, evaluate, finetune, kitti_ap,
                    latency, link_curves, make_data, prune, train)

__all__ = [
    'TRAIN_CONFIG', 'PRUNE_CONFIG', 'DATA_ROOT', 'CLASSES', 'CONFIG_DATA_ROOT',
    'SETTINGS_FILE', 'DONE_FILE', 'parse_args', 'run', 'Job', 'make_logger',
    'StepDir', 'read_json', 'file_digest', 'last_checkpoint', 'load_config',
    'config_digest', 'data_root_options', 'schedule_options',
    'parse_cfg_options', 'merge_options', 'job_options', 'pruner_settings',
    'make_data', 'train', 'evaluate', 'kitti_ap', 'prune', 'finetune',
    'check_masks', 'count_params', 'latency', 'link_curves', 'results_table',
    'environment', 'format_ap', 'format_count'
]
