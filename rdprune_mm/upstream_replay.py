"""Replay of the detector parts that a curve pass leaves as they were.

A curve pass prunes one unit and runs every calibration frame through the
whole detector, but only the parts from the pruned unit onwards compute
anything new: the sparse encoder of a CenterPoint whose head is pruned
returns, to the bit, what it returned on the first pass. :class:`UpstreamReplay`
records the outputs of the detector's top-level parts (its direct children:
``pts_voxel_encoder``, ``pts_middle_encoder``, ``pts_backbone``, ...) on
each frame and returns copies of them on later passes while a part and every
part that ran before it hold the weights and buffers they held when the
replay began. The first part that differs, and everything after it, runs as
usual; so do the parts that hold a detection head.

A part is never replayed when its output holds anything but tensors and
spconv's ``SparseConvTensor`` (data samples, say) or when it writes into its
input tensors
(mmdet3d's ``PillarFeatureNet`` with ``legacy=True``): a replay would skip
the write that later parts see. Such a part runs on every pass; the parts
after it can still be replayed, since an unchanged part computes what it
computed before. A part whose forward changes other state that later parts
read (attributes of the data samples, say) is not detected; set
``pruner.replay_unchanged=False`` for such a detector.
"""
from __future__ import annotations

import itertools
from collections import Counter
from contextlib import contextmanager
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import torch
from mmengine.logging import MMLogger
from torch import nn

from .head_outputs import HeadOutputs, clone_tensors, sparse_tensor_types


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in nested dicts, lists, tuples and sparse tensors."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, sparse_tensor_types()):
        yield from (value.features, value.indices)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _only_tensors(value: Any) -> bool:
    """Whether nested dicts, lists and tuples hold nothing but tensors,
    sparse tensors, numbers and None."""
    if isinstance(
            value,
        (torch.Tensor, *sparse_tensor_types(), int, float, bool, type(None))):
        return True
    if isinstance(value, dict):
        return all(_only_tensors(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_only_tensors(item) for item in value)
    return False


def _state_tensors(module: nn.Module) -> List[torch.Tensor]:
    return [
        t.detach()
        for t in itertools.chain(module.parameters(), module.buffers())
    ]


class UpstreamReplay:
    """Replays the outputs of the detector parts before the head that are
    unchanged since the replay began (see the module docstring).

    Args:
        model: The detector, as it is when the replay begins (the
            unpruned model of the curves).
        heads: The head modules whose outputs are measured; a part that
            holds one is never replayed, and the first run of any of its
            modules ends the replay of the pass.

    Attributes:
        calls: Runs of the replayable parts during passes.
        replayed: Per part name, how many of its runs were replayed.
        recorded_bytes: Memory held by the recorded outputs.
    """

    def __init__(self, model: nn.Module, heads: Sequence[nn.Module]) -> None:
        self.model = model
        head_ids = {id(head) for head in heads}
        self.parts: Dict[str, nn.Module] = {}
        self.barriers: List[nn.Module] = []
        for name, child in model.named_children():
            if head_ids & {id(m) for m in child.modules()}:
                self.barriers.append(child)
            else:
                self.parts[name] = child
        self._snapshot = {
            name: [t.clone() for t in _state_tensors(part)]
            for name, part in self.parts.items()
        }
        self._own = [
            t.detach().clone() for t in model.parameters(recurse=False)
        ]
        self._records: Dict[Tuple[int, str, int], Any] = {}
        self._batches: Dict[int, Any] = {}
        self._not_replayable: set = set()
        self._in_pass = False
        self._clean = False
        self._calls: Counter = Counter()
        self._unchanged: Dict[str, bool] = {}
        self.calls = 0
        self.replayed: Counter = Counter()
        self.recorded_bytes = 0

    def _is_unchanged(self, name: str) -> bool:
        if name not in self._unchanged:
            now = _state_tensors(self.parts[name])
            then = self._snapshot[name]
            self._unchanged[name] = len(now) == len(then) and all(
                a.shape == b.shape and torch.equal(a, b)
                for a, b in zip(now, then))
        return self._unchanged[name]

    def _wrap(self, name: str, forward: Callable) -> Callable:

        def replaying_forward(*args, **kwargs):
            if not self._in_pass:
                return forward(*args, **kwargs)
            call = self._calls[name]
            self._calls[name] += 1
            self.calls += 1
            self._clean = self._clean and self._is_unchanged(name)
            if not self._clean:
                return forward(*args, **kwargs)
            key = (self._batch_id, name, call)
            if key in self._records:
                self.replayed[name] += 1
                return clone_tensors(self._records[key])
            if name in self._not_replayable:
                return forward(*args, **kwargs)
            inputs = list(_tensors((args, kwargs)))
            versions = [t._version for t in inputs]
            output = forward(*args, **kwargs)
            if (versions != [t._version for t in inputs]
                    or not _only_tensors(output)):
                self._not_replayable.add(name)
            else:
                self._records[key] = clone_tensors(output)
                self.recorded_bytes += sum(
                    t.numel() * t.element_size()
                    for t in _tensors(self._records[key]))
            return output

        return replaying_forward

    def _end_clean_prefix(self, module, args) -> None:
        self._clean = False

    @contextmanager
    def installed(self) -> Iterator['UpstreamReplay']:
        """Route the parts' forwards through the replay until exit; the
        records are dropped on exit."""
        own_forwards = {
            name: vars(part).get('forward')
            for name, part in self.parts.items()
        }
        for name, part in self.parts.items():
            part.forward = self._wrap(name, part.forward)
        # any module of a part that holds a head ends the clean prefix: what
        # runs after it may read what it changed
        handles = [
            module.register_forward_pre_hook(self._end_clean_prefix)
            for barrier in self.barriers for module in barrier.modules()
        ]
        try:
            yield self
        finally:
            for name, part in self.parts.items():
                if own_forwards[name] is None:
                    del part.forward
                else:
                    part.forward = own_forwards[name]
            for handle in handles:
                handle.remove()
            self._records.clear()
            self._batches.clear()

    @contextmanager
    def one_pass(self, batch: Any) -> Iterator[None]:
        """One run of ``batch`` through the detector, replaying what is
        unchanged; its records are kept under ``batch``."""
        self._batches[id(batch)] = batch  # keeps the id from being reused
        self._batch_id = id(batch)
        self._calls.clear()
        self._unchanged.clear()
        self._clean = not torch.is_grad_enabled() and all(
            torch.equal(a.detach(), b)
            for a, b in zip(self.model.parameters(recurse=False), self._own))
        self._in_pass = True
        try:
            yield
        finally:
            self._in_pass = False


@contextmanager
def replaying_unchanged_parts(
        head: HeadOutputs,
        enabled: bool = True) -> Iterator[Optional[UpstreamReplay]]:
    """Within the context, ``head``'s passes replay the parts before the
    head that are unchanged since entry (a no-op when not ``enabled``).
    Yields the replay (None when not ``enabled``), whose counts stay
    readable after exit.

    Passes run with gradients enabled never replay (a replayed output has
    no graph). The records of every calibration frame are held until exit:
    the memory of the parts' outputs, once per frame.
    """
    if not enabled:
        yield None
        return
    replay = UpstreamReplay(head.model, head.heads)
    with replay.installed():
        head.replay = replay
        try:
            yield replay
        finally:
            head.replay = None
    if replay.calls:
        MMLogger.get_current_instance().info(
            f'curves: {sum(replay.replayed.values())} of {replay.calls} runs of the parts '
            'before the head replayed from the first pass (records: '
            f'{replay.recorded_bytes / 2**20:.1f} MiB)')
