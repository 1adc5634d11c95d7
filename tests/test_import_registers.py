"""``import rdprune_mm`` registers modules and changes nothing else;
``import rdprune_mm.cpu`` switches CPU support on (checked in clean
interpreters, which the test session's own imports cannot reach); the
tools quiet the known third-party warnings and no other."""
import json
import os
import subprocess
import sys
import warnings

from conftest import REPO

from rdprune_mm.logging_utils import quiet_known_warnings

# Runs in a fresh interpreter: snapshots what enable_cpu_support changes,
# imports the modules named in argv, prints what differs and what is
# registered.
PROBE = r'''
import json, os, sys, warnings
import mmcv.ops
import numba
from spconv.pytorch import ops as spconv_ops

def snapshot():
    state = {'sys.meta_path': list(map(id, sys.meta_path)),
             'warnings.filters': list(map(id, warnings.filters))}
    for name, module in sorted(sys.modules.items()):
        if name.startswith('mmcv.ops') and module is not None:
            for attr, value in vars(module).items():
                state[f'{name}.{attr}'] = id(value)
                if isinstance(value, type):  # autograd forwards, statics
                    for key, member in vars(value).items():
                        state[f'{name}.{attr}.{key}'] = id(member)
    for attr in ('SpconvOps', 'get_current_stream'):
        state[f'spconv.pytorch.ops.{attr}'] = id(getattr(spconv_ops, attr))
    state['NUMBA_NUM_THREADS'] = os.environ.get('NUMBA_NUM_THREADS')
    state['numba.config.NUMBA_NUM_THREADS'] = numba.config.NUMBA_NUM_THREADS
    return state

before = snapshot()
for name in sys.argv[1:]:
    __import__(name)
after = snapshot()
from mmdet3d.registry import HOOKS
from rdprune_mm.registry import PRUNERS
print(json.dumps(dict(
    changed=sorted(k for k in before if before[k] != after.get(k)),
    pruners=sorted(PRUNERS.module_dict),
    hook=HOOKS.get('RDPruneHook').__module__)))
'''


def _probe(*modules):
    env = {k: v for k, v in os.environ.items() if k != 'NUMBA_NUM_THREADS'}
    env.update(OMP_NUM_THREADS='1', PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, '-c', PROBE, *modules],
                          capture_output=True, text=True, cwd=REPO, env=env,
                          check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_import_registers_and_changes_nothing_else():
    result = _probe('rdprune_mm')
    assert result['changed'] == []
    assert {'RDWeightPruner', 'RDChannelPruner',
            'MagnitudeWeightPruner'} <= set(result['pruners'])
    assert result['hook'] == 'rdprune_mm.hooks.rd_prune_hook'


def test_importing_rdprune_mm_cpu_switches_cpu_support_on():
    changed = set(_probe('rdprune_mm', 'rdprune_mm.cpu')['changed'])
    assert {'sys.meta_path', 'spconv.pytorch.ops.SpconvOps',
            'spconv.pytorch.ops.get_current_stream', 'NUMBA_NUM_THREADS',
            'numba.config.NUMBA_NUM_THREADS'} <= changed
    # the ext_module proxies and the dispatchers of CPU_OVERRIDES
    assert 'mmcv.ops.points_in_boxes.ext_module' in changed
    assert 'mmcv.ops.points_in_boxes.points_in_boxes_part' in changed
    assert 'mmcv.ops.furthest_point_sample.FurthestPointSampling.forward' \
        in changed


def _shown(message, module):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        quiet_known_warnings()
        warnings.warn_explicit(message, UserWarning, 'source.py', 1,
                               module=module)
    return len(caught) == 1


def test_known_warnings_are_quiet_and_no_others():
    spconv = 'spconv.pytorch.core'
    sampler = 'mmdet.models.task_modules.samplers.sampling_result'
    indexing = ('Using a non-tuple sequence for multidimensional indexing '
                'is deprecated and will be changed in pytorch 2.9')
    deprecated = 'DeprecationWarning: pos_bboxes is deprecated, please use ' \
        '"pos_priors" instead'
    assert not _shown(indexing, spconv)
    assert not _shown(deprecated, sampler)
    assert _shown(indexing, 'my_module')
    assert _shown(deprecated, 'mmdet.models.dense_heads')
    assert _shown('another warning', spconv)


def test_quiet_known_warnings_adds_each_filter_once():
    with warnings.catch_warnings():
        quiet_known_warnings()
        count = len(warnings.filters)
        quiet_known_warnings()
        assert len(warnings.filters) == count
