"""Model specs: their form, and the model each one builds.

A model spec is the model's name and its constructor's arguments, as a run stores it:
``{"name": "lunet", "features": 784, "num_blocks": 4, ...}``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from lunet.conditional import ConditionalLUNet
from lunet.flow import LUNet

__all__ = ["MODEL_NAMES", "check_spec", "shortened", "short_repr", "build_model"]

# "conditional_lunet": a ConditionalLUNet of p(x | c), whose spec holds context_features and
# num_classes beside the LU-Net's settings (an embedding network has no spec)
MODEL_NAMES = ("lunet", "realnvp", "conditional_lunet")


def check_spec(spec: Any) -> dict[str, Any]:
    """Return ``spec`` if it has the form of a model spec: a dict of names to plain values (numbers,
    strings, booleans, None) whose ``"name"`` is one of :data:`MODEL_NAMES`; ``ValueError`` saying
    what it is otherwise."""
    if not isinstance(spec, dict):
        raise ValueError(f"a model spec is a dict with a 'name' and the model's settings, got a "
                         f"{type(spec).__name__} ({short_repr(spec)})")
    odd = [k for k, v in spec.items()
           if not isinstance(k, str) or not (v is None or isinstance(v, (bool, int, float, str)))]
    if odd:
        raise ValueError(f"the model spec's entry {short_repr(odd[0])} is not a number, a string or a boolean: "
                         f"{short_repr(spec[odd[0]])}")
    if spec.get("name") not in MODEL_NAMES:
        raise ValueError(f"unknown model name {short_repr(spec.get('name'))} in model spec; "
                         f"expected one of {', '.join(map(repr, MODEL_NAMES))}")
    return spec


def shortened(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters, the cut marked: a message that quotes a file's
    contents (or an error that did) stays one readable line, however large the contents."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value: Any, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters: a damaged file's contents in a one-line message."""
    return shortened(repr(value), limit)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its spec ``{"name": ..., **kwargs}``."""
    spec = dict(check_spec(spec))
    name = spec.pop("name")
    from lunet.baselines.realnvp import RealNVP  # optional heavy baseline

    model_class = {"lunet": LUNet, "realnvp": RealNVP, "conditional_lunet": ConditionalLUNet}[name]
    try:
        return model_class(**spec)
    except TypeError as exc:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if unexpected is None:
            raise
        raise ValueError(f"the model spec's {unexpected.group(1)!r} is no setting of {model_class.__name__}") from None
