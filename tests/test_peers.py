"""The peers benchmark's protocol on tiny models and data: units, the shared preprocessing's
Jacobian, equal budgets with evaluation excluded, best-validation selection, the results file."""

import copy
import dataclasses
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from lunet import LUNet
from lunet.experiments.benchmarks.peers import (
    ImageSpace,
    Protocol,
    combine_results,
    data_log_prob,
    grid_samples,
    images_from_pixels,
    markdown_tables,
    run_peers,
    train_with_budgets,
    validate_results,
    vectors_from_splits,
)
from lunet.experiments.benchmarks.peers.models import MODELS, LUNetPeer, MissingExtra, ModelEntry, PeerModel, build
from lunet.experiments.data.mixture2d import GaussianMixture2D
from lunet.experiments.data.preprocess import LN2
from lunet.experiments.evaluation.evaluate import image_log_probs

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# the protocol of the end-to-end tests: one call per timing, no memory probe (a child process each)
FAST = Protocol(batch_size=64, speed_repeats=1, density_batch=50, sample_cap_s=1.0, measure_memory=False)


def _pixels(n: int, features: int, seed: int = 0) -> torch.Tensor:
    # smooth-ish images, so that the logits' spread differs between pixels
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0, 255, features)
    return (base + 60 * torch.randn(n, features, generator=g)).round().clamp(0, 255).to(torch.uint8)


def test_image_figure_is_lunets_bits_per_dim_with_the_shared_standardisation():
    """The protocol's bits/dim (shared Standardize in front of a flow without its own) equal lunet's
    evaluation of the same flow holding that standardisation itself, and the 256-level term is there."""
    features, seed = 12, 5
    pixels = _pixels(40, features)
    data = images_from_pixels("tiny", pixels[:20], pixels[20:30], pixels[30:])
    torch.manual_seed(0)
    own = LUNet(features, 2, init_scale=0.3)
    own.input_standardize.mean.copy_(data.space.standardize.mean)
    own.input_standardize.std.copy_(data.space.standardize.std)
    shared = copy.deepcopy(own)
    shared.input_standardize.mean.zero_()
    shared.input_standardize.std.fill_(1.0)

    lunet_log_p, _ = image_log_probs(own, pixels, data.space.pre, seed=seed)
    h, logdet = data.space.from_pixels(pixels, torch.Generator().manual_seed(seed))
    ours = data_log_prob(LUNetPeer(shared, "x"), (h, logdet.double()))
    torch.testing.assert_close(ours, lunet_log_p, rtol=0, atol=1e-3)
    mean, sem = data.figure(ours)
    by_hand = -ours / (features * LN2) + math.log2(256)
    assert mean == pytest.approx(float(by_hand.mean()), abs=1e-12)
    assert sem == pytest.approx(float(by_hand.std() / math.sqrt(len(by_hand))), rel=1e-9)
    # a flat density on [0, 1)^D scores exactly 8 bits/dim
    assert data.figure(torch.zeros(3))[0] == 8.0


def _brute_logdet(fn, rows: torch.Tensor) -> torch.Tensor:
    out = []
    for row in rows:
        jac = torch.autograd.functional.jacobian(lambda r: fn(r[None])[0], row)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


@pytest.mark.parametrize("features", [1, 3, 5])
def test_image_preprocessing_jacobian_matches_autograd(features):
    space = ImageSpace(features).fit(_pixels(50, features, seed=features))
    assert not torch.allclose(space.standardize.std, torch.ones(features))  # its Jacobian is not trivially 0
    space.standardize.double()  # float64 for the finite comparison; the map is the same
    g = torch.Generator().manual_seed(1)
    y = torch.rand(4, features, generator=g, dtype=torch.float64) * 0.98 + 0.01
    y[0, 0] = 1e-7  # near the edges, where the logit is steep
    _, logdet = space.from_dequantised(y)
    torch.testing.assert_close(logdet, _brute_logdet(lambda r: space.from_dequantised(r)[0], y), rtol=1e-9, atol=1e-8)
    # from pixels: dequantise with the given noise, then the same map
    pixels = _pixels(4, features, seed=2)
    noise = torch.rand(4, features, generator=g)
    space.standardize.float()
    h_pix, ld_pix = space.from_pixels(pixels, noise=noise)
    h_y, ld_y = space.from_dequantised((pixels.float() + noise) / 256)
    torch.testing.assert_close((h_pix, ld_pix), (h_y, ld_y), rtol=1e-5, atol=1e-4)


