"""benchmarks/bench_quality.py's record of finished runs: results of earlier
sessions, whose work dirs are gone, stay in the summary, and each seed's
loss is taken against its own dense model."""
import importlib.util
import json
import os
import os.path as osp

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(scope='module')
def bench_quality():
    spec = importlib.util.spec_from_file_location(
        'rdprune_mm_bench_quality',
        osp.join(REPO, 'benchmarks', 'bench_quality.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ap(overall_3d, bev=80.0):
    classes = {
        c: {
            '3D': overall_3d,
            'BEV': bev
        }
        for c in ('Pedestrian', 'Cyclist', 'Car')
    }
    return dict(classes, Overall={'3D': overall_3d, 'BEV': bev})


def run_record(method, budget, oneshot, finetuned):
    return dict(method=method,
                budget=budget,
                flops_kept=budget,
                ap_oneshot=ap(oneshot),
                ap_finetuned=ap(finetuned))


def write(path, record):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(record, f)


def test_work_dir_runs_join_the_recorded_ones_and_replace_their_twins(
        bench_quality):
    ledger = dict(
        seeds={
            '0':
            dict(dense=ap(70.0),
                 runs=[
                     run_record('rd', 0.5, 60.0, 68.0),
                     run_record('lamp', 0.5, 55.0, 69.0)
                 ])
        })
    methods = ['rd', 'lamp']
    bench_quality.add_to_ledger(
        ledger, 0,
        dict(dense=None,
             runs=[
                 run_record('rd', 0.5000001, 61.0, 68.5),
                 run_record('l1-channel', 0.5, 1.0, 1.0)
             ]), methods)
    bench_quality.add_to_ledger(
        ledger, 1,
        dict(dense=ap(60.0), runs=[run_record('rd', 0.5, 50.0, 59.5)]),
        methods)
    seed0 = ledger['seeds']['0']
    assert seed0['dense'] == ap(70.0)  # kept: the work dir had none
    assert [(r['method'], r['ap_finetuned']['Overall']['3D'])
            for r in seed0['runs']] == [('lamp', 69.0), ('rd', 68.5)]

    summary = bench_quality.summarize(
        {
            int(s): b
            for s, b in ledger['seeds'].items()
        }, methods)
    rd = next(r for r in summary['rows'] if r['method'] == 'rd')
    assert rd['seeds'] == [0, 1]
    assert rd['finetuned_3D'] == pytest.approx(64.0)
    assert rd['finetuned_3D_std'] == pytest.approx(9 / 2**0.5)
    # paired with each seed's own dense model: 1.5 and 0.5 below
    assert rd['finetuned_3D_below_dense'] == pytest.approx(1.0)
    assert rd['finetuned_3D_below_dense_std'] == pytest.approx(0.7071,
                                                               abs=1e-4)
    assert summary['dense_seeds'] == [0, 1]
    assert summary['dense_3d'] == pytest.approx(65.0)


def test_summary_keeps_seeds_of_earlier_sessions(bench_quality, tmp_path):
    out_dir, work_dir = tmp_path / 'docs', tmp_path / 'work'
    write(
        str(out_dir / 'quality_weight_runs.json'),
        dict(seeds={
            '0':
            dict(dense=ap(70.0), runs=[run_record('rd', 0.5, 60.0, 69.0)])
        }))
    seed1 = work_dir / 'seed1'
    write(str(seed1 / 'eval_dense' / 'demo_done.json'),
          dict(result=dict(ap=ap(66.0))))
    write(str(seed1 / 'quality' / 'runs' / 'rd-flops-0.5' / 'result.json'),
          dict(result=run_record('rd', 0.5, 58.0, 65.0)))

    args = bench_quality.parse_args([
        '--summary-only', '--seeds', '1', '--out-dir',
        str(out_dir), '--work-dir',
        str(work_dir)
    ])
    summary = bench_quality.run(args)

    assert summary['dense_seeds'] == [0, 1]
    (row, ) = summary['rows']
    assert row['seeds'] == [0, 1]
    assert row['finetuned_3D_below_dense'] == pytest.approx(1.0)
    with open(out_dir / 'quality_weight_runs.json') as f:
        assert sorted(json.load(f)['seeds']) == ['0', '1']
    table = (out_dir / 'quality_weight.md').read_text()
    # runs that name no measure were chosen by the earlier one
    assert '| rd (DecodedDistortion) | 0.500 (1/2.00) | [0, 1] |' in table
    assert (out_dir / 'quality_weight.png').stat().st_size > 0


def test_each_val_set_has_its_own_record(bench_quality, tmp_path):
    """Runs evaluated on --eval-num-val frames are summarized apart from
    those on the data root's val frames, each against the dense model
    evaluated on the same frames."""
    out_dir, work_dir = tmp_path / 'docs', tmp_path / 'work'
    seed1 = work_dir / 'seed1'
    run_dir = seed1 / 'quality' / 'runs' / 'rd-flops-0.5'
    write(str(seed1 / 'eval_dense' / 'demo_done.json'),
          dict(result=dict(ap=ap(66.0))))
    write(str(seed1 / 'eval_dense_val2000' / 'demo_done.json'),
          dict(result=dict(ap=ap(67.0))))
    write(str(run_dir / 'result.json'),
          dict(result=run_record('rd', 0.5, 58.0, 65.0)))
    write(str(run_dir / 'result_val2000.json'),
          dict(result=run_record('rd', 0.5, 59.0, 66.5)))

    def summary(*extra):
        return bench_quality.run(
            bench_quality.parse_args([
                '--summary-only', '--seeds', '1', '--out-dir',
                str(out_dir), '--work-dir',
                str(work_dir), *extra
            ]))

    (large, ) = summary('--eval-num-val', '2000')['rows']
    assert large['finetuned_3D'] == 66.5
    assert large['finetuned_3D_below_dense'] == pytest.approx(0.5)
    assert not (out_dir / 'quality_weight_runs.json').exists()
    with open(out_dir / 'quality_weight_val2000_runs.json') as f:
        assert json.load(f)['val_frames'] == 2000
    assert '2000 val frames' in (out_dir /
                                 'quality_weight_val2000.md').read_text()

    (small, ) = summary()['rows']
    assert small['finetuned_3D'] == 65.0
    assert small['finetuned_3D_below_dense'] == pytest.approx(1.0)
    assert '400 val frames' in (out_dir / 'quality_weight.md').read_text()


def test_rd_runs_of_another_measure_are_their_own_cells(bench_quality):
    """A run of RD under a new distortion measure does not replace the
    recorded run of the earlier one, and each is its own row; baselines,
    which use no measure, stay one cell."""
    ledger = dict(seeds={})
    earlier = [
        run_record('rd', 0.5, 60.0, 68.0),
        run_record('lamp', 0.5, 62.0, 69.0)
    ]
    bench_quality.add_to_ledger(ledger, 0, dict(dense=ap(70.0), runs=earlier),
                                ['rd', 'lamp'])
    centered = "DecodedDistortion(regression_energy='centered')"
    later = [
        dict(run_record('rd', 0.5, 64.0, 69.5), measure=centered),
        dict(run_record('lamp', 0.5, 62.5, 69.2), measure=centered)
    ]
    bench_quality.add_to_ledger(ledger, 0, dict(dense=None, runs=later),
                                ['rd', 'lamp'])
    runs = ledger['seeds']['0']['runs']
    assert sorted((r['method'], r.get('measure', '-'))
                  for r in runs) == [('lamp', centered), ('rd', '-'),
                                     ('rd', centered)]

    summary = bench_quality.summarize({0: ledger['seeds']['0']},
                                      ['rd', 'lamp'], centered)
    rows = {r['method']: r['finetuned_3D'] for r in summary['rows']}
    assert rows == {
        'rd': pytest.approx(69.5),
        'rd (DecodedDistortion)': pytest.approx(68.0),
        'lamp': pytest.approx(69.2)
    }
