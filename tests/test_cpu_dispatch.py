"""The dispatch layer sends CPU tensors to our kernels and anything else to
mmcv's own functions."""
import sys
import types

import torch

import rdprune_mm  # noqa: F401
from rdprune_mm.cpu_ops import CPU_KERNELS, CPU_OVERRIDES
from rdprune_mm.cpu_ops.dispatch import (CpuFallbackExt, _install_override,
                                         install_dispatch)


class _RecordingExt:

    def __init__(self):
        self.calls = []

    def my_op_forward(self, tensor, out):
        self.calls.append('original')


def test_ext_proxy_routes_by_device(monkeypatch):
    calls = []
    monkeypatch.setitem(CPU_KERNELS, 'my_op_forward',
                        lambda tensor, out: calls.append('cpu'))
    ext = _RecordingExt()
    proxy = CpuFallbackExt(ext)
    proxy.my_op_forward(torch.zeros(2), torch.zeros(2))
    proxy.my_op_forward(
        torch.zeros(2, device='meta'), torch.zeros(2, device='meta'))
    assert calls == ['cpu'] and ext.calls == ['original']


def test_every_kernel_names_an_mmcv_ext_function():
    from mmcv.utils import ext_loader
    ext = ext_loader.load_ext('_ext', [])
    missing = [name for name in CPU_KERNELS if not hasattr(ext, name)]
    assert not missing
    proxied = [
        module for name, module in sys.modules.items()
        if name.startswith('mmcv.ops.') and hasattr(module, 'ext_module')
    ]
    assert proxied and all(
        isinstance(m.ext_module, CpuFallbackExt) for m in proxied)


def test_override_replaces_imported_references_and_keeps_other_devices(
        monkeypatch):
    calls = []

    def original(tensor):
        calls.append('original')

    class Op(torch.autograd.Function):

        @staticmethod
        def forward(ctx, tensor):
            calls.append('original forward')
            return tensor.clone()

    source = types.ModuleType('fake_mmcv_op')
    source.op, source.Op = original, Op
    user = types.ModuleType('fake_user')
    user.op = original
    monkeypatch.setitem(sys.modules, 'fake_mmcv_op', source)
    monkeypatch.setitem(sys.modules, 'fake_user', user)

    monkeypatch.setitem(CPU_OVERRIDES, ('fake_mmcv_op', 'op'),
                        lambda t: calls.append('cpu'))
    monkeypatch.setitem(CPU_OVERRIDES, ('fake_mmcv_op', 'Op.forward'),
                        lambda ctx, t: calls.append('cpu forward') or t * 2)
    _install_override('fake_mmcv_op', 'op')
    _install_override('fake_mmcv_op', 'Op.forward')
    _install_override('fake_mmcv_op', 'op')

    user.op(torch.zeros(1))
    user.op(torch.zeros(1, device='meta'))
    assert source.op is user.op and source.op.__wrapped__ is original
    out = Op.apply(torch.ones(1))
    assert out.item() == 2
    assert calls == ['cpu', 'original', 'cpu forward']


def test_overrides_reach_mmdet3d_and_install_is_idempotent():
    from mmcv.ops import points_in_boxes_part
    from mmdet3d.structures.bbox_3d import base_box3d
    assert base_box3d.points_in_boxes_part is points_in_boxes_part
    assert getattr(points_in_boxes_part, '_rdprune_mm_cpu_fallback', False)
    install_dispatch()
    from mmcv.ops import points_in_boxes_part as again
    assert again is points_in_boxes_part
