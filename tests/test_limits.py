"""Limits and checks of plain numbers (lunet.limits): positive integers checked, and the module importable
without torch (its slopes' floor against the slopes LeakySoftplus accepts: tests/test_functional.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lunet.limits import ALPHA_MIN, check_positive_int


@pytest.mark.parametrize("value", [1, 7, 10**12])
def test_a_positive_integer_is_returned_as_it_is(value):
    assert check_positive_int(value, "features") == value


@pytest.mark.parametrize("value", [0, -3, 2.0, "3", None, True, False])
def test_anything_else_is_refused_naming_the_setting_and_the_value(value):
    with pytest.raises(ValueError, match=f"num_blocks must be a positive integer, got {value!r}"):
        check_positive_int(value, "num_blocks")


def test_the_limits_load_without_torch():
    code = ("import sys\nfrom lunet.limits import ALPHA_MIN, check_positive_int\n"
            "print(ALPHA_MIN, check_positive_int(3, 'x'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [repr(ALPHA_MIN), "3", "False"]

