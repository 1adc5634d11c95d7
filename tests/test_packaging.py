"""rdprune_mm installed as an OpenMMLab package: its configs ship inside it
(``rdprune_mm/.mim/configs``, in the wheel too), ``'rdprune_mm::<path>'``
resolves from a config in any folder, and the ``rdprune-mm prune`` console
command prunes such a config from outside the repository."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import LIDAR, QUICK_CENTERPOINT, REPO
from mmengine.config import Config

from rdprune_mm import PruningInputError
from rdprune_mm.apis import load_config, prune_detector
from rdprune_mm.mim import CONFIG_DIR, resolve_config

QUICK = 'centerpoint/rd-weight_centerpoint_voxel02-quick_nus.py'
REPO_CONFIGS = osp.join(REPO, 'configs')


def _repo_configs():
    return sorted(
        osp.relpath(osp.join(root, name), REPO_CONFIGS)
        for root, _, names in os.walk(REPO_CONFIGS) for name in names
        if name.endswith('.py'))


def _source_copy(dest, linked):
    """What ``pip wheel .`` sees in a checkout, without its build outputs;
    ``linked``: as after ``pip install -e .`` (``.mim/configs`` a link)."""
    for name in ('setup.py', 'README.md'):
        shutil.copy(osp.join(REPO, name), dest)
    shutil.copytree(REPO_CONFIGS, dest / 'configs')
    shutil.copytree(
        osp.join(REPO, 'rdprune_mm'), dest / 'rdprune_mm',
        ignore=shutil.ignore_patterns('.mim', '__pycache__'))
    if linked:
        os.makedirs(dest / 'rdprune_mm' / '.mim')
        os.symlink(osp.join('..', '..', 'configs'),
                   dest / 'rdprune_mm' / '.mim' / 'configs')


@pytest.mark.parametrize('linked', [False, True], ids=['fresh', 'editable'])
def test_wheel_holds_the_configs(tmp_path, linked):
    source = tmp_path / 'src'
    source.mkdir()
    _source_copy(source, linked)
    subprocess.run([
        sys.executable, '-m', 'pip', 'wheel', '--no-deps',
        '--no-build-isolation', '--no-index', '--disable-pip-version-check',
        '-q', '-w', str(tmp_path / 'dist'), '.'
    ], check=True, cwd=source)
    wheel, = (tmp_path / 'dist').glob('rdprune_mm-*.whl')
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(
            archive.read(n).decode() for n in names
            if n.endswith('.dist-info/entry_points.txt'))
    shipped = sorted(
        n[len('rdprune_mm/.mim/configs/'):] for n in names
        if n.startswith('rdprune_mm/.mim/configs/'))
    assert shipped == _repo_configs()
    assert '_base_/rd_weight_pruning.py' in shipped and QUICK in shipped
    assert 'rdprune_mm/.mim/model-index.yml' in names
    assert 'rdprune-mm = rdprune_mm.cli:main' in entry_points
    # an editable install's link is kept, not replaced by a copy
    assert osp.islink(source / 'rdprune_mm' / '.mim' / 'configs') == linked


def test_every_config_loads_from_the_installed_configs():
    """Their relative ``_base_`` paths hold inside ``.mim/configs``."""
    assert osp.isdir(CONFIG_DIR), 'install rdprune_mm (tools/install.sh)'
    for config in _repo_configs():
        resolved = resolve_config(f'rdprune_mm::{config}')
        assert resolved == osp.join(CONFIG_DIR, config)
        installed = Config.fromfile(resolved, format_python_code=False)
        source = Config.fromfile(
            osp.join(REPO_CONFIGS, config), format_python_code=False)
        assert installed.to_dict() == source.to_dict(), config


def test_a_config_anywhere_inherits_rdprune_mm_configs(tmp_path):
    config = tmp_path / 'pointpillars_rd.py'
    config.write_text(
        "_base_ = ['mmdet3d::pointpillars/pointpillars_hv_secfpn_8xb6-160e_"
        "kitti-3d-car.py', 'rdprune_mm::_base_/rd_weight_pruning.py']\n"
        'pruner = dict(budget=0.3)\n')
    cfg = load_config(str(config))
    assert cfg.pruner.type == 'RDWeightPruner' and cfg.pruner.budget == 0.3
    assert cfg.model.type == 'VoxelNet'


def test_package_config_names(tmp_path):
    cfg = load_config(f'rdprune_mm::{QUICK}')
    assert cfg.to_dict() == Config.fromfile(QUICK_CENTERPOINT).to_dict()
    with pytest.raises(PruningInputError, match='does not exist'):
        load_config('rdprune_mm::centerpoint/nope.py')
    with pytest.raises(PruningInputError, match='cannot be found'):
        load_config('nopkg::centerpoint/nope.py')


def test_overrides_merge_like_cfg_options(tmp_path):
    """Dotted keys and nested dicts, in the order given."""
    cfg = load_config(QUICK_CENTERPOINT, {
        'pruner.budget': 0.4,
        'pruner': dict(num_levels=3, targets=dict(include=['pts_neck'])),
        'calibration.num_samples': 1
    })
    assert cfg.pruner.budget == 0.4 and cfg.pruner.num_levels == 3
    assert cfg.pruner.targets.include == ['pts_neck']
    assert cfg.pruner.type == 'RDWeightPruner'  # merged, not replaced
    (tmp_path / 'allocation.json').write_text('{}')
    with pytest.raises(PruningInputError, match='overwrite'):
        prune_detector(QUICK_CENTERPOINT, work_dir=str(tmp_path),
                       pruner=dict(budget=0.4))


def test_console_command_prunes_a_config_outside_the_repo(tmp_path):
    command = osp.join(osp.dirname(sys.executable), 'rdprune-mm')
    if not osp.isfile(command):
        pytest.skip(f'rdprune-mm is not installed beside {sys.executable}; '
                    'install rdprune_mm with tools/install.sh')
    config = tmp_path / 'my_quick_centerpoint.py'
    config.write_text(
        f"_base_ = ['rdprune_mm::{QUICK}']\n"
        'pruner = dict(budget=0.5, num_levels=3,\n'
        "              targets=dict(include=['pts_neck', "
        "'task_heads.0.reg']))\n"
        f"calibration = dict(dataset=dict(data_root='{LIDAR}/'))\n")
    run = subprocess.run(
        [command, 'prune', config.name, '--device', 'cpu'],
        cwd=tmp_path, capture_output=True, text=True,
        env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert run.returncode == 0, run.stderr[-3000:]
    work_dir = tmp_path / 'work_dirs' / 'my_quick_centerpoint'
    assert (work_dir / 'pruned.pth').is_file()
    with open(work_dir / 'allocation.json') as f:
        report = json.load(f)
    assert report['budget']['asked'] == 0.5
    assert report['budget']['achieved'] <= 0.5
    assert report['totals']['params_after'] < report['totals'][
        'params_before']
