"""Atomic checkpoint files and model reconstruction from them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lunet.flow import LUNet

FORMAT_VERSION = 1


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its spec ``{"name": ..., **kwargs}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name == "lunet":
        return LUNet(**spec)
    if name == "realnvp":
        from lunet.realnvp import RealNVP  # optional heavy baseline

        return RealNVP(**spec)
    raise ValueError(f"unknown model name {name!r} in model spec; expected 'lunet' or 'realnvp'")


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by the trainer, with a clear error when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated files
        raise ValueError(f"checkpoint {path} is unreadable or corrupt: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION or "model_spec" not in ckpt:
        raise ValueError(f"{path} is not a lunet checkpoint (format {FORMAT_VERSION})")
    return ckpt


def load_model(path: str | os.PathLike, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Model and checkpoint dict from a checkpoint file; ``which`` = "best" or "last" weights."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["model_spec"])
    state = ckpt["best_model"] if which == "best" and ckpt.get("best_model") is not None else ckpt["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not match its model spec {ckpt['model_spec']}: {exc}") from exc
    return model, ckpt
