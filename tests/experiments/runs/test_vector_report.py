"""What a run on own data is measured against (lunet.experiments.runs.vector_report): the Gaussian
baseline's reference and its stored entries, the report on samples against the data's range, and
the line that compares the flow with the Gaussian."""

import math
import re

import numpy as np
import pytest
import torch

from experiments.runs.test_vectors import banana, gaussian_nll_per_dim
from lunet.experiments.runs.vector_report import (
    FAR_RANGES,
    Reference,
    comparison_line,
    describe_samples,
    sample_report,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the Gaussian baseline's reference --------------------------------------------------------


def test_the_reference_nll_is_the_mean_closed_form_nll_per_dimension():
    x, test = banana(60, 1, columns=3), banana(25, 2, columns=3)
    reference = Reference.fit(torch.from_numpy(x))
    assert reference.nll_per_dim(torch.from_numpy(test)) == pytest.approx(gaussian_nll_per_dim(x, test), rel=1e-10)
    assert torch.equal(reference.low, torch.from_numpy(x.min(0))) and torch.equal(reference.high,
                                                                                  torch.from_numpy(x.max(0)))


def test_the_range_is_the_training_rows_and_the_gaussian_that_of_the_rows_given_to_fit():
    train = torch.from_numpy(np.random.default_rng(2).integers(0, 6, (50, 2)).astype(float))
    noisy = train + torch.rand(train.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = Reference.fit(train, noisy)
    assert torch.equal(reference.low, train.min(0).values) and torch.equal(reference.high, train.max(0).values)
    assert torch.allclose(reference.gaussian.mean, noisy.mean(0), rtol=1e-12)
    assert not torch.allclose(reference.gaussian.mean, train.mean(0), rtol=1e-3)


@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_the_gaussian_baseline_does_not_depend_on_the_columns_scales(scale):
    x, test = banana(80, 4, columns=3), banana(30, 5, columns=3)
    base = Reference.fit(torch.from_numpy(x)).nll_per_dim(torch.from_numpy(test))
    factor = np.array([1.0, scale, 1.0])
    scaled = Reference.fit(torch.from_numpy(x * factor)).nll_per_dim(torch.from_numpy(test * factor))
    # y = c x in one of D columns has density p(x) / c: ln c / D more nats per dimension, exactly
    assert scaled - base == pytest.approx(math.log(scale) / 3, abs=1e-9)


def _damage(entries, what):
    if what == "mean of the wrong shape":
        entries["gaussian_mean"] = entries["gaussian_mean"][:-1]
    elif what == "a NaN in the range":
        entries["low"][0] = math.nan
    elif what == "an infinite factor":
        entries["gaussian_scale_tril"][1, 0] = math.inf
    elif what == "a factor that is not triangular":
        entries["gaussian_scale_tril"][0, 2] = 0.5
    elif what == "a non-positive diagonal":
        entries["gaussian_scale_tril"][1, 1] = -1.0
    elif what == "a low above its high":
        entries["low"][2] = entries["high"][2] + 1.0
    elif what == "a list, not a tensor":
        entries["high"] = entries["high"].tolist()
    elif what == "integers":
        entries["gaussian_mean"] = entries["gaussian_mean"].long()
    elif what == "a key missing":
        del entries["low"]
    elif what == "not a mapping":
        entries = list(entries.values())
    return entries


DAMAGES = ["mean of the wrong shape", "a NaN in the range", "an infinite factor", "a factor that is not triangular",
           "a non-positive diagonal", "a low above its high", "a list, not a tensor", "integers", "a key missing",
           "not a mapping"]


@pytest.mark.parametrize("what", DAMAGES)
def test_a_damaged_reference_is_refused_naming_its_source(what):
    reference = Reference.fit(torch.from_numpy(banana(50, 6, columns=3)))
    entries = {k: v.clone() for k, v in reference.entries().items()}
    source = "runs/damaged/checkpoint.pt"
    with pytest.raises(ValueError, match=re.escape(source)):
        Reference.from_entries(_damage(entries, what), 3, source)


def test_sound_entries_give_the_reference_back_and_none_gives_none():
    x, test = torch.from_numpy(banana(50, 7, columns=3)), torch.from_numpy(banana(20, 8, columns=3))
    reference = Reference.fit(x)
    again = Reference.from_entries(reference.entries(), 3, "here")
    assert again.nll_per_dim(test) == reference.nll_per_dim(test)
    assert torch.equal(again.low, reference.low) and torch.equal(again.high, reference.high)
    assert Reference.from_entries(None, 3, "here") is None
    with pytest.raises(ValueError, match="here"):
        Reference.from_entries(reference.entries(), 4, "here")  # a reference of another width


# -- the report on samples ------------------------------------------------------------------


def test_sample_report_on_hand_made_samples():
    low, high = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    samples = torch.tensor([
        [0.5, 1.0],  # inside
        [0.0, 2.0],  # on the edges: inside
        [1.5, 1.0],  # outside by half a range: not far
        [0.5, 2.0 + 2.0 * FAR_RANGES],  # exactly one range beyond: outside, not far
        [0.5, 5.0],  # 1.5 ranges beyond: far
        [-1.5, 1.0],  # 1.5 ranges below: far
        [math.nan, 1.0],  # NaN counts as far
        [0.2, 0.3],  # inside
    ], dtype=torch.float64)
    report = sample_report(samples, low, high)
    assert report["num_samples"] == 8
    assert report["outside_range_fraction"] == 5 / 8
    assert report["far_outside_fraction"] == 3 / 8
    assert report["largest_excess_ranges"] == math.inf  # the NaN row
    finite = sample_report(samples[:6], low, high)
    assert (finite["outside_range_fraction"], finite["far_outside_fraction"]) == (4 / 6, 2 / 6)
    assert finite["largest_excess_ranges"] == pytest.approx(1.5)
    inside = sample_report(samples[[0, 1, 7]], low, high)
    assert (inside["outside_range_fraction"], inside["far_outside_fraction"], inside["largest_excess_ranges"]) == \
        (0.0, 0.0, 0.0)
    line = describe_samples(report)
    assert "62.50 % of 8 samples" in line and "37.50 % more than one range beyond" in line


# -- the messages ------------------------------------------------------------------------------


def test_comparison_line_says_when_the_flow_is_worse_and_what_to_try():
    better = comparison_line(0.75, 1.25, "validation")
    assert "WORSE" not in better
    assert better.startswith("validation NLL 0.7500 nats/dim") and "1.2500" in better and "better by 0.5000" in better
    worse = comparison_line(1.5, 1.25, "test")
    assert worse.startswith("test NLL 1.5000 nats/dim is WORSE than the full-covariance Gaussian's 1.2500")
    assert "by 0.2500" in worse and "try" in worse and "--blocks 2" in worse and "--data-init gaussian" in worse
    assert "WORSE" not in comparison_line(1.25, 1.25, "test")  # a tie is no loss
    # a hair worse, the same at the precision shown (a Gaussian start kept): no WORSE "by 0.0000"
    tie = comparison_line(1.2500031, 1.25, "validation")
    assert "WORSE" not in tie and "the same as the full-covariance Gaussian's" in tie and "no better" in tie
    assert "WORSE" in comparison_line(1.2501, 1.25, "validation")
