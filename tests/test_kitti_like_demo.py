"""The main job (tools/demo.py, :mod:`rdprune_mm.demo`) and the baselines
benchmark on a tiny simulated dataset: the small SECOND trains, is RD-pruned
and fine-tuned with its masks held, the report holds every class, a second
run reuses every step, and the benchmark gives every method at every budget
within it."""
import importlib.util
import json
import os
import os.path as osp
import pickle
import re
import sys

import pytest
import torch
from conftest import REPO, load_tool
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.fileio import load
from mmengine.registry import init_default_scope

import rdprune_mm.demo as demo
import rdprune_mm.demo.steps as steps
from rdprune_mm import PruningInputError
from rdprune_mm.apis import read_checkpoint
from rdprune_mm.demo.model_store import ModelStore
from rdprune_mm.demo.report import format_ap
from rdprune_mm.mim import resolve_config

# Two layers of the detector, 2 levels: a few calibration passes.
TARGETS = 'pruner.targets.include=[backbone.blocks.1.0$,bbox_head.conv_reg]'
# the options the demo and the benchmark share
SHARED = [
    '--num-train', '2', '--num-val', '2', '--epochs', '1',
    '--finetune-epochs', '1',
    '--train-options', 'train_dataloader.batch_size=2',
    '--prune-options', 'pruner.num_levels=3', 'calibration.num_samples=1',
    'train_dataloader.batch_size=2', TARGETS
]
TINY = ['--latency-frames', '1', *SHARED]


