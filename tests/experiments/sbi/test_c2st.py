"""The classifier two-sample test of the SBI benchmark (lunet.experiments.sbi.c2st) on known cases."""

import pytest
import torch

from lunet.experiments.sbi.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_c2st_known_cases_and_reference_self_check():
    pytest.importorskip("sklearn")
    from lunet.experiments.sbi.c2st import c2st

    a = torch.randn(1000, 2, generator=_gen(1))
    b = torch.randn(1000, 2, generator=_gen(2))
    assert abs(c2st(a, b) - 0.5) < 0.05
    # disjoint: the benchmark's classifier is always right; stopped early, it may stop a hair short
    assert c2st(a[:500], b[:500] + 10.0, early_stopping=False) == 1.0
    assert c2st(a, b + 10.0) > 0.99
    # two independent draws of a reference posterior cannot be told apart
    tm = get_task("two_moons")
    _, x = tm.observations(1)
    first, second = tm.reference_posterior(x[0], 1000, _gen(3)), tm.reference_posterior(x[0], 1000, _gen(4))
    assert abs(c2st(first, second) - 0.5) < 0.05
    with pytest.raises(ValueError, match="width"):
        c2st(a, torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        c2st(a[0], b)
