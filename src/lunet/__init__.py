"""lunet: LU-Net, invertible neural networks and normalizing flows from LU factorisation."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Where each public name lives. They are imported on first use, so that importing a
# submodule that needs no torch (the command line's parser) does not load torch.
_EXPORTS = {
    "LULinear": "lunet.layers",
    "LeakySoftplus": "lunet.layers",
    "LUNet": "lunet.flow",
    "Sequential": "lunet.transforms",
    "Inverse": "lunet.transforms",
    "Standardize": "lunet.standardize",
    "Transform": "lunet.base",
    "Composition": "lunet.transforms",
    "MonotoneSpline": "lunet.spline",
    "FrozenLUNet": "lunet.frozen",
    "FlowDistribution": "lunet.distributions",
    "TorchTransform": "lunet.distributions",
    "ClassConditionalFlow": "lunet.flow",
    "ConditionalLUNet": "lunet.conditional",
    "ConditionalFlowDistribution": "lunet.conditional_density",
    "FrozenConditionalLUNet": "lunet.frozen_conditional",
    "standard_normal_log_prob": "lunet.latent",
    "set_value_checks": "lunet.checks",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and editors: re-exports, listed in __all__ (built from _EXPORTS)
    from lunet.base import Transform  # noqa: F401
    from lunet.checks import set_value_checks  # noqa: F401
    from lunet.conditional import ConditionalLUNet  # noqa: F401
    from lunet.conditional_density import ConditionalFlowDistribution  # noqa: F401
    from lunet.distributions import FlowDistribution, TorchTransform  # noqa: F401
    from lunet.flow import ClassConditionalFlow, LUNet  # noqa: F401
    from lunet.frozen import FrozenLUNet  # noqa: F401
    from lunet.frozen_conditional import FrozenConditionalLUNet  # noqa: F401
    from lunet.latent import standard_normal_log_prob  # noqa: F401
    from lunet.layers import LeakySoftplus, LULinear  # noqa: F401
    from lunet.spline import MonotoneSpline  # noqa: F401
    from lunet.standardize import Standardize  # noqa: F401
    from lunet.transforms import Composition, Inverse, Sequential  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lunet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
