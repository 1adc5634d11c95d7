from .rd_prune_hook import CHECKPOINT_KEY, RDPruneHook

__all__ = ['RDPruneHook', 'CHECKPOINT_KEY']
