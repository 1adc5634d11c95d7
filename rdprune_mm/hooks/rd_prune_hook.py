"""RD pruning inside mmengine training: prune, then fine-tune with the
pruned weights held at exactly zero."""
from __future__ import annotations

import collections
import copy
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import EMAHook, Hook
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS
from torch import nn

from ..calibration import calibration_batches, compensation_batches
from ..channels.export import slim_config
from ..checkpoint import checkpoint_misfit
from ..distributed import (broadcast_module_state, check_same_everywhere,
                           run_everywhere)
from ..errors import PruningInputError
from ..fileio import atomic_write, fingerprint, write_json
from ..masks import apply_masks
from ..pipeline import check_budget
from ..registry import PRUNERS
from .slimming import slim_runner_model, unwrap

#: Key of the pruning state in every checkpoint the runner saves.
CHECKPOINT_KEY = 'rdprune_mm'


def _apply(model: nn.Module, masks: Dict[str, torch.Tensor]) -> None:
    apply_masks(dict(model.named_modules()), masks)


def check_masks_everywhere(masks: Dict[str, torch.Tensor]) -> None:
    """Refuse ranks whose masks differ from rank 0's (SHA-256 of every
    mask, all-gathered; a no-op alone): DDP would average the gradients of
    differently pruned models."""
    check_same_everywhere(
        fingerprint(sorted(masks.items())), 'RDPruneHook masks',
        'stopping, since DDP would average the gradients of differently '
        'pruned models; give every rank the same checkpoint and '
        'calibration frames')


