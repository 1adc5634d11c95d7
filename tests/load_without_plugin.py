"""Load a pruned checkpoint with mmdet3d alone (no rdprune_mm) and save the
detection head's raw outputs on one frame.

Usage: python load_without_plugin.py CONFIG CHECKPOINT FRAME OUT [--runner]

mmdet3d loads with torch's default ``weights_only=True``. A checkpoint of
mmengine's Runner (``--runner``) holds mmengine's message hub, so it is
loaded with the safe globals of ``rdprune_mm/checkpoint.py``, read from its
file: rdprune_mm itself is never imported.
"""
import contextlib
import importlib.util
import os.path as osp
import sys

import torch
from mmdet3d.apis import inference_detector, init_model
from mmengine.config import Config

config, checkpoint, frame, out = sys.argv[1:5]
loading = contextlib.nullcontext()
if sys.argv[5:] == ['--runner']:
    spec = importlib.util.spec_from_file_location(
        'mmengine_checkpoint_globals',
        osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))),
                 'rdprune_mm', 'checkpoint.py'))
    globals_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(globals_module)
    loading = torch.serialization.safe_globals(
        globals_module.MMENGINE_SAFE_GLOBALS)
cfg = Config.fromfile(config, import_custom_modules=False)
cfg.pop('custom_imports', None)
with loading:
    model = init_model(cfg, checkpoint, device='cpu')
captured = {}


def flatten(value, prefix):
    if isinstance(value, torch.Tensor):
        captured[prefix] = value.detach()
    elif isinstance(value, dict):
        for key, item in value.items():
            flatten(item, f'{prefix}.{key}')
    elif isinstance(value, (list, tuple)):
        for key, item in enumerate(value):
            flatten(item, f'{prefix}.{key}')


head_name = 'pts_bbox_head' if hasattr(model, 'pts_bbox_head') else 'bbox_head'
getattr(model, head_name).register_forward_hook(
    lambda module, args, output: flatten(output, head_name))
inference_detector(model, frame)
captured['rdprune_mm imported'] = 'rdprune_mm' in sys.modules
torch.save(captured, out)
