"""Structured (channel) pruning: coupled channel groups, channel masks and
physical slimming.

* :func:`find_channel_groups` traces a detector with the channel rules of its
  module classes (:func:`register_channel_rule`) and returns every set of
  channels that must be pruned together (:class:`ChannelGroup`);
* :func:`masked_channels` / :func:`apply_channel_mask` zero channels without
  changing shapes (the masked model measures distortion cheaply);
* :func:`slim_model` removes them physically; :func:`channel_structure` and
  :func:`apply_structure` rebuild a slimmed model from its config;
* :func:`check_channel_groups` checks the groups on a real forward pass;
* :func:`separable_costs` gives the allocator per-group cost tables;
  :mod:`.latency` does the same for time per frame measured on slim copies;
* :func:`slim_copy` / :func:`write_slim_outputs` export a slim model that
  ``type='SlimDetector'`` (:func:`build_slim_detector`) rebuilds from a
  config.
"""
from .costs import channel_counts, separable_costs
from .discover import (find_channel_groups, load_builtin_rules,
                       trace_channel_groups)
from .export import (build_slim_detector, slim_config, slim_copy,
                     write_slim_outputs)
from .groups import (ChannelAttribute, ChannelGroup, ChannelLayer, cost_after,
                     layer_fractions, total_cost_after)
from .masking import apply_channel_mask, masked_channels
from .registry import register_channel_rule
from .slim import apply_structure, channel_structure, slim_model
from .tracer import ChannelRuleError, ChannelTracer, Feature
from .verify import check_channel_groups

__all__ = [
    'find_channel_groups', 'trace_channel_groups', 'load_builtin_rules',
    'ChannelGroup', 'ChannelLayer', 'ChannelAttribute', 'cost_after', 'total_cost_after',
    'layer_fractions', 'apply_channel_mask', 'masked_channels',
    'slim_model', 'channel_structure', 'apply_structure',
    'register_channel_rule', 'ChannelTracer', 'Feature', 'ChannelRuleError',
    'check_channel_groups', 'channel_counts', 'separable_costs',
    'build_slim_detector', 'slim_config', 'slim_copy', 'write_slim_outputs'
]
