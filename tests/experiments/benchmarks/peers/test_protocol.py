"""The peers benchmark's protocol (lunet.experiments.benchmarks.peers.protocol): its settings' checks."""

import pytest

from lunet.experiments.benchmarks.peers import Protocol

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        Protocol(schedule="linear")
