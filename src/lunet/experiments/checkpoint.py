"""Checkpoint files: atomic writes, safe loads, a checksum of their contents, model reconstruction.

A checkpoint is a dict of tensors, plain containers, numbers and strings. It
is read with ``torch.load(weights_only=True)``, so a file that holds any other
Python object is refused before anything in it runs. Every checkpoint carries
a SHA-256 of its contents; a file whose contents no longer match (a flipped
byte on disk) is reported as corrupt instead of being used.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
from torch import nn

from lunet.flow import LUNet

FORMAT_VERSION = 2
# Format 1 (no checksum) is still read; its contents cannot be verified.
READABLE_FORMATS = (1, 2)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its spec ``{"name": ..., **kwargs}``."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name == "lunet":
        return LUNet(**spec)
    if name == "realnvp":
        from lunet.baselines.realnvp import RealNVP  # optional heavy baseline

        if "num_blocks" in spec:  # the name in checkpoints written before it became num_res_blocks
            spec["num_res_blocks"] = spec.pop("num_blocks")
        return RealNVP(**spec)
    raise ValueError(f"unknown model name {name!r} in model spec; expected 'lunet' or 'realnvp'")


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's elements, in row-major order, on the CPU."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _digest(obj: Any, h: "hashlib._Hash") -> None:
    """Feed ``obj`` (tensors, containers, scalars, strings) into ``h`` in a fixed order."""
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(tensor_bytes(obj))
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _digest(item, h)
    else:
        h.update(f"S{obj!r}".encode())


def checksum(contents: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's contents, its ``"checksum"`` entry left out."""
    h = hashlib.sha256()
    _digest({k: v for k, v in contents.items() if k != "checksum"}, h)
    return h.hexdigest()


def _default_file_mode() -> int:
    """The permissions a new file gets under this process's umask (as ``open`` gives)."""
    try:  # Linux reports the umask without changing it (os.umask would, for every thread)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``; returns ``path``.

    Parent folders are created. The file gets the permissions of any other new
    file (the temporary file would otherwise keep ``mkstemp``'s owner-only mode).
    A failed or interrupted write leaves the old file in place and removes its
    temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` with :func:`write_atomic`."""
    write_atomic(path, lambda f: torch.save(obj, f))


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files that an interrupted :func:`save_atomic` of ``path`` left behind
    (a process killed mid-save cannot remove its own)."""
    path = Path(path)
    return sorted(path.parent.glob(path.name + ".*.tmp"))


def save_checkpoint(contents: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint atomically with its format version and checksum."""
    contents = {**contents, "format": FORMAT_VERSION}
    contents["checksum"] = checksum(contents)
    save_atomic(contents, path)


def first_sentence(exc: BaseException) -> str:
    """The first sentence of an error message, short enough for a one-line report."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.split(r"(?<=[.?!])\s", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= 120 else text[:117] + "..."


def error_line(exc: BaseException) -> str:
    """``Type: first sentence`` of an error, for the one line that reports a failure worked around."""
    return f"{type(exc).__name__}: {first_sentence(exc)}" if str(exc).strip() else type(exc).__name__


def load_weights_only(path: str | os.PathLike, kind: str, rule: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a one-line ``ValueError`` naming ``path``
    for a file that would run code (``rule`` says what such a file should hold instead) and for one
    that is not a readable PyTorch file (``kind`` names what it should be)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:  # the file names a Python callable or class to import
            raise ValueError(
                f"{path} holds a Python object ({found.group(1)}) besides tensors, numbers, strings and plain "
                f"containers; loading it could run code from the file, so it is refused; {rule}"
            ) from None
        raise ValueError(f"{path} could not be read as a {kind}: it is corrupt or not a PyTorch file") from None
    except Exception as exc:  # torch raises several types for damaged files
        raise ValueError(f"{path} could not be read as a {kind}: it is corrupt ({first_sentence(exc)})") from None


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint written by lunet; ``ValueError`` naming the problem when it is not one.

    No code in the file runs: only tensors, plain containers, numbers and strings are read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = load_weights_only(path, "lunet checkpoint", "lunet checkpoints never hold one")
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS or "model_spec" not in ckpt:
        raise ValueError(f"{path} is not a lunet checkpoint (format {FORMAT_VERSION})")
    if ckpt["format"] >= 2 and ckpt.get("checksum") != checksum(ckpt):
        raise ValueError(
            f"checkpoint {path} is corrupt: its contents do not match the checksum written with them "
            f"(the file changed on disk after it was saved)"
        )
    return ckpt


def load_model(path: str | os.PathLike, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Model and checkpoint dict from a checkpoint file or a ``lunet export`` file; ``which`` =
    "best" or "last" weights (an exported file holds the best only). An export of a per-class
    run gives a :class:`~lunet.ClassConditionalFlow`, one flow per class."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    ckpt = load_checkpoint(path)
    if ckpt.get("class_models") is not None:
        from lunet.flow import ClassConditionalFlow

        flows = [_built(path, ckpt["model_spec"], state) for state in ckpt["class_models"]]
        return ClassConditionalFlow(flows), ckpt
    state = ckpt["best_model"] if which == "best" and ckpt.get("best_model") is not None else ckpt["model"]
    return _built(path, ckpt["model_spec"], state), ckpt


def _built(path: str | os.PathLike, spec: dict[str, Any], state: dict[str, Any]) -> nn.Module:
    """The model of ``spec`` with the weights ``state`` (in float64 if they all are); ``ValueError``
    naming ``path`` if they do not fit."""
    try:
        model = build_model(spec)
    except TypeError as exc:
        raise ValueError(f"checkpoint {path} holds a model spec this version cannot build: {exc}") from None
    # the run's precision: load_state_dict would cast float64 weights into the float32 model quietly
    floating = [t.dtype for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if floating and all(d == torch.float64 for d in floating):
        model = model.to(torch.float64)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ValueError(f"checkpoint {path} does not match its model spec {spec}: {detail}") from None
    return model
