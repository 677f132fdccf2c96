"""What a model will cost in memory, known from its spec before anything is built.

An LU-Net of width D and B blocks holds, per block, an LU matrix of D × D
and two masks of the same size, and per activation its slope or the tables of a
spline (3 bins − 1 numbers per feature), so its size follows from the spec alone. A
spec whose model would not fit in the memory of the machine (or of the GPU it
trains on) is refused with both figures before a single weight is allocated,
instead of the process being killed halfway through the allocation.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lunet.experiments.config.machine import gigabytes, machine_memory
from lunet.experiments.config.models import build_model
from lunet.limits import check_positive_int

__all__ = ["TRAINING_FACTOR", "INFERENCE_FACTOR", "model_elements", "describe_model", "check_model_memory"]

# Bytes in use per byte of a model's own weights and buffers, measured on LU-Nets of width
# 2,000 to 2,500. Training adds the gradients, Adam's two moments, the best weights' copy
# and the factors the forward pass keeps for the backward one (10 to 11.5 matrices per
# block against the model's 3); inference adds the checkpoint's tensors and a frozen flow's
# float64 products and inverses (12 to 16.5 float32 matrices per block).
TRAINING_FACTOR = 4
INFERENCE_FACTOR = 5


def _memory_of(device: str | torch.device) -> tuple[Optional[int], str]:
    """The memory a model on ``device`` lives in, in bytes (None: unknown), and its name for messages."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_properties(index).total_memory, f"GPU {device}"
    return machine_memory(), "this machine"


def model_elements(spec: dict[str, Any]) -> int:
    """How many numbers the model of ``spec`` holds in its parameters and buffers, found without
    allocating any: for an LU-Net from its width and depth, for other models from a build on
    PyTorch's "meta" device, which records shapes only. ``ValueError`` for a spec that names no
    valid width or depth."""
    if spec.get("name") == "lunet":
        features = check_positive_int(spec.get("features"), "the model spec's features")
        blocks = check_positive_int(spec.get("num_blocks"), "the model spec's num_blocks")
        # per block the LU matrix, its two masks, the diagonal, its signs and the bias; the standardisation
        elements = blocks * (3 * features * features + 3 * features) + 2 * features
        if spec.get("activation") == "spline":  # per activation and feature: widths, heights, inner slopes
            bins = check_positive_int(spec.get("bins", 8), "the model spec's bins")
            elements += (blocks - 1) * features * (3 * bins - 1)
        elif spec.get("learn_alpha"):
            elements += (blocks - 1) * check_positive_int(spec.get("groups", 1), "the model spec's groups")
        return elements
    with torch.device("meta"):
        model = build_model(spec)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def describe_model(spec: dict[str, Any]) -> str:
    """A model as its messages name it: an LU-Net by its width and depth, any other by its spec."""
    if spec.get("name") == "lunet":
        return f"an LU-Net of width {spec['features']:,} with {spec['num_blocks']:,} blocks"
    return f"the model {spec}"


def check_model_memory(spec: dict[str, Any], dtype: torch.dtype, training: bool,
                       device: str | torch.device = "cpu", subject: Optional[str] = None) -> int:
    """Return the bytes the model of ``spec`` needs (in ``dtype``) to train or, without
    ``training``, to load and run; ``ValueError`` giving that figure and the memory of
    ``device`` when it needs more than there is. ``subject`` names the model in the message."""
    need = model_elements(spec) * dtype.itemsize * (TRAINING_FACTOR if training else INFERENCE_FACTOR)
    have, where = _memory_of(device)
    if have is not None and need > have:
        what = subject or describe_model(spec)
        raise ValueError(
            f"{what} needs about {gigabytes(need)} of memory to {'train' if training else 'load and run'} "
            f"in {str(dtype).removeprefix('torch.')}, more than the {gigabytes(have)} {where} has"
        )
    return need
