"""The machine's memory, and memory sizes as people read them; no torch, so that the loads of
:mod:`lunet.experiments.files` can check a file against the machine before torch is imported."""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["machine_memory", "gigabytes"]


def machine_memory() -> Optional[int]:
    """The machine's physical memory in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def gigabytes(num_bytes: float) -> str:
    """``num_bytes`` as people read a memory size: ``51.2 GB``, ``0.8 GB``."""
    return f"{num_bytes / 1e9:,.1f} GB"
