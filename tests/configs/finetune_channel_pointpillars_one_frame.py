# The reduced PointPillars fine-tuning run of
# finetune_pointpillars_one_frame.py, with RD channel pruning: RDPruneHook
# slims the model before training, and trains and saves the slim model.
_base_ = ['./finetune_pointpillars_one_frame.py']

custom_hooks = [
    dict(type='EMAHook', ema_type='mmdet.ExpMomentumEMA', momentum=0.1),
    dict(type='RDPruneHook',
         pruner=dict(type='RDChannelPruner',
                     budget=0.5,
                     num_levels=3,
                     targets=dict(include=[
                         r'backbone.blocks.0.0$', r'backbone.blocks.0.3$',
                         r'neck.deblocks.0.0$'
                     ])),
         calibration=dict(dataloader='train_dataloader', num_samples=1))
]