def load_bench():
    name = 'rdprune_mm_bench_baselines'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, osp.join(REPO, 'benchmarks', 'bench_baselines.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


@pytest.fixture(scope='module')
def demo_cli():
    """``tools/demo.py``: its ``main`` runs :func:`rdprune_mm.demo.run`."""
    return load_tool('demo')


@pytest.fixture(scope='module')
def first_run(demo_cli, tmp_path_factory):
    """The demo on 2 + 2 frames: 1 training iteration, 1 fine-tuning
    iteration, 2 pruned layers."""
    root = tmp_path_factory.mktemp('kitti_like')
    os.chdir(REPO)
    argv = ['--data-root', str(root / 'data'), '--work-dir',
            str(root / 'work'), *TINY]
    assert demo_cli.main(argv) == 0
    with open(root / 'work' / 'results.json') as f:
        results = json.load(f)
    return argv, root / 'work', results


def test_config_trains_on_the_data_root_it_is_given(tmp_path):
    """Every path of the configs moves to the data root given (datasets,
    the database sampler of ObjectSample, the metric's infos)."""
    for config in (demo.TRAIN_CONFIG, demo.PRUNE_CONFIG):
        options = demo.data_root_options(config, str(tmp_path / 'd'))
        cfg = Config.fromfile(resolve_config(config))
        cfg.merge_from_dict(options)
        used = {k: v for k, v in cfg.to_dict().items()
                if not k.startswith('_')}  # helper variables are not used
        assert 'data/kitti_like' not in json.dumps(used, default=str)
        assert cfg.train_dataloader.dataset.data_root == f'{tmp_path}/d/'
        sampler = cfg.train_dataloader.dataset.pipeline[2].db_sampler
        assert sampler.info_path == f'{tmp_path}/d/kitti_dbinfos_train.pkl'
        assert cfg.test_evaluator.ann_file == \
            f'{tmp_path}/d/kitti_infos_val.pkl'
    assert demo.data_root_options(demo.TRAIN_CONFIG, 'data/kitti_like') == {}


def test_demo_trains_prunes_and_reports_every_class(first_run):
    _, work, results = first_run
    # the dense model was trained by the Runner: 1 epoch of 2 frames
    assert results['train']['epochs'] == 1
    assert results['train']['iterations'] == 1
    assert osp.isfile(results['train']['checkpoint'])
    # pruned within the FLOPs budget, FLOPs measured before and after
    prune = results['prune']
    assert prune['budget']['unit'] == 'flops'
    assert prune['budget']['achieved'] <= prune['budget']['asked'] + 1e-9
    assert prune['totals']['flops_after'] < prune['totals']['flops_before']
    assert results['params']['pruned']['nonzero'] < \
        results['params']['dense']['nonzero']
    with open(work / 'results.md') as f:
        table = f.read()
    for name in ('Car', 'Pedestrian', 'Cyclist'):
        for kind in ('3D', 'BEV'):
            assert re.search(
                rf'\| {name} AP {kind} \(moderate, AP40\) \|'
                r'( [0-9.]+ \|){3}', table), (name, kind)
    assert re.search(r'\| mAP 3D \(moderate, AP40\) \|( [0-9.]+ \|){3}',
                     table)
    assert re.search(r'\| CPU latency per frame.*\|( \d+ ms \|){3}', table)
    assert 'FLOPs of the prunable layers' in table
    # KittiMetric ran on each of the three models
    for name in ('eval_dense', 'eval_oneshot', 'eval_pruned'):
        assert any(
            k.endswith('KITTI/Car_3D_AP40_moderate_strict')
            for k in results[name]['metrics'])


def test_reported_ap_is_kittimetric_on_the_saved_predictions(first_run):
    """results.json and results.md hold what mmdet3d's KittiMetric, run
    again offline on each model's saved predictions, computes."""
    argv, work, results = first_run
    data_root = argv[argv.index('--data-root') + 1]
    cfg = Config.fromfile(resolve_config(demo.TRAIN_CONFIG))
    cfg.merge_from_dict(demo.data_root_options(demo.TRAIN_CONFIG, data_root))
    init_default_scope('mmdet3d')
    with open(work / 'results.md') as f:
        table = f.read()
    for column, name in enumerate(('eval_dense', 'eval_oneshot',
                                   'eval_pruned')):
        record = results[name]
        evaluator = Evaluator(cfg.test_evaluator)
        evaluator.dataset_meta = dict(classes=demo.CLASSES)
        predictions = load(record['predictions'])
        assert len(predictions) == 2  # the 2 val frames
        metrics = evaluator.offline_evaluate(predictions)
        assert metrics.keys() == record['metrics'].keys()
        for key, value in metrics.items():
            assert record['metrics'][key] == pytest.approx(float(value))
        ap = steps.kitti_ap(metrics)
        assert record['ap'] == json.loads(json.dumps(ap))
        for cls in demo.CLASSES:
            row = re.search(
                rf'\| {cls} AP 3D \(moderate, AP40\) \|(.*)\|', table)
            cells = [c.strip() for c in row.group(1).split('|')]
            assert cells[column] == format_ap(ap[cls]['3D'])


def test_finetuned_checkpoint_keeps_the_one_shot_masks(first_run):
    _, work, results = first_run
    tuned = read_checkpoint(results['finetune']['checkpoint'])
    one_shot = read_checkpoint(results['prune']['checkpoint'])['state_dict']
    dense = read_checkpoint(results['train']['checkpoint'])['state_dict']
    masks = tuned['rdprune_mm']['masks']
    assert sorted(masks) == ['backbone.blocks.1.0', 'bbox_head.conv_reg']
    changed = 0
    for name, mask in masks.items():
        weight = tuned['state_dict'][f'{name}.weight']
        assert (~mask).any()
        assert torch.all(weight[~mask] == 0), name
        # the masks are the one-shot pruning's
        assert torch.equal(one_shot[f'{name}.weight'] != 0, mask)
        changed += int((weight[mask] != dense[f'{name}.weight'][mask]).sum())
    assert changed > 0  # fine-tuning moved the kept weights
    assert results['finetune']['masks']['same_as_one_shot'] is True


def test_second_run_reuses_data_model_and_results(demo_cli, first_run,
                                                  monkeypatch):

    def fail(*args, **kwargs):
        raise AssertionError('a finished step ran again')

    # where Job and make_data look the steps up
    for name in ('train', 'evaluate', 'prune', 'finetune',
                 'create_kitti_infos'):
        monkeypatch.setattr(steps, name, fail)
    argv, work, results = first_run
    assert demo_cli.main(argv) == 0
    with open(work / 'results.json') as f:
        again = json.load(f)
    assert again['eval_pruned']['ap'] == results['eval_pruned']['ap']
    assert again['train']['checkpoint'] == results['train']['checkpoint']
    # the stubs are what the job calls: without its record, a step runs
    # again and fails
    record = work / 'eval_dense' / demo.DONE_FILE
    hidden = work / 'eval_dense' / 'hidden.json'
    os.replace(record, hidden)
    try:
        with pytest.raises(AssertionError, match='ran again'):
            demo_cli.main(argv)
    finally:
        os.replace(hidden, record)


def test_a_model_kept_in_a_store_is_reused_by_a_fresh_work_dir(
        first_run, monkeypatch, tmp_path):
    """The store keeps the trained weights only; a new work dir with the
    same settings and data restores them instead of training, and other
    settings or damaged weights are refused with the reason logged."""
    argv, work, results = first_run
    messages = []
    store = ModelStore(str(tmp_path / 'store'), messages.append)

    def job(work_dir, *extra):
        args = demo.parse_args(argv + ['--work-dir', str(work_dir), *extra])
        return demo.Job(args, messages.append, store, 'tiny')

    # the first run's model, trained without a store, is kept on reuse
    job(work).dense()
    trained = torch.load(results['train']['checkpoint'], weights_only=False)
    kept = torch.load(tmp_path / 'store' / 'tiny.pth', weights_only=False)
    assert set(kept) == {'meta', 'state_dict'}
    assert 'optimizer' in trained
    assert kept['state_dict'].keys() == trained['state_dict'].keys()
    for name, tensor in trained['state_dict'].items():
        assert torch.equal(kept['state_dict'][name], tensor), name

    def fail(*args, **kwargs):
        raise AssertionError('trained again')

    monkeypatch.setattr(steps, 'train', fail)
    record = job(tmp_path / 'fresh').dense()
    assert record['restored_from'] == str(tmp_path / 'store' / 'tiny.pth')
    assert osp.dirname(record['checkpoint']) == str(tmp_path / 'fresh' /
                                                    'dense')
    restored = torch.load(record['checkpoint'], weights_only=False)
    for name, tensor in trained['state_dict'].items():
        assert torch.equal(restored['state_dict'][name], tensor), name
    assert record['seconds'] == results['train']['seconds']

    with pytest.raises(AssertionError, match='trained again'):
        job(tmp_path / 'longer', '--epochs', '2').dense()
    assert any('other settings (changed: config_digest' in m for m in messages)

    with open(tmp_path / 'store' / 'tiny.pth', 'r+b') as f:
        f.seek(-8, os.SEEK_END)
        f.write(b'\0' * 8)
    with pytest.raises(AssertionError, match='trained again'):
        job(tmp_path / 'damaged').dense()
    assert any('does not match its digest' in m for m in messages)


def test_a_larger_val_set_is_evaluated_beside_the_training_data(
        first_run, monkeypatch, tmp_path):
    """``--eval-num-val`` simulates a second data root whose first val
    frames are the training root's (same files, same ground truth): the
    trained model is reused, and the evaluation on the small set is
    kept."""
    argv, work, results = first_run
    data_root = argv[argv.index('--data-root') + 1]

    def fail(*args, **kwargs):
        raise AssertionError('trained again')

    monkeypatch.setattr(steps, 'train', fail)
    messages = []
    args = demo.parse_args(argv + ['--eval-num-val', '3'])
    job = demo.Job(args, messages.append)
    job.data()
    dense = job.dense()
    record = job.evaluation(str(work / 'eval_dense'), 'the dense model',
                            dense['checkpoint'], dense['checkpoint_digest'],
                            'eval_dense')
    eval_root = f'{data_root}_val3'
    assert job.eval_ann_file == f'{eval_root}/kitti_infos_val.pkl'
    assert osp.dirname(record['predictions']) == f'{work}/eval_dense_val3'
    for name in ('000002', '000003'):  # the training root's val frames
        for folder in ('velodyne', 'label_2'):
            ext = 'bin' if folder == 'velodyne' else 'txt'
            with open(f'{data_root}/training/{folder}/{name}.{ext}',
                      'rb') as small, open(
                          f'{eval_root}/training/{folder}/{name}.{ext}',
                          'rb') as large:
                assert small.read() == large.read()

    # KittiMetric's ground truth: the small set's frames lead the large one
    small_infos = load(f'{data_root}/kitti_infos_val.pkl')['data_list']
    large_infos = load(job.eval_ann_file)['data_list']
    assert len(small_infos) == 2 and len(large_infos) == 3
    assert large_infos[:2] == small_infos
    with open(record['predictions'], 'rb') as f:
        assert len(pickle.load(f)) == 3
    # the evaluation on the training root's val frames is still there
    again = demo.Job(demo.parse_args(argv), messages.append)
    again.data()
    again.dense()
    kept = again.evaluation(str(work / 'eval_dense'), 'the dense model',
                            dense['checkpoint'], dense['checkpoint_digest'],
                            'eval_dense')
    assert kept['predictions'] == results['eval_dense']['predictions']
    assert 'KittiMetric of the dense model: done before, reused' in messages

    with pytest.raises(PruningInputError, match='fewer than the 2 val'):
        demo.Job(demo.parse_args(argv + ['--eval-num-val', '1']), print)


def test_changed_training_settings_stop_with_a_clear_error(demo_cli,
                                                           first_run, capsys):
    argv, work, _ = first_run
    argv = [a if a != '1' or argv[i - 1] != '--epochs' else '2'
            for i, a in enumerate(argv)]
    assert demo_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert 'dense model made with other settings' in err
    assert '--overwrite' in err
    # nothing was removed
    assert osp.isfile(demo.last_checkpoint(str(work / 'dense')))


def test_step_dir_never_removes_foreign_folders(tmp_path):
    foreign = tmp_path / 'dense'
    foreign.mkdir()
    (foreign / 'model.pth').write_text('x')
    folder = demo.StepDir(str(foreign), dict(a=1))
    with pytest.raises(PruningInputError, match='not written by the demo'):
        folder.prepare(True, 'a dense model')
    folder.clear()
    assert (foreign / 'model.pth').exists()


def test_a_prepared_kitti_folder_is_used_without_simulating(
        first_run, tmp_path):
    """A folder that mmdet3d's converter prepared (the real KITTI) is
    taken as it is; the simulated one goes through the simulator, which
    skips it because its arguments match. More val frames cannot be
    simulated like a prepared folder's."""
    real = tmp_path / 'kitti'
    real.mkdir()
    for split in ('train', 'val'):
        (real / f'kitti_infos_{split}.pkl').write_bytes(b'prepared')
    record = steps.make_data(str(real), 3, 1, 0, log=print)
    assert record['args'] is None
    assert sorted(os.listdir(real)) == [
        'kitti_infos_train.pkl', 'kitti_infos_val.pkl'
    ]

    argv = first_run[0]
    root_at = argv.index('--data-root') + 1
    argv = argv[:root_at] + [str(real)] + argv[root_at + 1:]
    with pytest.raises(PruningInputError, match='not simulated here'):
        demo.Job(demo.parse_args(argv + ['--eval-num-val', '5']), print).data()
    assert sorted(os.listdir(tmp_path)) == ['kitti']  # no kitti_val5

    simulated = first_run[2]['data']
    assert not steps.is_prepared_kitti(simulated['root'])
    again = steps.make_data(simulated['root'], 2, 2, 0, log=print)
    assert simulated['args'] is not None
    assert again['args'] == simulated['args']


def test_benchmark_runs_every_method_within_every_budget(
        first_run, monkeypatch, tmp_path):
    """Stubs replace KittiMetric and fine-tuning (tested above); pruning,
    budgets, the shared RD curves, the table, plot and JSON are real."""
    bench = load_bench()
    argv, work, _ = first_run
    data_root = argv[argv.index('--data-root') + 1]
    fake_ap = {c: {'3D': 1.0, 'BEV': 2.0}
               for c in demo.CLASSES + ('Overall', )}

    def fake_evaluate(config,
                      options,
                      checkpoint,
                      work_dir,
                      name,
                      structure=None):
        return dict(metrics={}, ap=fake_ap, seconds=0.0)

    def fake_finetune(config, checkpoint, work_dir, options):
        pruned = osp.join(work_dir, 'pruned.pth')
        return dict(checkpoint=pruned, checkpoint_digest='x',
                    masks=dict(layers=2, pruned_weights=1,
                               nonzero_pruned_weights=0,
                               same_as_one_shot=True), seconds=0.0)

    measured = []
    import rdprune_mm.pipeline.stages as stages
    original = stages.measure_curves

    def counting(units, measure, cache, *args, **kwargs):
        measured.append(sum(u.name not in cache for u in units))
        return original(units, measure, cache, *args, **kwargs)

    monkeypatch.setattr(steps, 'evaluate', fake_evaluate)
    monkeypatch.setattr(steps, 'finetune', fake_finetune)
    monkeypatch.setattr(stages, 'measure_curves', counting)
    out = tmp_path / 'bench'
    bench_argv = [
        '--data-root', data_root, '--work-dir', str(work), '--out-dir',
        str(out), '--budgets', '0.5', '0.25', *SHARED
    ]
    assert bench.main(bench_argv) == 0
    with open(out / 'results.json') as f:
        results = json.load(f)
    runs = {(r['method'], r['budget']): r for r in results['runs']}
    assert set(runs) == {(m, b) for m in bench.METHODS for b in (0.5, 0.25)}
    for (method, budget), run in runs.items():
        assert run['budget_by'] == 'flops'
        assert 0 < run['achieved'] <= budget + 1e-9, (method, budget)
        assert run['distortion'] > 0
    # the RD curves came from the demo's cache: no layer measured again
    assert measured == [0, 0]
    with open(out / 'results.md') as f:
        table = f.read()
    for method in bench.METHODS:
        assert len(re.findall(rf'\| {re.escape(bench.label(method))} \|',
                              table)) == 2
    assert (out / 'results.png').stat().st_size > 10_000
    env = results['environment']
    assert env['cpu_count'] >= 1 and env['versions']['mmdet3d']
    assert results['seeds']['data'] == 0
    assert results['seeds']['training'] == results['seeds']['finetuning'] == 0
    # a rerun reuses every finished run
    monkeypatch.setattr(
        steps, 'prune',
        lambda *a, **k: (_ for _ in ()).throw(AssertionError('pruned again')))
    assert bench.main(bench_argv) == 0


def test_rd_iter_prunes_in_two_rounds_within_the_finetuning():
    bench = load_bench()
    options = bench.method_options('rd-iter', 0.25, 'flops', 4)
    assert options['pruner.type'] == 'RDWeightPruner'
    assert options['prune_schedule'] == dict(
        by_epoch=True,
        rounds=[dict(at=0, budget=0.5),
                dict(at=2, budget=0.25)])
    with pytest.raises(PruningInputError, match='--finetune-epochs 2'):
        bench.method_options('rd-iter', 0.25, 'flops', 1)


@pytest.mark.parametrize('method, base', [('rd-refit', 'rd'),
                                          ('lamp-refit', 'lamp')])
def test_refit_methods_are_their_base_with_the_refit_on(method, base):
    bench = load_bench()
    options = bench.method_options(method, 0.25, 'flops', 2)
    expected = bench.method_options(base, 0.25, 'flops', 2)
    assert 'pruner.compensate.reconstruct' not in expected
    refit = {
        'pruner.compensate.reconstruct': True,
        'pruner.compensate.num_samples': bench.REFIT_FRAMES
    }
    if base == 'rd':  # RD's curves count the refit
        refit['pruner.compensate.curves'] = True
    assert options == dict(expected, **refit)


def test_channel_benchmark_evaluates_and_times_the_slim_models(
        first_run, monkeypatch, tmp_path):
    """The channel methods prune within the budget, and the evaluations and
    the timing get the slim checkpoint with its own structure (stubs replace
    KittiMetric and fine-tuning)."""
    bench = load_bench()
    argv, work, _ = first_run
    data_root = argv[argv.index('--data-root') + 1]
    fake_ap = {
        c: {
            '3D': 1.0,
            'BEV': 2.0
        }
        for c in demo.CLASSES + ('Overall', )
    }
    evaluated = []

    def fake_evaluate(config,
                      options,
                      checkpoint,
                      work_dir,
                      name,
                      structure=None):
        evaluated.append((checkpoint, structure))
        return dict(metrics={}, ap=fake_ap, seconds=0.0)

    def fake_finetune(config, checkpoint, work_dir, options):
        slim = osp.join(work_dir, 'slim.pth')
        return dict(checkpoint=slim,
                    checkpoint_digest='x',
                    structure=dict(groups=1,
                                   channels=1,
                                   kept_channels=1,
                                   same_as_one_shot=True),
                    seconds=0.0)

    monkeypatch.setattr(steps, 'evaluate', fake_evaluate)
    monkeypatch.setattr(steps, 'finetune', fake_finetune)
    out = tmp_path / 'bench'
    # RD curves, one share for all groups, one threshold on Fisher scores
    methods = ['rd-channel', 'uniform-channel', 'taylor-channel']
    shared = [
        a if a != TARGETS else 'pruner.targets.include=[backbone.blocks.1.0$]'
        for a in SHARED
    ]
    assert bench.main([
        '--data-root', data_root, '--work-dir',
        str(work), '--out-dir',
        str(out), '--budgets', '0.5', '--latency-frames', '1', '--methods',
        *methods, *shared
    ]) == 0
    with open(out / 'results.json') as f:
        runs = {r['method']: r for r in json.load(f)['runs']}
    assert set(runs) == set(methods)
    for method, run in runs.items():
        assert 0 < run['achieved'] <= 0.5 + 1e-9, method
        assert run['latency']['speedup'] > 0
    assert len(evaluated) == 2 * len(runs)
    for checkpoint, structure in evaluated:
        assert osp.basename(checkpoint) == 'slim.pth' and structure
        state = read_checkpoint(checkpoint)['state_dict']
        with open(structure) as f:
            groups = json.load(f)['groups']
        assert groups, 'the budget pruned no channel'
        for name, group in groups.items():
            assert state[f'{name}.weight'].shape[0] == len(group['keep'])
    with open(out / 'results.md') as f:
        speedups = re.findall(r'\| \d+\.\d\dx \|$', f.read(), re.M)
    assert len(speedups) == len(runs)
