from .head_distillation_hook import HeadDistillationHook
from .rd_prune_hook import CHECKPOINT_KEY, RDPruneHook

__all__ = ['RDPruneHook', 'HeadDistillationHook', 'CHECKPOINT_KEY']
