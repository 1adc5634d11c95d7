"""The demo's job: its steps on one work dir, each reused when its output
exists with the same settings."""
from __future__ import annotations

import argparse
import os
import os.path as osp
import time
from typing import Any, Callable, Dict, Optional

from mmengine.logging import MMLogger

from ..errors import PruningInputError
from ..fileio import write_json, write_text
from ..mim import resolve_config
from . import steps
from .configs import (CLASSES, config_digest, eval_data_root, job_options,
                      pruner_settings)
from .model_store import ModelStore
from .report import environment, format_ap, results_table
from .step_dir import StepDir, file_digest, read_json


def make_logger(work_dir: str, name: str) -> MMLogger:
    """An mmengine logger that also writes ``<work_dir>/<name>_<time>.log``.

    Args:
        work_dir: Folder of the log file (made if missing).
        name: Prefix of the log file and the logger's instance name.
    """
    os.makedirs(work_dir, exist_ok=True)
    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    return MMLogger.get_instance(
        f'rdprune_mm_{name}_{timestamp}',
        logger_name='rdprune_mm',
        log_file=osp.join(work_dir, f'{name}_{timestamp}.log'))


class Job:
    """The demo's steps on one work dir, each skipped when its output
    exists with the same settings (also used by
    ``benchmarks/bench_baselines.py``).

    Args:
        args: :func:`rdprune_mm.demo.parse_args` output.
        log: Progress messages (an mmengine logger's ``info``).
        store: Where the trained dense model is kept and looked for
            before training (None: nowhere).
        store_name: The dense model's name in ``store``.
    """

    def __init__(self,
                 args: argparse.Namespace,
                 log: Callable[[str], Any],
                 store: Optional[ModelStore] = None,
                 store_name: str = 'dense') -> None:
        for path in (args.train_config, args.prune_config):
            if not osp.isfile(resolve_config(path)):
                raise PruningInputError(
                    f'config {path} does not exist; fix --train-config / '
                    '--prune-config')
        self.args = args
        self.log = log
        self.work_dir = args.work_dir
        self.options = job_options(args)
        self.eval_root = eval_data_root(args)
        self.seconds: Dict[str, float] = {}
        self.data_record: Optional[dict] = None
        self.dense_record: Optional[dict] = None
        self.store = store
        self.store_name = store_name

    def add_time(self, name: str, start: float) -> None:
        """Add the seconds since ``start`` (``time.perf_counter``) to the
        time of ``name`` in :attr:`seconds`."""
        self.seconds[name] = self.seconds.get(name, 0.0) + \
            time.perf_counter() - start

    def data(self) -> dict:
        """Simulate the dataset and convert it (reused when it exists)."""
        args = self.args
        start = time.perf_counter()
        self.data_record = steps.make_data(args.data_root, args.num_train,
                                           args.num_val, args.seed, self.log)
        if self.eval_root is not None and self.data_record['args'] is None:
            raise PruningInputError(
                f'--eval-num-val simulates more val frames like those of '
                f'{args.data_root}, but that folder was not simulated here '
                '(a prepared KITTI); leave --eval-num-val out')
        if self.eval_root is not None:
            self.log(f'evaluation data: {self.eval_root} '
                     f'({args.eval_num_val} val frames; the first '
                     f'{args.num_val} are those of {args.data_root})')
            self.data_record['eval'] = steps.make_data(self.eval_root,
                                                       args.num_train,
                                                       args.eval_num_val,
                                                       args.seed, self.log)
        self.add_time('data', start)
        return self.data_record

    @property
    def val_frames(self) -> int:
        """Val frames of the evaluations."""
        return getattr(self.args, 'eval_num_val', None) or self.args.num_val

    @property
    def eval_suffix(self) -> str:
        """``_val<N>`` when the evaluations use another val set than the
        data root's (their folders and records carry it), else ``''``."""
        return '' if self.eval_root is None else f'_val{self.val_frames}'

    @property
    def eval_ann_file(self) -> str:
        """The val info file the evaluations use."""
        return osp.join(self.eval_root or self.args.data_root,
                        'kitti_infos_val.pkl')

    def dense(self) -> dict:
        """Train the dense detector, or reuse the one trained before (in
        this work dir, or kept in :attr:`store`)."""
        args = self.args
        if self.data_record is None:
            self.data()
        folder = StepDir(
            osp.join(self.work_dir, 'dense'),
            dict(
                config=args.train_config,
                config_digest=config_digest(args.train_config,
                                            self.options['train']),
                options=self.options['train'],
                data=self.data_record['args']))
        data = {k: self.data_record[k] for k in ('frames', 'labels')}
        start = time.perf_counter()
        record = None if args.overwrite else folder.done
        if record is not None and osp.isfile(record['checkpoint']) and \
                file_digest(record['checkpoint']) == \
                record['checkpoint_digest']:
            self.log(f'dense model: {record["checkpoint"]} exists (trained '
                     f'in {record["seconds"]:.0f} s), reused')
        else:
            if args.overwrite:
                folder.clear()
            resume = folder.prepare(False, 'a dense model')
            restored = None
            if self.store is not None and not resume and not args.overwrite:
                restored = self.store.restore(self.store_name, folder.settings,
                                              data, folder.path)
            if restored is not None:
                record = folder.finish(restored)
            else:
                self.log('training the dense model in ' + folder.path +
                         (' (resuming its last checkpoint)' if resume else ''))
                record = folder.finish(
                    steps.train(args.train_config, self.options['train'],
                                folder.path, resume))
                self.log(f'trained in {record["seconds"]:.0f} s: '
                         f'{record["checkpoint"]}')
        if self.store is not None and 'restored_from' not in record and \
                not self.store.holds(self.store_name, folder.settings, data):
            self.store.save(self.store_name, folder.settings, data, record)
        self.add_time('train', start)
        self.dense_record = record
        return record

    def evaluation(self,
                   path: str,
                   what: str,
                   checkpoint: str,
                   digest: str,
                   name: str = 'eval',
                   structure: Optional[str] = None) -> dict:
        """KittiMetric of ``checkpoint`` (reused when done before), on the
        evaluation data root's val frames.

        Args:
            path: The evaluation's folder (``_val<N>`` is appended when
                ``--eval-num-val`` asks for another val set, so that the
                evaluations of each set are kept).
            what: The model, for the log.
            checkpoint: The model to evaluate.
            digest: The checkpoint's :func:`file_digest`.
            name: The Runner's experiment name and the key of its time.
            structure: The ``structure.json`` of a slim checkpoint.

        Returns:
            dict: :func:`rdprune_mm.demo.steps.evaluate`'s result.
        """
        path += self.eval_suffix
        folder = StepDir(
            path,
            dict(checkpoint=checkpoint,
                 checkpoint_digest=digest,
                 config_digest=config_digest(self.args.train_config,
                                             self.options['eval']),
                 **({} if structure is None else dict(
                     structure_digest=file_digest(structure)))))
        start = time.perf_counter()
        record = None if self.args.overwrite else folder.done
        if record is not None:
            self.log(f'KittiMetric of {what}: done before, reused')
        else:
            folder.prepare(True, 'an evaluation')  # derived: redo freely
            self.log(f'KittiMetric of {what} ({checkpoint})')
            record = folder.finish(
                steps.evaluate(self.args.train_config,
                               self.options['eval'],
                               checkpoint,
                               folder.path,
                               name,
                               structure=structure))
        self.add_time(name, start)
        ap = record['ap']
        self.log(f'{what}: ' + ', '.join(
            f'{c} 3D {format_ap(ap[c]["3D"])} BEV {format_ap(ap[c]["BEV"])}'
            for c in CLASSES + ('Overall', )) + ' (moderate AP40)')
        return record

    def pruned_dir(self, path: str, options: dict, **extra: Any) -> StepDir:
        """The folder of one pruning run (one-shot and fine-tuned).

        Args:
            path: The folder.
            options: Options of the pruning config.
            **extra: More settings the run depends on.
        """
        return StepDir(
            path,
            dict(
                config=self.args.prune_config,
                config_digest=config_digest(self.args.prune_config, options),
                options=options,
                dense=self.dense_record['checkpoint_digest'],
                **extra))

    def recorded_result(self, done_file: str,
                        folder: StepDir) -> Optional[dict]:
        """The result that ``done_file`` records, when it was made with the
        folder's settings and its checkpoint exists (``None`` otherwise, or
        with ``--overwrite``)."""
        record = None if self.args.overwrite else read_json(done_file)
        if record is None or record.get('settings') != folder.settings or \
                not osp.isfile(record['result']['checkpoint']):
            return None
        return record['result']

    def prune(self,
              folder: StepDir,
              options: dict,
              curves_dir: Optional[str] = None) -> dict:
        """One-shot pruning of the dense model with
        :func:`rdprune_mm.apis.prune_detector` (reused when done before).

        Args:
            folder: The run's folder (:meth:`pruned_dir`).
            options: Options of the pruning config.
            curves_dir: A curve cache shared with other runs (RD curves of
                the same model and calibration frames are measured once).

        Returns:
            dict: :func:`rdprune_mm.demo.steps.prune`'s result.
        """
        start = time.perf_counter()
        done = osp.join(folder.path, 'prune_done.json')
        result = self.recorded_result(done, folder)
        if result is not None:
            self.log(f'pruning: {folder.path}/allocation.json exists, '
                     'reused')
        else:
            if self.args.overwrite:
                folder.clear()
            folder.prepare(True, 'a pruned model')  # derived: redo freely
            if curves_dir is not None:
                steps.link_curves(folder.path, curves_dir)
            pruner = pruner_settings(self.args.prune_config, options)
            self.log(f'pruning ({pruner["type"]}'
                     + (f', {pruner["allocation"]}' if 'allocation' in pruner
                        else '') + f') to {pruner["budget"]} of the '
                     f'{pruner["budget_by"]} in {folder.path}')
            result = steps.prune(self.args.prune_config,
                                 self.dense_record['checkpoint'], folder.path,
                                 options)
            write_json(done, dict(settings=folder.settings, result=result))
        self.add_time('prune', start)
        totals = result['totals']
        self.log(f'kept {totals["params_kept"]:.4f} of the prunable weights '
                 f'and {totals["flops_kept"]:.4f} of their FLOPs; head-output '
                 f'distortion {totals["measured_distortion"]:.4g}')
        return result

    def finetune(self, folder: StepDir, options: dict) -> dict:
        """Fine-tune in the pruning run's folder with ``RDPruneHook``
        (reused when done before).

        Args:
            folder: The run's folder, after :meth:`prune`.
            options: Options of the pruning config.

        Returns:
            dict: :func:`rdprune_mm.demo.steps.finetune`'s result.
        """
        start = time.perf_counter()
        done = osp.join(folder.path, 'finetune_done.json')
        result = self.recorded_result(done, folder)
        if result is not None:
            self.log(f'fine-tuned model: {result["checkpoint"]} exists, '
                     'reused')
        else:
            self.log(f'fine-tuning the pruned model in {folder.path} '
                     '(RDPruneHook: masks held, or the slim model)')
            result = steps.finetune(self.args.prune_config,
                                    self.dense_record['checkpoint'],
                                    folder.path, options)
            write_json(done, dict(settings=folder.settings, result=result))
        self.add_time('finetune', start)
        if 'structure' in result:
            kept = result['structure']
            self.log(f'slim model trained: {kept["kept_channels"]:,} of '
                     f'{kept["channels"]:,} channels in {kept["groups"]} '
                     'groups; the one-shot structure: '
                     f'{kept["same_as_one_shot"]}')
        else:
            masks = result['masks']
            self.log(f'masks held: {masks["pruned_weights"]:,} pruned weights'
                     f' in {masks["layers"]} layers, all zero; the one-shot '
                     f'pruning\'s masks: {masks["same_as_one_shot"]}')
        return result


