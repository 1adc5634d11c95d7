"""Registries of rdprune_mm.

Pruners, importance rankings and distortion measures live in registries
of their own; the hooks go into mmdet3d's ``HOOKS`` so that ``type='RDPruneHook'``
resolves in any config whose default scope is ``mmdet3d``.
"""
from mmengine.registry import Registry

PRUNERS = Registry('pruner', scope='rdprune_mm',
                   locations=['rdprune_mm.pruners'])
DISTORTIONS = Registry('distortion', scope='rdprune_mm',
                       locations=['rdprune_mm.distortion',
                                  'rdprune_mm.decoded_distortion'])
IMPORTANCES = Registry('importance', scope='rdprune_mm',
                       locations=['rdprune_mm.pipeline.importance'])