def test_vector_preprocessing_jacobian_and_the_truths_kl_is_zero():
    mix = GaussianMixture2D()
    data = vectors_from_splits("mix", mix.sample(2000, seed=1) * 3 + 1, mix.sample(500, seed=2) * 3 + 1,
                               mix.sample(40000, seed=3) * 3 + 1, entropy=None)
    x = mix.sample(3, seed=4)
    _, logdet = data.space.from_raw(x)
    torch.testing.assert_close(logdet, _brute_logdet(lambda r: data.space.from_raw(r)[0], x))

    class Truth(PeerModel):
        """The mixture scaled by ``scale`` and shifted by ``shift``, seen in model space:
        log p_truth(x(h)) + log|det ∂x/∂h|."""

        def __init__(self, space, scale=1.0, shift=0.0):
            super().__init__()
            self.space, self.scale, self.shift = space, scale, shift

        def log_prob(self, h):
            x = self.space.to_data(h)
            return (mix.log_prob((x - self.shift) / self.scale) - 2 * math.log(self.scale)
                    + torch.log(self.space.standardize.std).sum())

    raw = [mix.sample(n, seed=s) for n, s in ((2000, 1), (500, 2), (40000, 3))]
    kl_data = vectors_from_splits("mix", *raw, entropy=mix.entropy(grid=600))
    kl, sem = kl_data.figure(data_log_prob(Truth(kl_data.space), kl_data.test))
    assert abs(kl) < 4 * sem + 2e-3, (kl, sem)  # the truth has KL 0 up to Monte-Carlo error
    nats = data.figure(data_log_prob(Truth(data.space, 3.0, 1.0), data.test))[0]
    # nats/dim of the truth scaled by 3: its entropy per dimension plus log 3
    assert nats == pytest.approx(mix.entropy(grid=600) / 2 + math.log(3), abs=0.02)


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


def test_every_model_gets_the_same_budget_in_one_run(monkeypatch):
    for name, step in (("quick-steps", 0.0), ("slow-steps", 0.02)):
        entry = ModelEntry(name, lambda features, data, step=step: Sleepy(features, step, 0.0), "test")
        monkeypatch.setitem(MODELS, name, entry)
    doc = run_peers([_vectors()], ["quick-steps", "slow-steps"], {"vectors": [0.2, 0.4]}, FAST, log=lambda _: None)
    models = doc["datasets"]["v"]["models"]
    for model in models.values():
        for mark in model["marks"]:
            assert mark["budget_s"] <= mark["train_seconds"] <= mark["budget_s"] + model["max_step_seconds"]
    # the same seconds, not the same steps
    assert models["quick-steps"]["marks"][-1]["steps"] > 2 * models["slow-steps"]["marks"][-1]["steps"]


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


def test_results_file_schema_resume_and_figures(tmp_path):
    pixels = _pixels(160, 16)
    data = images_from_pixels("tiny", pixels[:100], pixels[100:130], pixels[130:], image_shape=(4, 4))
    out = tmp_path / "r.json"
    protocol = Protocol(batch_size=32, speed_repeats=1, density_batch=50, sample_cap_s=2.0, grid_samples=3)
    lines = []
    doc = run_peers([data], ["lunet"], {"images": [0.2, 0.4]}, protocol, out=out, figures=tmp_path, log=lines.append)
    assert validate_results(doc) == []
    on_disk = json.loads(out.read_text())
    assert validate_results(on_disk) == [] and on_disk["datasets"]["tiny"]["unit"] == "bits/dim"
    m = on_disk["datasets"]["tiny"]["models"]["lunet"]
    assert m["label"].startswith("LU-Net 8×16") and m["speed"]["params"] > 0
    assert m["speed"]["peak_train_memory_mib"] > 0 and m["samples"]["count"] == 3
    assert (tmp_path / "peers-tiny-curves.png").stat().st_size > 0
    assert (tmp_path / "peers-tiny-samples.png").stat().st_size > 0
    assert "| LU-Net 8×16" in markdown_tables(on_disk)
    broken = copy.deepcopy(on_disk)
    del broken["datasets"]["tiny"]["models"]["lunet"]["marks"][0]["test"]
    broken["datasets"]["tiny"]["models"]["lunet"]["speed"].pop("sampling")
    problems = validate_results(broken)
    assert len(problems) == 2 and "'test'" in problems[0] and "sampling" in problems[1]
    # resumed: the measured pair is kept as it was, not run again
    lines.clear()
    again = run_peers([data], ["lunet"], {"images": [0.2, 0.4]}, protocol, out=out, resume=True, log=lines.append)
    assert again["datasets"]["tiny"]["models"]["lunet"]["wall_seconds"] == m["wall_seconds"]
    assert any("already measured" in line for line in lines)
    with pytest.raises(ValueError, match="another protocol"):
        run_peers([data], ["lunet"], {"images": [0.2, 0.5]}, protocol, out=out, resume=True, log=lines.append)
    # two runs joined: every pair of each, the runs listed; another protocol refused
    other = copy.deepcopy(on_disk)
    other["datasets"]["tiny"]["models"]["lunet-copy"] = other["datasets"]["tiny"]["models"].pop("lunet")
    joined = combine_results([on_disk, other], ["a.json", "b.json"])
    assert validate_results(joined) == [] and set(joined["datasets"]["tiny"]["models"]) == {"lunet", "lunet-copy"}
    assert [r["from"] for r in joined["runs"]] == ["a.json", "b.json"]
    other["protocol"]["lr"] = 0.5
    with pytest.raises(ValueError, match="b.json was measured under another protocol"):
        combine_results([on_disk, other], ["a.json", "b.json"])


