"""lunet: LU-Net, invertible neural networks and normalizing flows from LU factorisation."""

from lunet.flow import ClassConditionalFlow, LUNet, standard_normal_log_prob
from lunet.layers import LeakySoftplus, LULinear

__all__ = ["LULinear", "LeakySoftplus", "LUNet", "ClassConditionalFlow", "standard_normal_log_prob"]
__version__ = "0.1.0"
