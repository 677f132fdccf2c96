"""The models of the peers benchmark (lunet.experiments.benchmarks.peers.models): LU-Net's recipes and its
Gaussian start, zuko's flows at their named sizes (skipped without zuko), the registry, and the extra
a missing package names."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from experiments.benchmarks.peers.test_training import FAST
from lunet.experiments.benchmarks.peers import run_peers, validate_results, vectors_from_splits
from lunet.experiments.benchmarks.peers.models import MODELS, MissingExtra, build
from lunet.experiments.data.mixture2d import GaussianMixture2D

pytestmark = pytest.mark.usefixtures("one_thread")


ROOT = Path(__file__).resolve().parents[4]


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


def test_lunet_best_adds_bins_and_an_input_spline():
    for features in (2, 6, 100):
        spline, best = build("lunet-spline", features), build("lunet-best", features)
        assert best.net.input_spline is not None and spline.net.input_spline is None
        assert {a.bins for a in best.net.activations} == {16} and best.net.input_spline.bins == 16
        assert len(best.net.activations) == len(spline.net.activations)
        # the LU layers are the same; the splines have twice the bins and one more of them
        assert best.num_parameters()["free"] > spline.num_parameters()["free"]
        x = torch.randn(7, features)
        assert best.log_prob(x).shape == (7,) and torch.isfinite(best.log_prob(x)).all()
    assert build("lunet-best", 784).label == "LU-Net 4×784, 16-bin splines, input spline"


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
