"""Distortion measures: normalisation per tensor, plain MSE, worst case."""
import pytest
import torch

from rdprune_mm.registry import DISTORTIONS


def outputs(scale=1.0, seed=0, noise=0.1):
    gen = torch.Generator().manual_seed(seed)
    ref = {
        'heatmap': torch.randn(1, 2, 8, 8, generator=gen),
        'reg': scale * torch.randn(1, 2, 8, 8, generator=gen),
    }
    out = {k: v + noise * v.abs().mean() * torch.randn(
        v.shape, generator=gen) for k, v in ref.items()}
    return ref, out


def by_hand_nmse(refs, outs):
    names = refs[0].keys()
    return sum(
        sum(((o[n] - r[n])**2).sum() for r, o in zip(refs, outs)) /
        sum((r[n]**2).sum() for r in refs) for n in names).item() / len(names)


def test_normalized_mse_weighs_tensors_alike():
    measure = DISTORTIONS.build(dict(type='NormalizedMSE'))
    mse = DISTORTIONS.build(dict(type='MSE'))
    ref, out = outputs(scale=1.0)
    big_ref, big_out = outputs(scale=1000.0)
    assert measure([ref], [out]) == pytest.approx(
        by_hand_nmse([ref], [out]), rel=1e-6)
    assert measure([big_ref], [big_out]) == pytest.approx(
        measure([ref], [out]), rel=1e-5)
    assert mse([big_ref], [big_out]) > 1e4 * mse([ref], [out])
    assert measure([ref], [ref]) == 0.0 and mse([ref], [ref]) == 0.0


def test_mse_by_hand():
    ref, out = outputs()
    expected = sum(((out[k] - ref[k])**2).sum() for k in ref) / sum(
        v.numel() for v in ref.values())
    assert DISTORTIONS.build(dict(type='MSE'))([ref], [out]) == \
        pytest.approx(expected.item(), rel=1e-6)


def test_worst_case_is_the_worst_sample():
    samples = [outputs(seed=s, noise=n) for s, n in ((0, 0.1), (1, 0.5),
                                                     (2, 0.2))]
    refs = [s[0] for s in samples]
    outs = [s[1] for s in samples]
    worst = DISTORTIONS.build(dict(type='WorstCaseNormalizedMSE'))
    per_sample = [by_hand_nmse([r], [o]) for r, o in zip(refs, outs)]
    assert worst(refs, outs) == pytest.approx(max(per_sample), rel=1e-6)
    assert worst(refs, outs) > DISTORTIONS.build(
        dict(type='NormalizedMSE'))(refs, outs)
