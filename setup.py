import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

REPO = osp.dirname(osp.abspath(__file__))
MIM = osp.join(REPO, 'rdprune_mm', '.mim')
# no model zoo: mmengine reads this index first, then falls back to
# .mim/configs/<path> for 'rdprune_mm::<path>'
MODEL_INDEX = 'Import: []\n'


def readme() -> str:
    with open('README.md', encoding='utf-8') as f:
        return f.read()


def add_mim_extension() -> None:
    """Put ``configs/`` under ``rdprune_mm/.mim`` as OpenMMLab packages do.

    A symlink for an editable install (``pip install -e .``), a copy for a
    wheel (``pip install .``, ``pip wheel .``) so that the wheel holds the
    files. A symlink that is already there is kept for a wheel too: the
    wheel gets the files it points to, and an editable install of the same
    folder keeps seeing the configs as they are edited. From a source
    distribution (no ``configs/`` beside this file) the copy it holds is
    used.
    """
    if {'develop', 'editable_wheel'} & set(sys.argv):
        mode = 'copy' if os.name == 'nt' else 'symlink'
    elif {'bdist_wheel', 'sdist', 'build', 'build_py', 'install'} & set(
            sys.argv):
        mode = 'copy'
    else:
        return
    source = osp.join(REPO, 'configs')
    if not osp.isdir(source):
        return
    os.makedirs(MIM, exist_ok=True)
    with open(osp.join(MIM, 'model-index.yml'), 'w') as f:
        f.write(MODEL_INDEX)
    target = osp.join(MIM, 'configs')
    if mode == 'copy' and osp.islink(target) and \
            osp.realpath(target) == osp.realpath(source):
        return
    if osp.islink(target) or osp.isfile(target):
        os.remove(target)
    elif osp.isdir(target):
        shutil.rmtree(target)
    if mode == 'symlink':
        os.symlink(osp.relpath(source, MIM), target)
    else:
        shutil.copytree(source, target)


add_mim_extension()

setup(
    name='rdprune_mm',
    version='0.1.0',
    description='Rate-distortion optimal pruning of MMDetection3D detectors',
    long_description=readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['rdprune_mm', 'rdprune_mm.*']),
    package_data={
        'rdprune_mm': [
            '.mim/model-index.yml', '.mim/configs/**/*.py',
            '.mim/configs/**/*.md'
        ]
    },
    entry_points={
        'console_scripts': ['rdprune-mm = rdprune_mm.cli:main'],
    },
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.0',
        'numpy',
        'mmengine>=0.10.7,<1.0',
        'mmcv>=2.1.0,<2.2.0',
        'mmdet>=3.3.0,<3.4.0',
        'mmdet3d>=1.4.0,<1.5.0',
        'spconv>=2.3.8',
    ],
    extras_require=dict(tests=['pytest']),
    license='Apache License 2.0',
    zip_safe=False,
)
