"""Models LU-Net is compared with."""

from lunet.baselines.realnvp import RealNVP

__all__ = ["RealNVP"]
