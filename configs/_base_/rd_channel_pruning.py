# RD channel pruning settings. Inherit this beside a detector config:
#   _base_ = ['mmdet3d::<detector config>', '../_base_/rd_channel_pruning.py']
# tools/prune.py then writes the masked model (pruned.pth) and the slim
# model: slim.pth, structure.json and slim_config.py (type='SlimDetector').
custom_imports = dict(imports=['rdprune_mm'], allow_failed_imports=False)

pruner = dict(
    type='RDChannelPruner',
    # share of the FLOPs (or weights) of the layers that the channel groups
    # touch to keep, in (0, 1]; met by the exact cost of the allocation
    budget=0.5,
    # 'flops' (measured on the calibration frames; sparse convs from
    # spconv's active input-output pairs), 'params', or 'latency': time per
    # frame on the model's device, from a per-layer model fitted to slim
    # copies timed at latency_shares (cached beside the curves)
    budget_by='flops',
    # kept shares 1, 0.9, ..., 0 of every group, rounded to channel counts
    # (one pass of the calibration set per group and level)
    num_levels=11,
    # channel order inside a group: 'l2' / 'l1' filter norm or 'bn' |gamma|
    ranking='l2',
    # regular expressions over module names (re.search): a group is pruned
    # when one of its producers matches include and none matches exclude
    targets=dict(include=None, exclude=None),
    # NormalizedMSE | MSE | WorstCaseNormalizedMSE | DecodedDistortion
    distortion=dict(type='NormalizedMSE'),
    # smallest share of every group's channels to keep (one at least)
    min_keep=0.0,
    # None: the detection head (pts_bbox_head, bbox_head or rpn+roi head)
    head_modules=None,
    # bisection steps that raise the allocator's (separable) budget while
    # the exact cost stays within the budget
    search_steps=12,
    # None, or a cap on the share of the layers' modelled time to keep
    # beside a 'flops' / 'params' budget (e.g. budget=0.25 with
    # latency_budget=0.3 asks 4x fewer FLOPs and at least 3.3x less time)
    latency_budget=None,
    # budget_by='latency' or latency_budget: uniform kept shares the layers
    # are timed at, and timed passes per share (their median counts)
    latency_shares=(1.0, 0.75, 0.5, 0.25),
    latency_repeats=3,
    # after pruning: re-estimate BatchNorm statistics on the calibration
    # frames (allocation.json reports the distortion before and after)
    compensate=dict(batchnorm=False))

# one frame per batch, preprocessed once; either the config's dataloader
# with its dataset fields overridden, or calibration = dict(frames=[...])
calibration = dict(dataloader='val_dataloader', num_samples=1)
