"""rdprune_mm.plots: curves.png and allocation.png of a synthetic report."""
import os
import os.path as osp

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from rdprune_mm import plots

LEVELS = np.linspace(0.0, 1.0, 6)


def _layer(name, level, params):
    sparsity = float(LEVELS[level])
    return dict(
        name=name,
        kind='conv',
        level=level,
        sparsity=sparsity,
        params_before=params,
        params_after=int(round(params * (1 - sparsity))),
        predicted_distortion=0.0)


@pytest.fixture
def report_and_curves():
    layers = [
        _layer('pts_neck.deblocks.0.0', 2, 4096),
        _layer('pts_neck.deblocks.1.0', 1, 16384),
        _layer('pts_bbox_head.shared_conv.conv', 3, 36864),
        _layer('pts_bbox_head.task_heads.0.reg.0.conv', 0, 288),
        _layer('pts_bbox_head.task_heads.0.heatmap.1.conv', 5, 64),
    ]
    curves = {
        'pts_neck.deblocks.0.0': np.array([0, 1e-4, 1e-3, 1e-2, 0.1, 1.0]),
        'pts_neck.deblocks.1.0': np.array([0, 2e-4, 5e-3, 3e-2, 0.3, 2.0]),
        # large values
        'pts_bbox_head.shared_conv.conv':
        np.array([0, 1e2, 1e3, 1e4, 1e5, 1e6]),
        # all zeros
        'pts_bbox_head.task_heads.0.reg.0.conv': np.zeros(6),
        'pts_bbox_head.task_heads.0.heatmap.1.conv':
        np.array([0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]),
    }
    for layer in layers:
        layer['predicted_distortion'] = float(
            curves[layer['name']][layer['level']])
    report = dict(
        budget=dict(unit='share kept', asked=0.4, achieved=0.3987),
        levels=[float(s) for s in LEVELS],
        layers=layers)
    return report, curves


def _check_png(path):
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert 300 <= height <= 5000 and 300 <= width <= 6000
    colours = np.unique(image.reshape(-1, image.shape[2]), axis=0)
    assert len(colours) > 10  # not blank: axes, text, coloured lines


def test_write_plots(report_and_curves, tmp_path):
    report, curves = report_and_curves
    paths = plots.write_plots(report, curves, str(tmp_path))
    assert [osp.basename(p) for p in paths] == ['curves.png',
                                                 'allocation.png']
    for path in paths:
        _check_png(path)
    # only the two pictures, no temporary leftovers
    assert sorted(os.listdir(tmp_path)) == ['allocation.png', 'curves.png']


def test_many_layers_and_all_zero_curves(tmp_path):
    names = [f'group{i % 3}.layer{i}' for i in range(120)]
    report = dict(
        budget=dict(asked=0.5, achieved=0.5),
        levels=[0.0, 0.5, 1.0],
        layers=[_layer(n, 0, 10 + i) for i, n in enumerate(names)])
    for layer in report['layers']:
        layer['sparsity'] = 0.0
    curves = {n: np.zeros(3) for n in names}
    for path in plots.write_plots(report, curves, str(tmp_path)):
        _check_png(path)


def test_distortion_scale():
    assert plots._distortion_scale(np.array([1e-3, 1.0]))[0] == 'log'
    scale, kwargs = plots._distortion_scale(np.array([0, 3e-5, 1e4]))
    assert scale == 'symlog' and kwargs['linthresh'] == pytest.approx(1e-5)
    assert plots._distortion_scale(np.zeros(4))[0] == 'linear'
    assert plots._distortion_scale(np.array([np.nan, 0.0]))[0] == 'linear'


def test_curve_length_mismatch(report_and_curves, tmp_path):
    report, curves = report_and_curves
    curves = dict(curves, **{'pts_neck.deblocks.0.0': np.zeros(3)})
    with pytest.raises(ValueError, match='3 values for 6 levels'):
        plots.plot_curves(report, curves, str(tmp_path / 'curves.png'))
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_partial_file(report_and_curves, tmp_path,
                                             monkeypatch):
    report, curves = report_and_curves
    path = tmp_path / 'allocation.png'
    path.write_bytes(b'earlier picture')

    def broken_savefig(self, fname, **kwargs):
        with open(fname, 'wb') as f:
            f.write(b'\x89PNG partial')
        raise OSError('disk full')

    monkeypatch.setattr(Figure, 'savefig', broken_savefig)
    with pytest.raises(OSError, match='disk full'):
        plots.plot_allocation(report, str(path))
    with pytest.raises(OSError, match='disk full'):
        plots.plot_curves(report, curves, str(tmp_path / 'curves.png'))
    # the earlier file is untouched, no new or temporary file is left
    assert os.listdir(tmp_path) == ['allocation.png']
    assert path.read_bytes() == b'earlier picture'


def test_no_global_backend_switch(report_and_curves, tmp_path):
    import matplotlib

    def backend():  # read without resolving the automatic backend
        return dict.__getitem__(matplotlib.rcParams, 'backend')

    before = backend()
    report, curves = report_and_curves
    plots.write_plots(report, curves, str(tmp_path))
    assert backend() == before
