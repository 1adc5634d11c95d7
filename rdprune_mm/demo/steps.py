"""The demo's steps: data, training, evaluation, pruning, fine-tuning and
the measurements of the models they make."""
from __future__ import annotations

import os
import os.path as osp
import shutil
import statistics
import time
from typing import Any, Callable, Dict, Optional

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from ..apis import build_detector, prune_detector, read_checkpoint
from ..calibration import dataloader_batches
from ..channels.export import slim_config
from ..checkpoint import checkpoint_misfit
from ..datasets import (create_kitti_infos, infos_exist,
                        write_kitti_like_dataset)
from ..errors import PruningInputError
from ..finetune import (evaluate_with_runner, finetune_config,
                        train_with_runner)
from .configs import CLASSES, load_config, merge_options
from .step_dir import file_digest, last_checkpoint, read_json

#: No validation inside training: the demo evaluates each model once, in
#: its own step (mmengine validates after the last epoch otherwise).
NO_VAL = {'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None}


def make_data(root: str, num_train: int, num_val: int, seed: int,
              log: Callable[[str], Any]) -> dict:
    """Simulate the dataset and run mmdet3d's KITTI converter on it (each
    skipped when its output exists with these arguments); a KITTI folder
    that mmdet3d's converter prepared is used as it is.

    Args:
        root: The data root.
        num_train: Simulated train frames.
        num_val: Simulated val frames.
        seed: Seed of the simulation.
        log: Progress messages.

    Returns:
        dict: The root, the simulation's arguments, frame and label counts
        and the seconds taken.
    """
    start = time.perf_counter()
    if is_prepared_kitti(root):
        log(f"{root} holds mmdet3d's KITTI infos and was not simulated "
            'here: used as it is')
        return dict(root=root, args=None, frames=None, labels=None,
                    seconds=time.perf_counter() - start)
    summary = write_kitti_like_dataset(
        root, num_train, num_val, seed=seed, num_test=1, log=log)
    if not infos_exist(root):
        log(f"running mmdet3d's KITTI converter on {root}")
        create_kitti_infos(root)
    else:
        log(f"{root}: mmdet3d's converter outputs exist, skipped")
    meta = read_json(osp.join(root, 'meta.json')) or {}
    return dict(
        root=root,
        args=meta.get('args'),
        frames=summary['frames'],
        labels=summary['labels'],
        seconds=time.perf_counter() - start)


def is_prepared_kitti(root: str) -> bool:
    """Whether ``root`` is a KITTI dataset that mmdet3d's converter has
    prepared (the real KITTI, say) rather than one simulated here."""
    return not osp.isfile(osp.join(root, 'meta.json')) and all(
        osp.isfile(osp.join(root, f'kitti_infos_{split}.pkl'))
        for split in ('train', 'val'))


def runner_config(config: str,
                  options: Optional[dict],
                  work_dir: str,
                  name: str,
                  load_from: Optional[str] = None,
                  resume: bool = False,
                  structure: Optional[str] = None) -> Config:
    """A config for mmengine's Runner.

    Args:
        config: Path of the config file.
        options: ``--cfg-options`` to merge.
        work_dir: The Runner's work dir.
        name: The Runner's experiment name.
        load_from: Checkpoint to load.
        resume: Resume the last checkpoint in ``work_dir``.
        structure: The ``structure.json`` of a slim checkpoint
            (:func:`model_config`).
    """
    cfg = model_config(config, options, structure)
    cfg.work_dir = work_dir
    cfg.load_from = load_from
    cfg.resume = resume
    cfg.experiment_name = name
    return cfg


def train(config: str, options: Optional[dict], work_dir: str,
          resume: bool) -> dict:
    """Train the dense detector with mmengine's Runner.

    Args:
        config: The training config.
        options: ``--cfg-options`` of it.
        work_dir: The Runner's work dir.
        resume: Resume its last checkpoint.

    Returns:
        dict: The final checkpoint and its digest, epochs, iterations and
        seconds.
    """
    start = time.perf_counter()
    cfg = runner_config(config, merge_options(options, NO_VAL), work_dir,
                        'dense', resume=resume)
    runner = train_with_runner(cfg)
    checkpoint = last_checkpoint(work_dir)
    return dict(
        checkpoint=checkpoint,
        checkpoint_digest=file_digest(checkpoint),
        epochs=runner.epoch,
        iterations=runner.iter,
        seconds=time.perf_counter() - start)


#: The predictions of an evaluation, beside its metrics (mmengine's
#: ``DumpResults``), so that its AP can be computed again offline.
PREDICTIONS_FILE = 'predictions.pkl'


def evaluate(config: str,
             options: Optional[dict],
             checkpoint: str,
             work_dir: str,
             name: str,
             structure: Optional[str] = None) -> dict:
    """KittiMetric of ``checkpoint`` on the config's test split; the
    predictions go to ``<work_dir>/predictions.pkl``.

    Args:
        config: The training config (its test dataloader and evaluator).
        options: ``--cfg-options`` of it.
        checkpoint: The model to evaluate.
        work_dir: The Runner's work dir.
        name: The Runner's experiment name.
        structure: The ``structure.json`` of a slim (channel-pruned)
            checkpoint: the config's model is built as ``SlimDetector``.

    Returns:
        dict: All metrics, the AP table of :func:`kitti_ap`, the
        predictions file and seconds.
    """
    start = time.perf_counter()
    cfg = runner_config(config,
                        options,
                        work_dir,
                        name,
                        load_from=checkpoint,
                        structure=structure)
    predictions = osp.join(work_dir, PREDICTIONS_FILE)
    evaluators = cfg.test_evaluator
    cfg.test_evaluator = [
        *(evaluators if isinstance(evaluators, list) else [evaluators]),
        dict(type='DumpResults', out_file_path=predictions)
    ]
    threads = torch.get_num_threads()
    try:
        metrics = evaluate_with_runner(cfg)
    finally:
        # KittiMetric's parallel numba kernel sets the process's OpenMP
        # threads to numba's count (all cores); torch would follow
        torch.set_num_threads(threads)
    return dict(
        metrics={k: float(v) for k, v in metrics.items()},
        ap=kitti_ap(metrics),
        predictions=predictions,
        seconds=time.perf_counter() - start)


def model_config(config: str, options: Optional[dict],
                 structure: Optional[str]) -> Config:
    """The config with its options, its model wrapped in ``SlimDetector``
    when a channel ``structure`` file is given."""
    cfg = load_config(config, options)
    return cfg if structure is None else slim_config(cfg,
                                                     osp.abspath(structure))


def kitti_ap(metrics: dict, ap: str = 'AP40') -> dict:
    """Moderate 3D and BEV AP per class and overall from KittiMetric's
    output (strict IoU: 0.7 cars, 0.5 pedestrians and cyclists).

    Args:
        metrics: KittiMetric's output.
        ap: ``'AP40'`` or ``'AP11'``.

    Returns:
        dict: ``{class or 'Overall': {'3D': ap, 'BEV': ap}}``, ``None``
        where the metric is missing.
    """
    out = {}
    for name in CLASSES + ('Overall', ):
        out[name] = {}
        for kind in ('3D', 'BEV'):
            suffix = (f'KITTI/{name}_{kind}_{ap}_moderate' +
                      ('' if name == 'Overall' else '_strict'))
            values = [v for k, v in metrics.items() if k.endswith(suffix)]
            out[name][kind] = float(values[0]) if values else None
    return out


def prune(config: str, checkpoint: str, work_dir: str,
          options: Optional[dict]) -> dict:
    """One-shot pruning (:func:`rdprune_mm.apis.prune_detector`) on the
    device that mmengine's Runner trains on (CUDA when there is one):
    pruned.pth, allocation.json, curve cache, plots; earlier outputs
    replaced.

    Args:
        config: The pruning config.
        checkpoint: The dense model.
        work_dir: Where the outputs go.
        options: ``--cfg-options`` of the pruning config.

    Returns:
        dict: The pruned checkpoint, the budget, the totals of
        ``allocation.json``, the number of pruned layers and seconds.
    """
    start = time.perf_counter()
    report = prune_detector(
        config,
        checkpoint,
        work_dir,
        'cuda' if torch.cuda.is_available() else 'cpu',
        overwrite=True,
        **(options or {}))
    return dict(
        checkpoint=osp.join(work_dir, 'pruned.pth'),
        budget=report['budget'],
        totals=report['totals'],
        num_layers=len(report['layers']),
        seconds=time.perf_counter() - start)


def finetune(config: str, checkpoint: str, work_dir: str,
             options: Optional[dict]) -> dict:
    """Prune again inside mmengine's Runner and fine-tune with the masks
    held, as ``rdprune-mm prune --finetune`` does.

    :func:`rdprune_mm.finetune.finetune_config` adds an ``RDPruneHook``
    from the config's pruner and calibration and loads the dense model.
    The hook reads the curves from the one-shot run's cache, so its masks
    are the one-shot masks. An interrupted fine-tuning resumes.

    Args:
        config: The pruning config.
        checkpoint: The dense model.
        work_dir: The one-shot run's folder (its curve cache and
            ``pruned.pth``).
        options: ``--cfg-options`` of the pruning config.

    Returns:
        dict: The final checkpoint and its digest, :func:`check_masks`'s
        report and seconds.
    """
    start = time.perf_counter()
    resume = osp.exists(osp.join(work_dir, 'last_checkpoint'))
    cfg = load_config(config, merge_options(options, NO_VAL))
    cfg = finetune_config(cfg, work_dir, checkpoint, resume)
    cfg.experiment_name = 'finetune'
    train_with_runner(cfg)
    final = last_checkpoint(work_dir)
    result = dict(checkpoint=final, checkpoint_digest=file_digest(final))
    slim = osp.join(work_dir, 'slim.pth')
    if osp.isfile(slim):
        result['structure'] = check_structure(final, slim)
    else:
        result['masks'] = check_masks(final, osp.join(work_dir, 'pruned.pth'))
    result['seconds'] = time.perf_counter() - start
    return result


def check_masks(checkpoint: str, pruned: Optional[str] = None) -> dict:
    """Check that the fine-tuned weights are zero wherever the saved masks
    prune, and whether the masks are the one-shot pruning's (the zeros of
    ``pruned.pth``).

    Args:
        checkpoint: A checkpoint saved with ``RDPruneHook``'s masks.
        pruned: The one-shot pruned checkpoint.

    Returns:
        dict: Masked layers, pruned weights, pruned weights that are not
        zero (always 0), ``same_as_one_shot`` (``None`` without
        ``pruned``) and the hook's ``rounds`` (iteration or epoch, budget
        asked and achieved, measured distortion).

    Raises:
        PruningInputError: The checkpoint has no masks, or a pruned weight
            is not zero.
    """
    loaded = read_checkpoint(checkpoint)
    masks = (loaded.get('rdprune_mm') or {}).get('masks') or {}
    if not masks:
        raise PruningInputError(
            f'{checkpoint} carries no RDPruneHook masks; fine-tune with '
            'tools/prune.py --finetune')
    state = loaded['state_dict']
    nonzero = 0
    pruned_weights = 0
    for name, mask in masks.items():
        weight = state[f'{name}.weight']
        nonzero += int((weight[~mask] != 0).sum())
        pruned_weights += int((~mask).sum())
    if nonzero:
        raise PruningInputError(
            f'{checkpoint}: {nonzero} pruned weights are not zero after '
            'fine-tuning; the masks were not held')
    same = None
    if pruned is not None and osp.isfile(pruned):
        one_shot = read_checkpoint(pruned)['state_dict']
        # both checkpoints are loaded onto the CPU
        same = all(
            torch.equal(one_shot[f'{n}.weight'] != 0, m)
            for n, m in masks.items())
    history = (loaded.get('rdprune_mm') or {}).get('history') or []
    return dict(layers=len(masks),
                pruned_weights=pruned_weights,
                nonzero_pruned_weights=nonzero,
                same_as_one_shot=same,
                rounds=[{
                    k: r.get(k)
                    for k in ('at', 'budget_asked', 'budget_achieved',
                              'measured_distortion')
                } for r in history])


def check_structure(checkpoint: str, slim: str) -> dict:
    """Check that a fine-tuned channel-pruned checkpoint is slim: it holds
    ``RDPruneHook``'s channel structure and its weights have the shapes of
    the one-shot slim model (``slim.pth``, whose structure it is compared
    with).

    Returns:
        dict: Channel groups, their channels before and after, and
        ``same_as_one_shot``.

    Raises:
        PruningInputError: The checkpoint has no channel structure, or its
            weights are not the slim model's shapes.
    """
    loaded = read_checkpoint(checkpoint)
    structure = (loaded.get('rdprune_mm') or {}).get('channel_structure')
    if not structure:
        raise PruningInputError(
            f'{checkpoint} carries no RDPruneHook channel structure; '
            'fine-tune a channel pruning config with tools/prune.py '
            '--finetune')
    one_shot = read_checkpoint(slim)
    misfit = checkpoint_misfit(one_shot['state_dict'], loaded)
    if misfit:
        raise PruningInputError(
            f'{checkpoint} does not fit the one-shot slim model {slim} '
            f'({misfit}); the fine-tuned model is not the slim model')
    groups = structure['groups']
    one_shot_groups = one_shot['meta']['rdprune_mm']['channel_structure'][
        'groups']
    return dict(groups=len(groups),
                channels=sum(g['num_channels'] for g in groups.values()),
                kept_channels=sum(len(g['keep']) for g in groups.values()),
                same_as_one_shot=groups == one_shot_groups)


def count_params(checkpoint: str) -> Dict[str, int]:
    """All weights of the model in a checkpoint, and the nonzero ones
    (BatchNorm buffers are not parameters and not counted).

    Returns:
        dict: ``total`` and ``nonzero``.
    """
    state = read_checkpoint(checkpoint)['state_dict']
    total = nonzero = 0
    for name, tensor in state.items():
        if not tensor.is_floating_point() or 'running_' in name:
            continue
        total += tensor.numel()
        nonzero += int((tensor != 0).sum())
    return dict(total=total, nonzero=nonzero)


def latency(config: str,
            options: Optional[dict],
            checkpoints: Dict[str, str],
            num_frames: int,
            warmup: int = 2,
            structures: Optional[Dict[str, str]] = None) -> dict:
    """Wall time of ``model.test_step`` per frame on the CPU (batch 1, the
    test pipeline's frames of the val split), for every checkpoint.

    Args:
        config: The training config (its test dataloader).
        options: ``--cfg-options`` of it.
        checkpoints: Models by name.
        num_frames: Frames timed per model.
        warmup: Frames run before timing.
        structures: ``structure.json`` by name, for slim checkpoints.

    Returns:
        dict: ``threads`` and ``frames``, and per name the median, min and
        max milliseconds.
    """
    cfg = load_config(config, options)
    init_default_scope(cfg.get('default_scope', 'mmdet3d'))
    batches = dataloader_batches(
        cfg, 'test_dataloader', num_samples=num_frames + warmup)
    # too few frames for a separate warm-up: warm up on the first one
    warm = batches[:warmup] if len(batches) > warmup else batches[:1]
    timed = batches[warmup:] if len(batches) > warmup else batches
    out: Dict[str, Any] = dict(
        threads=torch.get_num_threads(), frames=len(timed))
    for name, checkpoint in checkpoints.items():
        structure = (structures or {}).get(name)
        model, _ = build_detector(
            cfg if structure is None else model_config(
                config, options, structure), checkpoint, 'cpu')
        times = []
        with torch.no_grad():
            for batch in warm:
                model.test_step(batch)
            for batch in timed:
                start = time.perf_counter()
                model.test_step(batch)
                times.append(time.perf_counter() - start)
        out[name] = dict(
            median_ms=1000 * statistics.median(times),
            min_ms=1000 * min(times),
            max_ms=1000 * max(times))
    return out


def link_curves(folder: str, curves_dir: str) -> None:
    """Point ``folder/curves`` (where tools/prune.py and RDPruneHook keep
    their curve cache) at a shared cache folder.

    Curves already in ``folder/curves`` move into the shared folder unless
    it has them.
    """
    os.makedirs(curves_dir, exist_ok=True)
    link = osp.join(folder, 'curves')
    target = osp.abspath(curves_dir)
    if osp.islink(link):
        if osp.realpath(link) == osp.realpath(target):
            return
        os.remove(link)
    elif osp.isdir(link):
        for name in os.listdir(link):
            if not osp.exists(osp.join(target, name)):
                shutil.move(osp.join(link, name), osp.join(target, name))
        shutil.rmtree(link)
    os.symlink(target, link)
