"""The machine's memory and memory sizes as people read them (lunet.experiments.config.machine)."""

from __future__ import annotations

import os

import pytest

from lunet.experiments.config import machine
from lunet.experiments.config.machine import gigabytes, machine_memory


def test_the_memory_is_the_pages_times_their_size(monkeypatch):
    sizes = {"SC_PHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: sizes[name])
    assert machine_memory() == 4_096_000


@pytest.mark.parametrize("error", [ValueError, OSError, AttributeError])
def test_a_platform_that_does_not_say_gives_none(monkeypatch, error):
    def sysconf(name):
        raise error(name)

    monkeypatch.setattr(machine.os, "sysconf", sysconf)
    assert machine_memory() is None


def test_this_machines_memory_is_a_positive_number_of_bytes_or_none():
    found = machine_memory()
    assert found is None or (isinstance(found, int) and found > 0)


@pytest.mark.parametrize("num_bytes, text", [(51.2e9, "51.2 GB"), (0.8e9, "0.8 GB"), (0, "0.0 GB"),
                                             (1234.56e9, "1,234.6 GB"), (49e6, "0.0 GB")])
def test_sizes_read_in_gigabytes_with_one_decimal(num_bytes, text):
    assert gigabytes(num_bytes) == text
