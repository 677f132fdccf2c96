"""Models LU-Net is compared with."""

from lunet.baselines.gaussian import FullCovarianceGaussian
from lunet.baselines.realnvp import RealNVP

__all__ = ["FullCovarianceGaussian", "RealNVP"]
