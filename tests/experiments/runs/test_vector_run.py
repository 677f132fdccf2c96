"""A trained run on own data (lunet.experiments.runs.vector_run): the rows it takes, its scores and
samples in the model's passes, the inverse in chunks, the cap on one call's samples, and the run read
back from its folder or its exported file. The runs here are untrained LU-Nets written as a run folder
(or an export) holds them."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.models import build_model
from lunet.experiments.config.presets import IMAGES, MAX_SAMPLE_VALUES, VECTORS, vector_lunet_spec
from lunet.experiments.runs import vector_run
from lunet.experiments.runs.vector_run import (
    VectorRun,
    as_vectors,
    check_sample_count,
    evaluate_vectors,
    inverse_in_chunks,
    load_vector_run,
    log_prob_fn,
    read_run_file,
    sample_vectors,
)
from lunet.experiments.store.checkpoint import save_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.store.record import ImageRunSettings, RunRecord, VectorRunSettings, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

D = 3


def rows(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def run() -> VectorRun:
    """A run of width 3 on an LU-Net of two blocks in float64, its weights away from the identity."""
    spec = vector_lunet_spec(D, num_blocks=2)
    torch.manual_seed(0)
    model = build_model(spec).double()
    with torch.no_grad():
        for block in model.blocks:
            block.bias.normal_()
    return VectorRun(VectorRunSettings(features=D, model=spec), model.eval(), None)


@pytest.fixture
def folder(run, tmp_path) -> RunFolder:
    """``run`` as a run folder holds it: run.json and its checkpoint."""
    folder = RunFolder(tmp_path / "run")
    write_run(folder, RunRecord(VECTORS, run.settings, str(tmp_path / "train.npy")))
    save_checkpoint(run.export(), folder.checkpoint)
    return folder


# -- the rows a run takes ---------------------------------------------------------------------


def test_tensors_arrays_datasets_and_loaders_give_the_same_rows():
    x = rows(10)
    labels = torch.arange(10)
    for given in (x.float(), x.numpy(), TensorDataset(x, labels), DataLoader(TensorDataset(x, labels), batch_size=3)):
        got = as_vectors(given)
        assert got.dtype == torch.float64 and got.shape == (10, D)
        torch.testing.assert_close(got, x if not isinstance(given, torch.Tensor) else x.float().double())


@pytest.mark.parametrize("given, error, message", [
    ([[1.0, 2.0]], TypeError, "rows must be a tensor, a numpy array, a Dataset or a DataLoader, got list"),
    (torch.zeros(4), ValueError, r"rows must have shape \(N, D\), got \(4,\)"),
    (torch.zeros(4, 2, dtype=torch.complex64), TypeError, "rows must hold real numbers"),
    (torch.tensor([[1.0, float("nan")], [0.0, 0.0]]), ValueError, "NaN"),
    (torch.zeros(1, 2), ValueError, "rows has 1 row"),
], ids=["list", "one-dimensional", "complex", "nan", "one-row"])
def test_anything_else_is_refused_naming_the_rows(given, error, message):
    with pytest.raises(error, match=message):
        as_vectors(given, "rows")


def test_the_count_of_samples_is_capped_by_rows_times_width_and_contexts():
    check_sample_count(MAX_SAMPLE_VALUES // 4, 4)
    with pytest.raises(SettingError) as caught:
        check_sample_count(MAX_SAMPLE_VALUES // 4 + 1, 4)
    assert f"give num_samples at most {MAX_SAMPLE_VALUES // 4:,}" in str(caught.value)
    with pytest.raises(SettingError, match=f"under each of 3 contexts, of width 4, .* at most "
                                           f"{MAX_SAMPLE_VALUES // 12:,}"):
        check_sample_count(MAX_SAMPLE_VALUES // 4, 4, contexts=3)


# -- scores and samples in the model's passes -------------------------------------------------


def test_log_prob_fn_is_the_models_with_the_noise_where_the_mask_says(run):
    x = rows(6)
    with torch.no_grad():
        torch.testing.assert_close(log_prob_fn(run.model, x.float()), run.model.log_prob(x))
        noise = torch.rand(6, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        mask = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
        torch.testing.assert_close(log_prob_fn(run.model, x, noise, mask), run.model.log_prob(x + noise * mask))


def test_the_inverse_in_chunks_is_the_inverse_in_one_pass_and_leaves_a_non_finite_chunk(run, monkeypatch):
    z = rows(10, 2)
    whole = run.model.inverse(z)[0].detach()
    monkeypatch.setattr(vector_run, "SAMPLE_CHUNK_ROWS", 4)
    torch.testing.assert_close(inverse_in_chunks(run.model, z), whole, rtol=0, atol=1e-12)
    z[5, 1] = float("inf")
    out = inverse_in_chunks(run.model, z)
    assert torch.equal(out[4:8], z[4:8])  # the chunk of the infinite latent, as it came
    torch.testing.assert_close(out[:4], whole[:4], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[8:], whole[8:], rtol=0, atol=1e-12)


def test_a_runs_scores_are_its_models_and_a_context_is_refused_for_p_of_x(run):
    x = rows(7)
    with torch.no_grad():
        torch.testing.assert_close(run.log_prob(x, batch_size=3), run.model.log_prob(x))
    with pytest.raises(ValueError, match="test.npy has 2 features per row but the run models 3"):
        run.log_prob(torch.zeros(4, 2), name="test.npy")
    with pytest.raises(ValueError, match=r"c.npy: the run models p\(x\) without a context"):
        run.log_prob(x, context=torch.zeros(7, 1), context_name="c.npy")


def test_samples_are_the_inverse_of_seeded_latents_at_the_temperature(run):
    drawn = run.sample(5, temperature=0.5, seed=3)
    z = 0.5 * torch.randn(5, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(drawn, run.model.inverse(z)[0].detach())
    assert torch.equal(run.sample(5, 0.5, seed=3), drawn)
    assert not torch.equal(run.sample(5, 0.5, seed=4), drawn)
    with pytest.raises(ValueError, match="temperature"):
        run.sample(5, temperature=0.0)


# -- a run read back from its folder or its export --------------------------------------------


def test_a_run_folder_is_read_back_as_the_run(run, folder):
    assert read_run_file(folder) == run.settings
    loaded = load_vector_run(folder.path)
    x = rows(9, 5)
    torch.testing.assert_close(loaded.log_prob(x), run.log_prob(x), rtol=0, atol=0)
    assert loaded.reference is None and not loaded.model.training


def test_evaluate_vectors_reports_the_mean_nll_and_each_rows_score(run, folder):
    x = rows(12, 6)
    lp = run.log_prob(x)
    result = evaluate_vectors(folder, x.numpy(), keep_rows=True)
    assert result["num_vectors"] == 12 and result["features"] == D
    assert result["nll_nats_per_vector"] == pytest.approx(float(-lp.mean()), rel=1e-12)
    assert result["nll_nats_per_dim"] == pytest.approx(float(-lp.mean()) / D, rel=1e-12)
    assert result["nll_nats_per_vector_std"] == pytest.approx(float(lp.std()), rel=1e-12)
    torch.testing.assert_close(result["log_prob"], lp, rtol=0, atol=0)
    assert "baseline" not in result  # a run made without a reference sets none beside it


def test_sample_vectors_checks_the_count_before_reading_the_checkpoint(run, folder):
    np.testing.assert_array_equal(sample_vectors(folder, 4, seed=2).numpy(), run.sample(4, seed=2).numpy())
    folder.checkpoint.unlink()
    with pytest.raises(SettingError, match="more than the"):
        sample_vectors(folder, MAX_SAMPLE_VALUES // D + 1)


def test_an_export_is_read_back_as_the_run_and_anything_else_is_named(run, tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(run.export(), path)
    again = VectorRun.from_export(path)
    assert again.settings == run.settings
    x = rows(4, 8)
    torch.testing.assert_close(again.log_prob(x), run.log_prob(x), rtol=0, atol=0)
    other = tmp_path / "other.pt"
    save_checkpoint({**run.export(), "run": {"kind": "unconditional"}}, other)
    with pytest.raises(ValueError, match=re.escape(f"{other} holds no run on own data")):
        VectorRun.from_export(other)


def test_the_record_of_an_image_run_is_not_read_as_own_data(tmp_path):
    images = RunFolder(tmp_path / "images")
    write_run(images, RunRecord(IMAGES, ImageRunSettings()))
    with pytest.raises(ValueError, match="run.json does not describe a run on own data"):
        read_run_file(images)