# Registered in mmengine's root registry, so that mmdet3d's and mmdet's
# child registries (any default_scope) find it.
@HOOKS.register_module()
class RDPruneHook(Hook):
    """Prune with RD allocation before (and during) training; keep the
    pruned weights at exactly zero through fine-tuning.

    Each round calibrates on a few frames of the runner's own dataloader,
    measures the curves, allocates under the round's budget and masks the
    model (and the EMA copy of :class:`~mmengine.hooks.EMAHook`). After
    every optimizer step the masks are applied again, so momentum, weight
    decay, gradient accumulation and loss scaling cannot regrow a pruned
    weight. The masks and the rounds done are saved in every checkpoint:
    ``resume=True`` and ``load_from`` restore them instead of pruning again.

    A channel pruner (:class:`~rdprune_mm.pruners.RDChannelPruner` or a
    channel baseline) slims the model instead, in ``before_train``: its
    pruned channels are removed, the optimizer, the EMA copy and the DDP
    wrapper get the new parameters, and the work dir gets
    ``structure.json`` and ``slim_config.py`` (``type='SlimDetector'``).
    Every checkpoint is then slim and holds its structure, so mmdet3d's
    test tool reloads it through ``slim_config.py``, and ``resume`` or
    ``load_from`` slim the model to it before its weights load.

    Under DDP (a launcher) every rank calibrates on the same frames with
    rank 0's weights and BatchNorm statistics, the curves are split across
    the ranks and rank 0 allocates (:class:`PruningPipeline`); the masks'
    SHA-256 is then compared across the ranks, which stop with a clear
    message if they differ.

    Args:
        pruner: Pruner config (``PRUNERS`` registry); its ``budget`` is the
            single round's budget when ``rounds`` is None.
        calibration: Where calibration frames come from, as in
            :func:`rdprune_mm.calibration.calibration_batches`.
        rounds: ``[dict(at=0, budget=0.7), dict(at=500, budget=0.49)]``: the
            iterations (or epochs, with ``by_epoch``) after which each round
            prunes, and the share of weights it keeps. A later round only
            adds pruning. ``at=0`` prunes in ``before_train``; a channel
            pruner takes that one round only.
        by_epoch: Whether ``at`` counts epochs instead of iterations.
        curve_dir: Folder of the curve cache, inside the work dir.
        strict_load: Refuse a ``load_from`` or resumed checkpoint that does
            not fit the model (missing or unexpected keys, other shapes),
            which mmengine would load in part and train on from partly
            random weights. False leaves it to mmengine.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self,
                 pruner: dict = dict(type='RDWeightPruner'),
                 calibration: dict = dict(
                     dataloader='train_dataloader', num_samples=1),
                 rounds: Optional[Sequence[dict]] = None,
                 by_epoch: bool = False,
                 curve_dir: str = 'curves',
                 strict_load: bool = True) -> None:
        self.pruner_cfg = dict(pruner)
        self.pruner_cfg.setdefault('type', 'RDWeightPruner')
        self.calibration = dict(calibration)
        if rounds is None:
            rounds = [dict(at=0, budget=self.pruner_cfg.get('budget', 0.5))]
        self.rounds = sorted((dict(r) for r in rounds),
                             key=lambda r: r['at'])
        self._check_rounds()
        self.slims_channels = _slims_channels(self.pruner_cfg)
        if self.slims_channels and [r['at'] for r in self.rounds] != [0]:
            raise PruningInputError(
                f'RDPruneHook rounds at {[r["at"] for r in self.rounds]} with '
                f'the channel pruner {self.pruner_cfg["type"]}: channel '
                'pruning slims the model before training, in one round; give '
                'rounds=None (or one round at=0) and the budget in pruner')
        self.by_epoch = by_epoch
        self.curve_dir = curve_dir
        self.strict_load = strict_load
        self.masks: Dict[str, torch.Tensor] = {}
        self.structure: Optional[dict] = None
        self.history: List[dict] = []
        self._restored: Optional[dict] = None
        self._step_handles: list = []

    def _check_rounds(self) -> None:
        for index, round_cfg in enumerate(self.rounds):
            check_budget(round_cfg.get('budget'),
                         key=f'RDPruneHook rounds[{index}].budget')
        budgets = [r['budget'] for r in self.rounds]
        if budgets != sorted(budgets, reverse=True):
            raise PruningInputError(
                f'RDPruneHook round budgets {budgets} must not rise: a later '
                'round only adds pruning')
        ats = [r['at'] for r in self.rounds]
        if len(set(ats)) != len(ats) or min(ats) < 0:
            raise PruningInputError(
                f'RDPruneHook rounds are at {ats}; give distinct iterations '
                '(or epochs) >= 0')

    @property
    def rounds_done(self) -> int:
        return len(self.history)

    # checkpoints -------------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = dict(
            masks={k: v.cpu() for k, v in self.masks.items()},
            history=copy.deepcopy(self.history))
        if self.structure is not None:
            checkpoint[CHECKPOINT_KEY]['channel_structure'] = copy.deepcopy(
                self.structure)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get(CHECKPOINT_KEY) or {}
        if state.get('channel_structure'):
            # before mmengine loads the slim weights into the model
            self.structure = slim_runner_model(
                runner, structure=state['channel_structure'])
        if self.strict_load:
            misfit = checkpoint_misfit(
                unwrap(runner.model).state_dict(), checkpoint)
            if misfit:
                raise PruningInputError(
                    'the checkpoint to load does not fit the model of the '
                    f'config ({misfit}); give a checkpoint trained with this '
                    'config, or RDPruneHook(strict_load=False) to load what '
                    'fits')
        if state.get('masks') or state.get('channel_structure'):
            self._restored = state

    # training ----------------------------------------------------------
    def before_train(self, runner) -> None:
        if self._restored is not None:
            self.masks = dict(self._restored.get('masks') or {})
            self.history = list(self._restored.get('history', []))
            self._restored = None
            check_masks_everywhere(self.masks)
            self._apply_everywhere(runner)
            what = ('channel structure'
                    if self.structure is not None else 'masks')
            runner.logger.info(
                f'RDPruneHook: restored the {what} of {self.rounds_done} '
                f'round(s) from the checkpoint; not pruning them again')
        self._register_step_hooks(runner)
        done = runner.epoch if self.by_epoch else runner.iter
        self._run_due_rounds(runner, done)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if not self.by_epoch:
            self._run_due_rounds(runner, runner.iter + 1)

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self._run_due_rounds(runner, runner.epoch + 1)

    def after_run(self, runner) -> None:
        for handle in self._step_handles:
            handle.remove()
        self._step_handles = []

    # internals ---------------------------------------------------------
    def _run_due_rounds(self, runner, done: int) -> None:
        while (self.rounds_done < len(self.rounds)
               and self.rounds[self.rounds_done]['at'] <= done):
            self._prune_round(runner, self.rounds[self.rounds_done])

    def _register_step_hooks(self, runner) -> None:
        if self._step_handles:
            return
        wrapper = runner.optim_wrapper
        wrappers = (wrapper.values()
                    if isinstance(wrapper, OptimWrapperDict) else [wrapper])

        def remask(optimizer, args, kwargs) -> None:
            _apply(unwrap(runner.model), self.masks)

        self._step_handles = [
            w.optimizer.register_step_post_hook(remask) for w in wrappers
        ]

    def _apply_everywhere(self, runner) -> None:
        _apply(unwrap(runner.model), self.masks)
        for hook in runner.hooks:
            if isinstance(hook, EMAHook) and hasattr(hook, 'ema_model'):
                _apply(hook.ema_model.module, self.masks)

    def _prune_round(self, runner, round_cfg: dict) -> None:
        model = unwrap(runner.model)
        training = model.training
        model.eval()
        pruner = PRUNERS.build({**self.pruner_cfg,
                                'budget': round_cfg['budget']})
        # DDP keeps the weights equal, not every buffer (BatchNorm)
        broadcast_module_state(model)
        batches = run_everywhere(
            lambda: calibration_batches(runner.cfg, model, self.calibration))
        frames = run_everywhere(
            lambda: compensation_batches(runner.cfg, model, self.calibration,
                                         pruner.compensation.frames_wanted))
        result = pruner.prune(model,
                              batches,
                              cache_dir=osp.join(runner.work_dir,
                                                 self.curve_dir),
                              keep_within=self.masks or None,
                              compensation_batches=frames)
        if self.slims_channels:
            check_masks_everywhere(result.keeps)
            self.structure = slim_runner_model(runner, result.keeps,
                                               result.exclude)
            self._write_slim_files(runner)
        else:
            self.masks = result.masks
            check_masks_everywhere(self.masks)
            self._apply_everywhere(runner)
        model.zero_grad(set_to_none=True)
        model.train(training)
        record = dict(
            round=self.rounds_done,
            at=round_cfg['at'],
            iter=runner.iter,
            budget_asked=round_cfg['budget'],
            budget_achieved=result.achieved_budget,
            predicted_distortion=result.predicted_distortion,
            measured_distortion=result.measured_distortion,
            sparsity_by_group=_sparsity_by_group(result.layers))
        self.history.append(record)
        self._log(runner, record)

    def _write_slim_files(self, runner) -> None:
        """``structure.json`` and ``slim_config.py`` in the work dir, for
        mmdet3d's tools and ``SlimDetector`` to rebuild the slim model."""
        if not is_main_process():
            return
        write_json(osp.join(runner.work_dir, 'structure.json'), self.structure)
        atomic_write(osp.join(runner.work_dir, 'slim_config.py'),
                     slim_config(runner.cfg).dump)
        runner.logger.info(
            f'RDPruneHook: slimmed the model to '
            f'{sum(p.numel() for p in runner.model.parameters()):,} '
            f'weights; checkpoints reload through '
            f'{osp.join(runner.work_dir, "slim_config.py")}')

    @staticmethod
    def _log(runner, record: dict) -> None:
        scalars = {
            'rdprune/budget_asked': record['budget_asked'],
            'rdprune/budget_achieved': record['budget_achieved'],
            'rdprune/predicted_distortion': record['predicted_distortion'],
            'rdprune/measured_distortion': record['measured_distortion'],
        }
        scalars.update({
            f'rdprune/sparsity/{group}': value
            for group, value in record['sparsity_by_group'].items()
        })
        for key, value in scalars.items():
            runner.message_hub.update_scalar(f'train/{key}', value)
        runner.visualizer.add_scalars(scalars, step=runner.iter)
        groups = ', '.join(f'{g} {v:.3f}'
                           for g, v in record['sparsity_by_group'].items())
        MMLogger.get_current_instance().info(
            f'RDPruneHook round {record["round"]} at iteration '
            f'{record["iter"]}: kept {record["budget_achieved"]:.4f} '
            f'(asked {record["budget_asked"]}), distortion predicted '
            f'{record["predicted_distortion"]:.4g}, measured '
            f'{record["measured_distortion"]:.4g}; sparsity by group: '
            f'{groups}')


def _slims_channels(pruner_cfg: dict) -> bool:
    """Whether the pruner prunes channels (keep-masks of channel groups)
    rather than weights."""
    pruner_type = pruner_cfg['type']
    pruner_class = (pruner_type if isinstance(pruner_type, type) else
                    PRUNERS.get(pruner_type))
    if pruner_class is None:
        raise PruningInputError(
            f'RDPruneHook pruner type {pruner_type!r} is not registered; '
            'use RDWeightPruner, RDChannelPruner or another PRUNERS entry')
    return not getattr(pruner_class, 'masks_weights', True)


def _sparsity_by_group(layers) -> Dict[str, float]:
    """Pruned share of the weights of each top-level module."""
    before: Dict[str, int] = collections.OrderedDict()
    after: Dict[str, int] = collections.defaultdict(int)
    for layer in layers:
        group = layer.name.split('.')[0]
        before[group] = before.get(group, 0) + layer.params_before
        after[group] += layer.params_after
    return {g: 1 - after[g] / before[g] for g in before}
