"""Model parts that mmdet3d lacks for the benchmark detectors, registered
in mmdet3d's ``MODELS`` on import (not by ``import rdprune_mm``: importing
mmdet3d's models changes ``sys.meta_path`` and the warning filters; configs
list ``rdprune_mm.models`` in ``custom_imports``)."""
from .center_head_no_velocity import CenterHeadNoVelocity

__all__ = ['CenterHeadNoVelocity']
