"""The SBI benchmark's report (lunet.experiments.sbi.report): markdown tables of a results file (each
cell the mean over the observations, a failed or missing run said so) and a posterior figure per task."""

from __future__ import annotations

import math

from lunet.experiments.sbi.report import draw_posteriors, markdown_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(budget: int, estimator: str, **figures) -> dict:
    row = {"task": "two_moons", "budget": budget, "estimator": estimator, "c2st_mean": 0.61, "train_s": 12.34,
           "sample_s": [0.01, 0.03], "estimator_sample_s": [0.002, 0.004], "log_prob_true": [1.0, None, math.nan, 3.0],
           "figure_samples": [[0.0, 0.1], [0.4, -0.2], [0.3, 0.3]]}
    return {**row, **figures}


RESULTS = {
    "references": {"two_moons": {"c2st_self": [0.49, 0.52], "c2st_self_mean": 0.505, "theta_o": [[0.1, 0.2]],
                                 "figure_samples": [[0.0, 0.0], [1.0, 1.0], [0.5, 0.2]]}},
    "runs": [run(1000, "zuko_maf", c2st_mean=None), run(1000, "lunet"),
             {"task": "two_moons", "budget": 3000, "estimator": "zuko_maf", "error": "diverged"},
             run(3000, "lunet", c2st_mean=0.55)],
}


def test_the_tables_hold_each_task_budget_and_estimator():
    text = markdown_tables(RESULTS)
    lines = text.splitlines()
    assert "| two_moons | 0.505 | 0.490 – 0.520 |" in lines  # the reference against itself
    # the estimators that ran, in the benchmark's order; a budget per row
    assert lines.count("| task | simulations | lunet | zuko_maf |") == 5
    assert "| two_moons | 1,000 | 0.610 | – |" in lines  # no figure: a dash
    assert "| two_moons | 3,000 | 0.550 | failed |" in lines
    assert "| two_moons | 1,000 | 12.3 | 12.3 |" in lines  # training seconds
    assert "| two_moons | 1,000 | 20.0 | 20.0 |" in lines  # the mean sampling time, in ms
    assert "| two_moons | 1,000 | 3.0 | 3.0 |" in lines  # the estimator's own draws, in ms
    assert "| two_moons | 1,000 | 2.00 | 2.00 |" in lines  # mean of the finite log-densities
    assert "slcp" not in text  # a task not run has no row


def test_an_estimator_that_did_not_run_at_a_budget_says_so():
    results = {**RESULTS, "runs": RESULTS["runs"] + [run(10_000, "zuko_maf")]}
    assert "| two_moons | 10,000 | not run | 0.610 |" in markdown_tables(results).splitlines()


def test_one_figure_per_task_at_the_largest_budget_or_the_one_asked_for(tmp_path):
    paths = draw_posteriors(RESULTS, tmp_path)
    assert paths == [tmp_path / "sbi-two-moons.png"]
    assert paths[0].read_bytes()[:8] == PNG_MAGIC
    assert draw_posteriors(RESULTS, tmp_path / "none", budget=5000) == []  # no run at that budget: no figure
    assert draw_posteriors({**RESULTS, "references": {}}, tmp_path) == []  # no reference: no figure
