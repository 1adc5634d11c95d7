"""BatchNorm statistics set from the calibration frames."""
import torch
from mmengine.config import Config
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import QUICK_CENTERPOINT
from rdprune_mm.apis import build_detector
from rdprune_mm.batchnorm import recalibrate_batchnorm
from rdprune_mm.calibration import calibration_batches
from rdprune_mm.head_outputs import HeadOutputs


def test_random_detector_gets_unit_scale_activations():
    cfg = Config.fromfile(QUICK_CENTERPOINT)
    model, _ = build_detector(cfg)
    batches = calibration_batches(cfg, model, cfg.calibration)
    norms = {n: m for n, m in model.named_modules()
             if isinstance(m, _BatchNorm)}
    momenta = {n: m.momentum for n, m in norms.items()}
    seen = {}

    def record(name):

        def hook(module, args, output):
            feats = output.reshape(-1, output.shape[-1]) if output.dim() == 2 \
                else output.transpose(0, 1).reshape(output.shape[1], -1).T
            seen[name] = feats.clone()  # before an in-place ReLU

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in norms.items()]
    with torch.no_grad():
        HeadOutputs(model)(batches[0])
        before = {n: f.std(0).mean().item() for n, f in seen.items()}
        assert recalibrate_batchnorm(model, batches) == len(norms)
        HeadOutputs(model)(batches[0])
    for handle in handles:
        handle.remove()

    for name, norm in norms.items():
        assert not norm.training and norm.momentum == momenta[name]
        feats = seen[name]
        weight = norm.weight.abs().mean().item()
        torch.testing.assert_close(
            feats.mean(0), norm.bias.expand(feats.shape[1]),
            atol=0.05 * weight, rtol=0)
        assert abs(feats.std(0).mean().item() / weight - 1) < 0.05, name
    # the last layers' activations had shrunk by orders of magnitude
    last = list(norms)[-1]
    assert before[last] < 0.01 * seen[last].std(0).mean().item()