def test_missing_zuko_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "zuko", None)  # an import of it now fails
    with pytest.raises(MissingExtra, match=r"pip install \.\[peers\]"):
        build("zuko-maf", 4)
    spec = importlib.util.spec_from_file_location("peers_script", ROOT / "reproduce" / "peers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit, match=r"zuko-nsf need\(s\) the peers extra: pip install \.\[peers\]"):
        script.main(["--models", "lunet,zuko-nsf", "--datasets", "gmm2d"])
    with pytest.raises(SystemExit, match="unknown models: nope"):
        script.main(["--models", "nope"])


def test_lunet_recipes_by_width():
    assert build("lunet", 784).label == "LU-Net paper's 4×784"
    assert build("lunet", 784).num_parameters()["free"] == 4 * (784 * 784 + 784)
    assert build("lunet", 2).label == "LU-Net 16×2"
    assert build("lunet", 24).label == "LU-Net 8×24"


def test_lunet_gaussian_starts_at_the_gaussian_fit():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(400, 6, generator=g) @ torch.randn(6, 6, generator=g)
    data = (data - data.mean(0)) / data.std(0)
    fit = torch.distributions.MultivariateNormal(data.mean(0).double(), torch.cov(data.T.double()))
    gaussian_start = build("lunet-gaussian", 6, data)
    assert gaussian_start.label == "LU-Net 8×6, Gaussian start"
    with torch.no_grad():
        started = float(gaussian_start.log_prob(data).mean())
        plain = float(build("lunet", 6).log_prob(data).mean())
    assert started == pytest.approx(float(fit.log_prob(data.double()).mean()), abs=0.05 * 6)
    assert started > plain + 1.0
    assert MODELS["lunet-gaussian"].needs_data and not MODELS["lunet"].needs_data


def test_zuko_models_at_the_named_sizes():
    pytest.importorskip("zuko")
    d, big = 6, 100
    for name in ("zuko-maf", "zuko-realnvp", "zuko-nsf"):
        model = build(name, d)
        x = torch.randn(5, d)
        assert model.log_prob(x).shape == (5,) and model.sample(3).shape == (3, d)
        counts = model.num_parameters()
        assert 0 < counts["free"] <= counts["stored"]
    maf, nvp, nsf = (build(n, big) for n in ("zuko-maf", "zuko-realnvp", "zuko-nsf"))
    # one hidden layer of 1,024 (MAF, RealNVP) or 512 (NSF, 8 bins: 3 × 8 - 1 numbers per feature)
    assert maf.num_parameters()["stored"] == 5 * (big * 1024 + 1024 + 1024 * 2 * big + 2 * big)
    assert nvp.num_parameters()["stored"] == 10 * (big // 2 * 1024 + 1024 + 1024 * big + big)
    assert nsf.num_parameters()["stored"] == 3 * (big * 512 + 512 + 512 * 23 * big + 23 * big)
    assert maf.num_parameters()["free"] < maf.num_parameters()["stored"]  # MADE's masks
    assert (maf.sampling_passes, nsf.sampling_passes, nvp.sampling_passes) == (big, big, 1.0)
    assert "MAF 5×[1024]" in maf.label and "NSF 3×[512], 8 bins" in nsf.label


def test_zuko_models_train_under_the_protocol():
    pytest.importorskip("zuko")
    mix = GaussianMixture2D()
    data = vectors_from_splits("v", mix.sample(300, seed=1), mix.sample(100, seed=2), mix.sample(100, seed=3))
    doc = run_peers([data], ["zuko-realnvp"], {"vectors": [0.3]}, FAST, log=lambda _: None)
    m = doc["datasets"]["v"]["models"]["zuko-realnvp"]
    assert validate_results(doc) == []
    assert m["marks"][0]["val"] < m["curve"][0]["val"]  # trained: better than the near-normal start
    assert m["speed"]["sampling"]["per_s"] > 0


def test_registry_entries_are_documented():
    for name, entry in MODELS.items():
        assert entry.name == name and entry.summary


class Overflowing(Sleepy):
    """Draws that overflow, as an autoregressive flow's may at T = 1."""

    def sample(self, n):
        return torch.full((n, self.mu.numel()), float("inf"))


def test_a_sample_grid_of_overflowing_draws_says_so_instead_of_failing():
    pixels = _pixels(40, 12)
    data = images_from_pixels("tiny", pixels[:20], pixels[20:30], pixels[30:])
    grid = grid_samples(Overflowing(12, step=0.0, evaluation=0.0), data, FAST)
    assert grid["pixels_b64"] is None and "non-finite" in grid["why"]


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


def test_an_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        Protocol(schedule="linear")
