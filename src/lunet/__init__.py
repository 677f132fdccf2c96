"""lunet: LU-Net, invertible neural networks and normalizing flows from LU factorisation."""

from lunet.distributions import FlowDistribution, TorchTransform
from lunet.flow import ClassConditionalFlow, LUNet, standard_normal_log_prob
from lunet.frozen import FrozenLUNet
from lunet.layers import LeakySoftplus, LULinear
from lunet.checks import set_value_checks
from lunet.transforms import Inverse, Sequential, Standardize

__all__ = [
    "LULinear",
    "LeakySoftplus",
    "LUNet",
    "Sequential",
    "Inverse",
    "Standardize",
    "FrozenLUNet",
    "FlowDistribution",
    "TorchTransform",
    "ClassConditionalFlow",
    "standard_normal_log_prob",
    "set_value_checks",
]
__version__ = "0.1.0"