def run(args: argparse.Namespace) -> dict:
    """The whole demo: data, dense model, RD pruning, fine-tuning,
    KittiMetric of the three models, CPU latency, ``results.md`` and
    ``results.json`` in the work dir.

    Args:
        args: :func:`rdprune_mm.demo.parse_args` output.

    Returns:
        dict: What ``results.json`` holds.
    """
    if args.latency_frames < 1:
        raise PruningInputError('--latency-frames must be at least 1')
    begin = time.perf_counter()
    logger = make_logger(args.work_dir, 'demo')
    job = Job(args, logger.info)
    log = logger.info
    results: Dict[str, Any] = dict(environment=environment())
    work_dir = args.work_dir

    log(f'[1/8] data: {args.data_root} ({args.num_train} train + '
        f'{args.num_val} val frames, seed {args.seed})')
    results['data'] = job.data()
    log('[2/8] dense model')
    results['train'] = dense = job.dense()
    log('[3/8] evaluating the dense model')
    results['eval_dense'] = job.evaluation(
        osp.join(work_dir, 'eval_dense'), 'the dense model',
        dense['checkpoint'], dense['checkpoint_digest'], 'eval_dense')

    options = job.options['prune']
    pruner = pruner_settings(args.prune_config, options)
    folder = job.pruned_dir(
        osp.join(work_dir, f'rd-{pruner["budget_by"]}-{pruner["budget"]:g}'),
        options)
    log(f'[4/8] RD pruning to {pruner["budget"]} of the '
        f'{pruner["budget_by"]}')
    # one curve cache for every run on this dense model (the benchmark's too)
    results['prune'] = pruned = job.prune(
        folder, options, curves_dir=osp.join(work_dir, 'curves'))
    log('[5/8] evaluating the one-shot pruned model')
    results['eval_oneshot'] = job.evaluation(
        osp.join(folder.path, 'eval_oneshot'), 'the one-shot pruned model',
        pruned['checkpoint'], file_digest(pruned['checkpoint']),
        'eval_oneshot')
    log('[6/8] fine-tuning with the masks held')
    results['finetune'] = tuned = job.finetune(folder, options)
    log('[7/8] evaluating the pruned, fine-tuned model')
    results['eval_pruned'] = job.evaluation(
        osp.join(folder.path, 'eval_finetuned'),
        'the pruned, fine-tuned model', tuned['checkpoint'],
        tuned['checkpoint_digest'], 'eval_pruned')

    log(f'[8/8] CPU latency over {args.latency_frames} val frames, report')
    start = time.perf_counter()
    models = dict(
        dense=dense['checkpoint'],
        oneshot=pruned['checkpoint'],
        pruned=tuned['checkpoint'])
    results['params'] = {
        name: steps.count_params(checkpoint)
        for name, checkpoint in models.items()
    }
    results['latency'] = steps.latency(args.train_config,
                                       job.options['train'], models,
                                       args.latency_frames)
    job.add_time('latency', start)
    job.seconds['total'] = time.perf_counter() - begin
    results['seconds'] = job.seconds
    results['args'] = vars(args)
    table = results_table(results)
    write_text(osp.join(work_dir, 'results.md'), table)
    write_json(osp.join(work_dir, 'results.json'), results)
    log('results:\n' + table)
    log(f'wrote results.md and results.json to {work_dir}; this run took '
        f'{job.seconds["total"]:.0f} s (' + ', '.join(
            f'{k} {v:.0f} s' for k, v in job.seconds.items()
            if k != 'total') + ')')
    return results
