"""Channel rules of generic building blocks: torch containers and
element-wise layers, mmcv's ``ConvModule`` and spconv's
``SparseSequential``.

Only layers that map 0 to 0 pass channels through: a pruned channel is zero
in the masked model, and must stay zero until a layer reads it. ``Sigmoid``
(0 -> 0.5) and other layers without a rule keep the channels they read, as
do normalizations that mix channels (GroupNorm, LayerNorm, InstanceNorm).
"""
from __future__ import annotations

from torch import nn

from .registry import register_channel_rule

#: Element-wise or spatial layers with f(0) = 0 that keep channels.
ZERO_PRESERVING = [
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh,
    nn.Hardswish, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
    nn.ReflectionPad2d, nn.ReplicationPad2d
]
#: Normalizations that mix channels (statistics over channel groups or all
#: channels): their channels are kept.
CHANNEL_MIXING_NORMS = [
    nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d
]
try:  # mmcv's own activations
    from mmcv.cnn.bricks.activation import GELU as MMCVGELU
    from mmcv.cnn.bricks.hswish import HSwish
    from mmcv.cnn.bricks.swish import Swish
    ZERO_PRESERVING += [MMCVGELU, HSwish, Swish]
except ImportError:  # pragma: no cover
    pass


@register_channel_rule(*ZERO_PRESERVING)
def passthrough(tracer, module, x):
    """Channels pass unchanged."""
    return tracer.passthrough(module, x)


@register_channel_rule(*CHANNEL_MIXING_NORMS)
def keep_channels(tracer, module, x):
    """The channels read are kept (never pruned); they pass unchanged."""
    tracer.fix(x, reason=f'normalized by {type(module).__name__} '
               f'{tracer.name_of(module)}')
    return tracer.passthrough(module, x)


@register_channel_rule(nn.Sequential)
def sequential(tracer, module, x):
    """Children in order."""
    for child in module:
        x = tracer.call(child, x)
    return x


try:
    from spconv.pytorch import SparseSequential

    @register_channel_rule(SparseSequential)
    def sparse_sequential(tracer, module, x):
        """Children in order; dense children act on the features."""
        for child in module._modules.values():
            x = tracer.call(child, x)
        return x
except ImportError:  # pragma: no cover
    pass

try:
    from mmcv.ops import SparseSequential as MMCVSparseSequential

    register_channel_rule(MMCVSparseSequential)(sparse_sequential)
except (ImportError, NameError):  # pragma: no cover
    pass

try:
    from mmcv.cnn import ConvModule

    @register_channel_rule(ConvModule)
    def conv_module(tracer, module, x):
        """``conv``, ``norm`` and ``act`` in ``module.order``."""
        for layer in module.order:
            if layer == 'conv':
                if module.with_explicit_padding:
                    x = tracer.call(module.padding_layer, x)
                x = tracer.call(module.conv, x)
            elif layer == 'norm' and module.with_norm:
                x = tracer.call(module.norm, x)
            elif layer == 'act' and module.with_activation:
                x = tracer.call(module.activate, x)
        return x
except ImportError:  # pragma: no cover
    pass
