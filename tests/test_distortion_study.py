"""The random allocations of tools/analyze_distortion.py and its
correlations."""
import numpy as np
import pytest
import torch

from rdprune_mm.apis.distortion_study import (_read_records, _write_records,
                                              correlations, level_magnitudes,
                                              measure_config,
                                              scaled_global_levels)
from rdprune_mm.errors import PruningInputError
from rdprune_mm.masks import magnitude_order, pruned_counts, sparsity_grid


def layers(seed=0):
    rng = np.random.default_rng(seed)
    grid = sparsity_grid(11)
    weights, magnitudes, tables = [], [], []
    for size in rng.integers(50, 400, size=8):
        weight = torch.from_numpy(rng.standard_normal(size) *
                                  rng.lognormal())
        order = magnitude_order(weight)
        counts = pruned_counts(size, grid)
        flops_per_weight = float(rng.integers(1, 50))
        weights.append(weight)
        magnitudes.append(level_magnitudes(weight, order, counts))
        tables.append((size - counts) * flops_per_weight)
    return weights, magnitudes, tables


@pytest.mark.parametrize('budget', [0.3, 0.5, 0.8])
def test_unscaled_levels_are_one_global_threshold_within_budget(budget):
    _, magnitudes, tables = layers()
    last = 9  # at most 0.9 of a layer
    levels = scaled_global_levels(magnitudes, tables, np.ones(len(tables)),
                                  budget, last)
    total = sum(t[0] for t in tables)
    kept = sum(t[k] for t, k in zip(tables, levels))
    assert kept <= budget * total
    assert max(levels) <= last
    # one threshold: every pruned magnitude lies below every magnitude that
    # the next level of any layer would add
    pruned = max(m[k] for m, k in zip(magnitudes, levels))
    following = min(m[k + 1] for m, k in zip(magnitudes, levels) if k < last)
    assert pruned <= following


def test_a_large_scale_protects_a_layer():
    _, magnitudes, tables = layers()
    scales = np.ones(len(tables))
    scales[2] = 1e6
    levels = scaled_global_levels(magnitudes, tables, scales, 0.5, 9)
    assert levels[2] == 0
    assert sum(levels) > 0


def test_correlations_rank_the_loss():
    records = [dict(budget=b, map_3d=60 - loss,
                    distortion=dict(good=loss, bad=-loss))
               for b, loss in [(0.5, 1.0), (0.5, 3.0), (0.5, 2.0),
                               (0.25, 5.0), (0.25, 9.0), (0.25, 7.0)]]
    corr = correlations(records, 60.0, ['good', 'bad'])
    assert corr['good']['spearman'] == pytest.approx(1.0)
    assert corr['bad']['spearman'] == pytest.approx(-1.0)
    assert corr['good']['by_budget'] == {'0.25': pytest.approx(1.0),
                                         '0.5': pytest.approx(1.0)}


def test_each_class_loss_is_ranked_on_its_own():
    # the measure follows Car's loss and runs against Pedestrian's
    dense = dict(Car=50.0, Pedestrian=70.0)
    records = [
        dict(budget=0.5,
             map_3d=60 - loss,
             distortion=dict(m=loss),
             class_3d=dict(Car=50 - loss, Pedestrian=70 - (5 - loss)))
        for loss in (1.0, 2.0, 3.0, 4.0)
    ]
    corr = correlations(records, 60.0, ['m'], dense)['m']
    assert corr['by_class'] == dict(Car=pytest.approx(1.0),
                                    Pedestrian=pytest.approx(-1.0))
    # records without per-class APs give no per-class figure
    for r in records[:1]:
        del r['class_3d']
    assert correlations(records, 60.0, ['m'], dense)['m']['by_class'] == {}


def test_measures_are_given_with_their_settings():
    assert measure_config('DecodedDistortion(score_weight=0.25)') == dict(
        type='DecodedDistortion', score_weight=0.25)
    assert measure_config('NormalizedMSE') == dict(type='NormalizedMSE')
    for bad in ('DecodedDistortion(0.25)', 'DecodedDistortion(w=foo)',
                'DecodedDistortion(', 'NoSuchMeasure'):
        with pytest.raises(PruningInputError, match='--measures'):
            measure_config(bad)


def test_a_study_with_another_measure_keeps_its_evaluated_allocations(
        tmp_path):
    path = str(tmp_path / 'allocations.json')
    settings = dict(checkpoint='a.pth', samples=10, measures=['A'])
    records = [dict(budget=1.0, map_3d=60.0, distortion=dict(A=0.0))]
    _write_records(path, settings, records)
    assert _read_records(path, dict(settings, measures=['A', 'B'])) == records
    # any other setting changes the allocations or their evaluation
    assert _read_records(path, dict(settings, samples=12)) == []
