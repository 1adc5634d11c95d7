"""Model parts that mmdet3d lacks for the benchmark detectors (registered
in mmdet3d's ``MODELS`` on import)."""
from .center_head_no_velocity import CenterHeadNoVelocity

__all__ = ['CenterHeadNoVelocity']
