"""Limits and checks of plain numbers, importable without torch: the command line states and checks them
before it loads torch, so that its help answers at once."""

from __future__ import annotations

__all__ = ["ALPHA_MIN", "check_positive_int"]

# The slopes a of the leaky softplus whose inverse is exact in every float dtype:
# ALPHA_MIN <= a < 1 (lunet.functional explains the floor).
ALPHA_MIN = 1e-4


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int, raising ``ValueError`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
