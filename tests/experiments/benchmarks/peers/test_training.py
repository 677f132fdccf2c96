"""Training a peer under wall-clock budgets (lunet.experiments.benchmarks.peers.training), on tiny models
and data: the clock counts the steps only, best-validation selection, warm-up, the scheduled form.

``Sleepy`` (a Gaussian whose passes sleep) and ``FAST`` (the protocol of the end-to-end tests) serve the
other tests of the peers benchmark too."""

import dataclasses
import math
import time

import pytest
import torch
from torch import nn

from lunet.experiments.benchmarks.peers import (
    Protocol,
    data_log_prob,
    markdown_tables,
    run_peers,
    train_with_budgets,
    validate_results,
    vectors_from_splits,
)
from lunet.experiments.benchmarks.peers.models import MODELS, ModelEntry, PeerModel

pytestmark = pytest.mark.usefixtures("one_thread")

# the protocol of the end-to-end tests: one call per timing, no memory probe (a child process each)
FAST = Protocol(batch_size=64, speed_repeats=1, density_batch=50, sample_cap_s=1.0, measure_memory=False)


class Sleepy(PeerModel):
    """A Gaussian with a learned mean; a training pass sleeps ``step`` s, an evaluation pass ``evaluation`` s."""

    def __init__(self, features: int, step: float, evaluation: float, start: float = 0.0):
        super().__init__()
        self.mu = nn.Parameter(torch.full((features,), start))
        self.step, self.evaluation = step, evaluation
        self.label = "sleepy"
        self.training_seconds = 0.0  # spent in training passes

    def log_prob(self, h):
        start = time.perf_counter()
        time.sleep(self.step if torch.is_grad_enabled() else self.evaluation)
        out = torch.distributions.Normal(self.mu, 1.0).log_prob(h).sum(-1)
        if torch.is_grad_enabled():
            self.training_seconds += time.perf_counter() - start
        return out

    def sample(self, n):
        return self.mu + torch.randn(n, self.mu.numel())


def _vectors(n=600, features=2, shift=0.0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return vectors_from_splits("v", x[: n // 2], x[n // 2 : 3 * n // 4] + shift, x[3 * n // 4 :] + shift)


def test_budget_clock_counts_steps_only_and_every_mark_stops_within_a_step():
    data = _vectors()
    model = Sleepy(2, step=0.01, evaluation=0.04)
    result = train_with_budgets(model, data, [0.3, 0.6], Protocol(batch_size=32))
    evaluations = len(result["curve"])
    assert evaluations >= 8 and result["eval_seconds"] >= 0.04 * evaluations  # a validation pass each, at least
    for mark in result["marks"]:
        assert mark["budget_s"] <= mark["train_seconds"] <= mark["budget_s"] + result["max_step_seconds"]
        assert mark["process_seconds"] >= 0
    # the clock is made of the steps (their sleeps and the rest of a step), not of the evaluations
    last = result["marks"][-1]
    assert model.training_seconds <= last["train_seconds"] < model.training_seconds + result["eval_seconds"] / 2
    # 300 training rows: 10 steps an epoch, the last of 12 rows
    assert last["steps"] // 10 <= last["epochs"] <= -(-last["steps"] // 10)


def test_the_best_validation_weights_are_reported_not_the_last():
    # trained toward the training data (h ~ N(0, 1)) from mu = -6; validation and test sit at h ~ N(-3, 1) in
    # model space, so validation is best half way and worse at the end. Each step sleeps 5 ms, so that the
    # steps the budget allows (about 200, a third of that on a loaded machine) take mu well past -3 at any load.
    data = _vectors(n=800, features=1, shift=-3.0)
    model = Sleepy(1, step=0.005, evaluation=0.0, start=-6.0)
    result = train_with_budgets(model, data, [0.5, 1.0], Protocol(lr=0.1, batch_size=64, eval_first=0.005))
    vals = [c["val"] for c in result["curve"]]
    best = min(vals)
    assert vals[-1] > best + 0.5  # it did overfit
    for mark in result["marks"]:
        assert mark["val"] == best or mark["budget_s"] < result["marks"][-1]["budget_s"]
    # the model holds the best weights now, and the test figure reported is theirs
    assert float(model.mu.detach()) == pytest.approx(-3.0, abs=0.6)
    test_now = data.figure(data_log_prob(model, data.test))[0]
    assert result["marks"][-1]["test"] == pytest.approx(test_now, abs=1e-9)
    assert result["marks"][-1]["val"] == pytest.approx(data.figure(data_log_prob(model, data.val))[0], abs=1e-9)


def test_warmup_raises_the_rate_for_every_model():
    data = _vectors(n=400, features=1)
    moved = {}
    for warmup in (0, 10**9):
        model = Sleepy(1, 0.0, 0.0, start=-3.0)
        train_with_budgets(model, data, [0.1], Protocol(lr=0.1, batch_size=64, warmup_steps=warmup))
        moved[warmup] = abs(float(model.mu.detach()) + 3.0)
    assert moved[0] > 1.0 and moved[10**9] < 1e-3  # at 1e-9 of the rate the mean stays put


def test_the_scheduled_form_trains_each_budget_from_the_same_start_to_a_rate_of_zero(monkeypatch):
    import lunet.experiments.benchmarks.peers.training as peers

    rates: dict[str, list[list[float]]] = {}
    step = peers.optimise_step

    def recording(model, optimizer, h, logdet, grad_clip):
        rates.setdefault(model.label, [[]])
        if model.runs != len(rates[model.label]):
            rates[model.label].append([])
        rates[model.label][-1].append(optimizer.param_groups[0]["lr"])
        return step(model, optimizer, h, logdet, grad_clip)

    built: dict[str, int] = {}

    def sleepy(name, step_s):
        def make(features, data):
            built[name] = built.get(name, 0) + 1
            model = Sleepy(features, step_s, 0.0, start=-2.0)
            model.label, model.runs = name, built[name]
            return model
        return ModelEntry(name, make, "test")

    for name, step_s in (("quick-steps", 0.002), ("slow-steps", 0.02)):
        monkeypatch.setitem(MODELS, name, sleepy(name, step_s))
    monkeypatch.setattr(peers, "optimise_step", recording)
    monkeypatch.setattr(peers, "warm_up", lambda *args: None)  # its step would count as a run's
    protocol = dataclasses.replace(FAST, schedule="cosine", lr=0.05)
    doc = run_peers([_vectors()], ["quick-steps", "slow-steps"], {"vectors": [0.2, 0.4]}, protocol, log=lambda _: None)
    assert validate_results(doc) == [] and "scheduled form" in markdown_tables(doc)
    for name, model in doc["datasets"]["v"]["models"].items():
        assert built[name] == 2 and set(model["curves"]) == {"0.2", "0.4"}  # one model per budget
        # every run starts from the same weights: the same first validation figure
        assert model["curves"]["0.2"][0]["val"] == model["curves"]["0.4"][0]["val"]
        for mark, run in zip(model["marks"], rates[name]):
            assert mark["budget_s"] <= mark["train_seconds"] <= mark["budget_s"] + model["max_step_seconds"]
            assert run[0] == 0.05 and run == sorted(run, reverse=True)
            # the last step began within one step of the budget: its rate is near the cosine's zero
            assert run[-1] < 0.05 * 0.5 * (1 - math.cos(math.pi * model["max_step_seconds"] / mark["budget_s"])) + 1e-9
