"""Bad settings, bad numbers and bad caches are refused or discarded with a
message that names the problem and the fix."""
import json
import math

import numpy as np
import pytest
import torch

from rdprune_mm.curves import CurveCache, empirical_curves
from rdprune_mm.errors import PruningInputError
from rdprune_mm.masks import sparsity_grid
from rdprune_mm.pruners import (MagnitudeWeightPruner, RDChannelPruner,
                                RDWeightPruner)
from rdprune_mm.targets import find_targets
from test_channel_pruner import tiny_setup
from test_curves import make_measure, small_model


@pytest.mark.parametrize('pruner', [RDWeightPruner, RDChannelPruner,
                                    MagnitudeWeightPruner])
@pytest.mark.parametrize('targets, message', [
    (dict(include='conv'), r"must be a list .*include=\['conv'\]"),
    (dict(exclude=['conv[']), 'not a regular expression'),
    (dict(include=[3]), 'not a regular expression'),
    (dict(inlcude=['conv']), r"unknown keys \['inlcude'\]"),
])
def test_bad_target_patterns_are_refused(pruner, targets, message):
    with pytest.raises(PruningInputError, match=message):
        pruner(targets=targets)


@pytest.mark.parametrize('kwargs, message', [
    (dict(budget='half'), "pruner.budget='half' is not a number"),
    (dict(budget=None), 'is not a number'),
    (dict(resolution=0), r'pruner.resolution=0 must be an integer >= 1'),
    (dict(resolution=2.5), 'pruner.resolution'),
    (dict(num_levels='11'), 'num_levels'),
    (dict(min_keep='0.1'), 'min_keep'),
])
def test_bad_numbers_are_refused(kwargs, message):
    with pytest.raises(PruningInputError, match=message):
        RDWeightPruner(**kwargs)


def test_nan_weights_are_refused_with_the_layer_named():
    model, batches = tiny_setup()
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(PruningInputError, match='layer conv2 holds NaN'):
        RDWeightPruner(head_modules=['head']).prune(model, batches)


def test_non_finite_head_outputs_are_refused():
    model, batches = tiny_setup()
    batches[1]['inputs'][0, 0, 0, 0] = math.inf
    with pytest.raises(PruningInputError,
                       match='head output .* calibration frame 1'):
        RDChannelPruner(head_modules=['head']).prune(model, batches)


def test_a_distortion_that_is_not_finite_names_the_layer(tmp_path):
    model = small_model()
    targets = find_targets(model)
    calls = []
    measure = make_measure(model, calls)

    def overflowing():
        value = measure()
        return math.inf if len(calls) == 3 else value

    with pytest.raises(PruningInputError, match="of 0 gives a distortion"):
        empirical_curves(targets, sparsity_grid(5), overflowing,
                         CurveCache(str(tmp_path), 'key'))


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'nan', 'short'])
def test_damaged_cache_is_discarded_and_measured_again(tmp_path, damage):
    model = small_model()
    targets = find_targets(model)
    grid = sparsity_grid(5)
    clean = empirical_curves(targets, grid, make_measure(model, []),
                             CurveCache(str(tmp_path), 'key', length=5))
    path = CurveCache(str(tmp_path), 'key').path
    text = open(path).read()
    if damage == 'truncate':
        text = text[:len(text) // 2]
    elif damage == 'garbage':
        text = '\x00\x01 not json'
    else:
        stored = json.loads(text)
        stored['curves']['0'] = ([math.nan] * 5 if damage == 'nan' else
                                 stored['curves']['0'][:3])
        text = json.dumps(stored)
    with open(path, 'w') as f:
        f.write(text)
    calls = []
    again = empirical_curves(targets, grid, make_measure(model, calls),
                             CurveCache(str(tmp_path), 'key', length=5))
    assert calls  # something was measured again
    if damage in ('nan', 'short'):  # only the bad entry
        assert len(calls) == len(grid) - 1
    for name in clean:
        np.testing.assert_array_equal(again[name], clean[name])


def test_point_files_that_do_not_fit_load_dim_are_refused(tmp_path):
    from conftest import LIDAR, NUSCENES_FRAME
    from rdprune_mm.calibration import check_point_file
    kitti = f'{LIDAR}/000008.bin'
    check_point_file(kitti, 4)
    check_point_file(NUSCENES_FRAME, 5)
    # 34,688 x 5 floats are also a whole number of 4-feature points
    with pytest.raises(PruningInputError, match='reads as points of 5 '
                       'features, not load_dim=4'):
        check_point_file(NUSCENES_FRAME, 4)
    with pytest.raises(PruningInputError, match='not a whole number'):
        check_point_file(kitti, 5)
    cut = tmp_path / 'cut.bin'
    cut.write_bytes(open(kitti, 'rb').read()[:-4])
    with pytest.raises(PruningInputError, match='load_dim=4'):
        check_point_file(str(cut), 4)


def test_tool_inputs_refused_before_any_work(tmp_path):
    from rdprune_mm.apis import load_config
    from rdprune_mm.apis.checks import build_pruner, check_device
    with pytest.raises(PruningInputError, match="'RDWeightPrunr' is not a "
                       "pruner; use one of .*'RDWeightPruner'"):
        build_pruner(dict(type='RDWeightPrunr'))
    with pytest.raises(PruningInputError,
                       match="RDWeightPruner has no setting 'budjet'"):
        build_pruner(dict(type='RDWeightPruner', budjet=0.3))
    assert build_pruner(dict(type='RDWeightPruner', budget=0.3,
                             _scope_='rdprune_mm')).budget == 0.3
    if not torch.cuda.is_available():
        with pytest.raises(PruningInputError, match='no CUDA device'):
            check_device('cuda')
    with pytest.raises(PruningInputError, match='not a device'):
        check_device('gpu0')
    assert check_device('cpu') == 'cpu'
    broken = tmp_path / 'broken.py'
    broken.write_text("pruner = dict(budget=0.5\n")
    with pytest.raises(PruningInputError, match='cannot be read'):
        load_config(str(broken))
