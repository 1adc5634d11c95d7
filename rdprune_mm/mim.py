"""The configs that ship inside the package, as OpenMMLab packages ship theirs.

``setup.py`` puts the repository's ``configs/`` under
``rdprune_mm/.mim/configs`` (a symlink for ``pip install -e .``, a copy in a
wheel), beside an empty ``model-index.yml``. After
:func:`register_config_package`, which importing ``rdprune_mm`` runs, a
config in any folder can inherit them::

    _base_ = ['mmdet3d::centerpoint/<config>.py',
              'rdprune_mm::_base_/rd_weight_pruning.py']

and :func:`resolve_config` turns ``'rdprune_mm::centerpoint/<config>.py'``
into the file's path for the tools.
"""
from __future__ import annotations

import functools
import os.path as osp

from mmengine.config import Config
from mmengine.config import config as mmengine_config
from mmengine.config import utils as mmengine_config_utils
from mmengine.hub import hub as mmengine_hub

from .errors import PruningInputError

PACKAGE = 'rdprune_mm'
#: The installed package's folder; its ``.mim`` holds the configs.
PACKAGE_DIR = osp.dirname(osp.abspath(__file__))
#: Where the configs of this package are installed.
CONFIG_DIR = osp.join(PACKAGE_DIR, '.mim', 'configs')


def _installed_path(original, package: str) -> str:
    if package == PACKAGE:
        return PACKAGE_DIR
    return original(package)


def register_config_package() -> None:
    """Let mmengine resolve ``'rdprune_mm::<path>'`` in ``_base_``.

    mmengine 0.10.7 accepts only the OpenMMLab packages of its
    ``MODULE2PACKAGE`` before ``::``, and finds a package's folder from its
    distribution's location, which for a PEP 660 editable install
    (``pip install -e .``) is site-packages rather than the source folder.
    This adds ``rdprune_mm`` to that table and makes mmengine's config
    parser (and ``mmengine.hub.get_config``) find it where it is imported
    from. Other packages are looked up as before. Running it again changes
    nothing.
    """
    mmengine_config_utils.MODULE2PACKAGE.setdefault(PACKAGE, PACKAGE)
    for module in (mmengine_config, mmengine_hub):
        current = module.get_installed_path
        if not isinstance(current, functools.partial) or \
                current.func is not _installed_path:
            module.get_installed_path = functools.partial(
                _installed_path, current)


def resolve_config(config: str) -> str:
    """The file of a config given as a path or as ``'package::path'``.

    Args:
        config: A path, or ``'<package>::<path>'`` inside the configs that
            an OpenMMLab package (``rdprune_mm``, ``mmdet3d``, ...)
            installs, e.g. ``'rdprune_mm::_base_/rd_weight_pruning.py'``.

    Returns:
        str: ``config`` itself for a path, else the installed file.

    Raises:
        PruningInputError: If the package is unknown or not installed, or
            has no such config.
    """
    if '::' not in config:
        return config
    package, _, path = config.partition('::')
    if package == PACKAGE:
        if not osp.isdir(CONFIG_DIR):
            raise PruningInputError(
                f'config {config}: rdprune_mm\'s configs are not installed '
                f'({CONFIG_DIR} is missing); install rdprune_mm with '
                'pip install -e . or pip install . from its repository')
        resolved = osp.join(CONFIG_DIR, path)
        if not osp.isfile(resolved):
            raise PruningInputError(
                f'config {config} does not exist (no {resolved}); give a '
                'path inside rdprune_mm\'s configs, e.g. '
                'rdprune_mm::centerpoint/'
                'rd-weight_centerpoint_voxel02-quick_nus.py')
        return resolved
    register_config_package()
    try:
        # mmengine's own lookup of _base_ entries (model index, then
        # .mim/configs)
        resolved, _ = Config._get_cfg_path(config, '')
    except (AssertionError, ValueError, FileNotFoundError,
            ModuleNotFoundError) as error:
        raise PruningInputError(
            f'config {config} cannot be found ({error}); give a path or '
            '<package>::<path> inside an installed OpenMMLab package\'s '
            'configs') from None
    return resolved
