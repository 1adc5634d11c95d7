# RD weight pruning settings. Inherit this beside a detector config:
#   _base_ = ['mmdet3d::<detector config>', '../_base_/rd_weight_pruning.py']
custom_imports = dict(imports=['rdprune_mm'], allow_failed_imports=False)

pruner = dict(
    type='RDWeightPruner',
    # share of the prunable layers' weights (or FLOPs) to keep, in (0, 1]
    budget=0.5,
    # 'params' or 'flops' (measured on the calibration frames; sparse convs
    # from spconv's active input-output pairs)
    budget_by='params',
    # pruned shares 0, 1/20, ..., 1 of every layer's curve
    num_levels=21,
    # 'empirical': one calibration pass per layer and level (exact, slow);
    # 'taylor': Gauss-Newton estimate from a gradient sketch, a fixed
    # number of backward passes per calibration frame
    curves='empirical',
    # order of pruning inside a layer: 'magnitude' or 'taylor'
    ranking='magnitude',
    # random output directions of the gradient sketch (taylor curves or
    # ranking): more directions, less noise, one backward pass each
    sketch=dict(num_projections=32, seed=0),
    # regular expressions over module names (re.search); None: all layers
    targets=dict(include=None, exclude=None),
    # NormalizedMSE | MSE | WorstCaseNormalizedMSE | DecodedDistortion
    distortion=dict(type='NormalizedMSE'),
    min_keep=0.0,
    # None: the detection head (pts_bbox_head, bbox_head or rpn+roi head)
    head_modules=None,
    # after pruning, no labels: refit each pruned layer's kept weights
    # (dense and sparse convs, linear layers) by least squares to its
    # unpruned outputs on the calibration frames (pruned weights stay
    # zero), and re-estimate BatchNorm
    # statistics on them; allocation.json reports the distortion before
    # and after. Three more keys (their defaults are the pruner's, left
    # out so that the digests of configs made before them stay):
    # sequential=True refits the layers in call order, each on the inputs
    # of the pruned model with the layers before it refitted (two passes
    # of the calibration frames per layer); num_samples=N compensates on
    # the calibration dataloader's first N frames instead of the
    # calibration frames; curves=True measures the curves after each
    # layer's refit, so that the allocation counts what the refit recovers
    compensate=dict(reconstruct=False, batchnorm=False, damp=0.01))

# one frame per batch, preprocessed once; either the config's dataloader
# with its dataset fields overridden, or calibration = dict(frames=[...])
calibration = dict(dataloader='val_dataloader', num_samples=1)
