"""First-order Taylor (Fisher) channel importance against the measured
distortion of removing each channel."""
import numpy as np
import pytest
import torch

from rdprune_mm.channels.groups import ChannelGroup, ChannelLayer
from rdprune_mm.distortion import NormalizedMSE, WorstCaseNormalizedMSE
from rdprune_mm.errors import PruningInputError
from rdprune_mm.pipeline.importance import (ChannelTaylorImportance,
                                            build_importance)
from rdprune_mm.targets import find_targets
from test_sketch import setup


def trunk_group(model) -> ChannelGroup:
    """The trunk's 32 output channels, read by both heads."""
    index = torch.arange(32)[:, None]
    return ChannelGroup(
        'trunk',
        32,
        producers=[ChannelLayer('trunk', model.trunk, 'linear', 0, index)],
        consumers=[
            ChannelLayer('cls', model.cls, 'linear', 1, index),
            ChannelLayer('reg', model.reg, 'linear', 1, index)
        ])


@pytest.mark.parametrize(
    'distortion',
    [NormalizedMSE(), WorstCaseNormalizedMSE()])
def test_scores_are_the_distortion_of_removing_each_channel(distortion):
    """On a linear model removing a channel changes the outputs by exactly
    the first-order term: with many projections each channel's score comes
    within sampling error of its measured distortion."""
    model, batches, reference = setup(num_batches=2)
    group = trunk_group(model)
    importance = ChannelTaylorImportance(num_projections=3000, seed=1)
    importance.measure([group], find_targets(model), batches, model,
                       distortion.quadratic_weights(reference),
                       distortion.sample_reduction)
    measured = []
    weight = model.trunk.weight
    for channel in range(32):
        saved = weight[channel].clone()
        with torch.no_grad():
            weight[channel] = 0
            measured.append(distortion(reference, [model(b) for b in batches]))
            weight[channel] = saved
    scores = importance.scores(group).numpy()
    np.testing.assert_allclose(scores, measured, rtol=0.12)
    # the order follows the measured distortions where they differ clearly
    order = importance.order(group).tolist()
    ranked = sorted(range(32), key=lambda c: measured[c])
    assert order[0] == ranked[0] and order[-1] == ranked[-1]


def test_fisher_is_a_channel_ranking_that_must_be_measured():
    importance = build_importance('fisher', 'channels')
    assert isinstance(importance, ChannelTaylorImportance)
    model, _, _ = setup()
    with pytest.raises(PruningInputError, match='measured'):
        importance.order(trunk_group(model))
    with pytest.raises(PruningInputError, match='not one of'):
        build_importance('fisher', 'weights')
