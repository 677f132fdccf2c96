"""How a run on own data treats its columns (ColumnRules): integer columns dequantised, constant
columns dropped by request, the CSV's header kept; and the options of ``lunet train`` about them."""

import json

import numpy as np
import pytest
import torch

from conftest import one_line_error, run_cli
from lunet.experiments.data.columns import MAX_LEVELS_PER_ROW, ColumnRules
from lunet.experiments.runs.vector_run import load_vector_run
from lunet.experiments.runs.vectors import train_vectors

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--epochs", "2", "--blocks", "2", "--batch-size", "64", "--dtype", "float64", "--no-progress"]
HEADER = ["count", "x", "id", "score", "flag"]
COUNT, X, ID, SCORE, FLAG = range(5)


def mixed_table(n, seed):
    """(n, 5): small counts, a real number, large identifiers, numbers with one decimal, a 0/1 flag."""
    rng = np.random.default_rng(seed)
    return np.stack([
        rng.poisson(3.0, n).astype(float),
        rng.standard_normal(n),
        rng.integers(0, 1_000_000, n).astype(float),  # whole numbers spanning far more than the rows
        np.round(rng.normal(5.0, 2.0, n), 1),
        rng.integers(0, 2, n).astype(float),
    ], axis=1)


def write_csv(path, rows, header=None):
    lines = ([",".join(header)] if header else []) + [",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def read_csv(path):
    """The header line and the numbers of a CSV written by ``lunet sample``."""
    lines = path.read_text().splitlines()
    return lines[0], np.array([[float(v) for v in line.split(",")] for line in lines[1:]])


def whole(values):
    return bool(np.all(values == np.floor(values)))


# -- ColumnRules ---------------------------------------------------------------------------------


def test_auto_finds_whole_number_columns_of_a_span_no_larger_than_the_rows():
    rows = torch.from_numpy(mixed_table(200, 0))
    rules = ColumnRules.choose(rows)
    assert rules.integer == [COUNT, FLAG]
    assert (rules.width, rules.dropped, rules.features, rules.kept) == (5, {}, 5, list(range(5)))
    assert ColumnRules.choose(rows, dequantize="none").integer == []
    with pytest.raises(ValueError, match="dequantize must be one of"):
        ColumnRules.choose(rows, dequantize="always")


def test_the_span_limit_is_the_number_of_rows():
    n = 10
    x = torch.zeros(n, 3, dtype=torch.float64)
    x[:, 0] = torch.arange(n)
    x[-1, 0] = MAX_LEVELS_PER_ROW * n  # span n: as many integers as rows
    x[:, 1] = torch.arange(n) - 3.0
    x[-1, 1] = MAX_LEVELS_PER_ROW * n + 1 - 3.0  # span n + 1: one more
    x[:, 2] = torch.arange(n) * 0.5  # half of them are not whole
    assert ColumnRules.choose(x).integer == [0]


def test_constant_columns_are_dropped_only_when_asked_and_never_dequantised():
    rows = torch.from_numpy(mixed_table(50, 1))
    rows[:, X] = 2.5
    rows[:, FLAG] = 1.0
    kept = ColumnRules.choose(rows)
    assert kept.dropped == {} and FLAG in kept.integer  # a constant whole number: dequantised
    rules = ColumnRules.choose(rows, drop_constant=True, names=HEADER)
    assert rules.dropped == {X: 2.5, FLAG: 1.0}
    assert rules.integer == [COUNT]
    assert (rules.kept, rules.features) == ([COUNT, ID, SCORE], 3)
    lines = rules.describe()
    assert lines[0].startswith("dropped 2 constant column(s): 'x' (= 2.5), 'flag' (= 1)")
    assert "dequantised 1 column(s) of whole numbers ('count')" in lines[1]
    assert ColumnRules(3).describe() == []


def test_to_model_and_to_data_round_trip():
    rows = torch.from_numpy(mixed_table(60, 2))
    rows[:, SCORE] = -1.25
    rules = ColumnRules.choose(rows, drop_constant=True)
    model_rows = rules.to_model(rows)
    assert torch.equal(model_rows, rows[:, [COUNT, X, ID, FLAG]])
    noisy = rules.dequantized(model_rows, torch.Generator().manual_seed(0))
    noise = noisy - model_rows
    mask = rules.noise_mask()
    assert torch.equal(mask, torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    assert bool((noise[:, mask == 0] == 0).all())
    assert bool((noise[:, mask == 1] >= 0).all() and (noise[:, mask == 1] < 1).all())
    assert bool((noise[:, mask == 1] > 0).any())
    # rounded down, the dequantised rows are the data again, the dropped column given back
    assert torch.equal(rules.to_data(noisy), rows)
    assert torch.equal(rules.to_data(model_rows), rows)
    # without rules, rows pass as they are
    assert torch.equal(ColumnRules(5).to_data(rows), rows) and torch.equal(ColumnRules(5).to_model(rows), rows)
    assert ColumnRules(5).noise_mask() is None


def test_the_rules_round_trip_through_their_entries():
    rows = torch.from_numpy(mixed_table(40, 3))
    rows[:, X] = 7.5
    rules = ColumnRules.choose(rows, drop_constant=True, names=HEADER)
    entries = json.loads(json.dumps(rules.entries()))  # as run.json holds them
    again = ColumnRules.from_entries(entries, rules.features)
    assert again == rules


@pytest.mark.parametrize("change, fragment", [
    ({"width": 0}, "columns.width"),
    ({"dropped": [[9, 1.0]]}, "columns.dropped"),
    ({"dropped": [[1, 1.0], [1, 2.0]]}, "columns.dropped"),
    ({"integer": [5]}, "columns.integer"),
    ({"names": ["a", "b"]}, "columns.names"),
    ({"integer": [1]}, "dropped column as an integer one"),
])
def test_damaged_entries_are_refused_saying_what_is_wrong(change, fragment):
    entries = {"width": 5, "dropped": [[1, 7.5]], "integer": [0, 4], "names": list(HEADER), **change}
    with pytest.raises(ValueError, match=fragment):
        ColumnRules.from_entries(entries, 4)


def test_entries_for_a_flow_of_another_width_are_refused():
    with pytest.raises(ValueError, match="columns keep 4 columns for a flow of width 5"):
        ColumnRules.from_entries({"width": 5, "dropped": [[1, 7.5]], "integer": [], "names": None}, 5)


# -- the options of lunet train ----------------------------------------------------------------


def test_integer_columns_are_found_recorded_and_sampled_as_whole_numbers(tmp_path, capsys):
    data = write_csv(tmp_path / "train.csv", mixed_table(200, 4), header=HEADER)
    run = tmp_path / "run"
    assert run_cli("train", "--data", data, "--out", run, *FAST) == 0
    printed = capsys.readouterr().out
    record = json.loads((run / "run.json").read_text())
    assert record["columns"]["integer"] == [COUNT, FLAG] and record["columns"]["names"] == HEADER
    assert "dequantised 2 column(s) of whole numbers ('count', 'flag')" in printed

    out = tmp_path / "samples.csv"
    assert run_cli("sample", run, "--num", "300", "--out", out) == 0
    printed = capsys.readouterr().out
    header, samples = read_csv(out)
    assert header == ",".join(HEADER)  # the training CSV's header heads the samples
    assert samples.shape == (300, 5) and np.isfinite(samples).all()
    assert whole(samples[:, COUNT]) and whole(samples[:, FLAG])
    assert not whole(samples[:, X]) and not whole(samples[:, SCORE])
    assert "samples have a value outside the training data's range" in printed

    # the run's own sampling gives the same rows
    assert np.array_equal(load_vector_run(run).sample(300).numpy(), samples)
    summary = json.loads((run / "summary.json").read_text())
    assert any("'count', 'flag'" in line for line in summary["columns"])


def test_a_rows_score_is_its_own_wherever_it_stands(tmp_path):
    train_vectors(torch.as_tensor(mixed_table(200, 4)), tmp_path / "run", {"epochs": 2}, progress=False)
    loaded = load_vector_run(tmp_path / "run")
    assert loaded.columns.integer == [COUNT, FLAG]
    rows = torch.as_tensor(mixed_table(50, 5))
    whole_file = loaded.log_prob(rows)
    alone = torch.cat([loaded.log_prob(rows[i : i + 1]) for i in range(rows.shape[0])])
    reversed_file = loaded.log_prob(rows.flip(0)).flip(0)
    # the same noise wherever a row stands: equal up to float32 rounding, which may differ between a
    # product of one row and one of fifty (another draw of the noise moves a score by 0.004 to 2 nats)
    torch.testing.assert_close(alone, whole_file, rtol=0, atol=1e-4)
    torch.testing.assert_close(reversed_file, whole_file, rtol=0, atol=1e-4)
    # the noise is U[0, 1)-like and differs between rows and columns
    noise = loaded.columns.dequantized(rows[:, :]) - rows
    counts = noise[:, COUNT]
    assert bool(((counts >= 0) & (counts < 1)).all()) and counts.unique().numel() > 40
    assert not torch.equal(noise[:, COUNT], noise[:, FLAG]) and bool((noise[:, X] == 0).all())


def test_dequantize_none_models_every_column_as_it_is(tmp_path, capsys):
    data = write_csv(tmp_path / "train.csv", mixed_table(200, 4), header=HEADER)
    run = tmp_path / "run"
    assert run_cli("train", "--data", data, "--out", run, "--dequantize", "none", *FAST) == 0
    assert "dequantised" not in capsys.readouterr().out
    assert json.loads((run / "run.json").read_text())["columns"]["integer"] == []
    samples = load_vector_run(run).sample(300).numpy()
    assert not whole(samples[:, COUNT])


def test_a_constant_column_is_refused_by_name_unless_dropped(tmp_path, capsys):
    rows = mixed_table(120, 5)[:, [X, SCORE, COUNT]]
    rows[:, 1] = 2.5
    names = ["x", "const", "count"]
    data = write_csv(tmp_path / "train.csv", rows, header=names)
    assert run_cli("train", "--data", data, "--out", tmp_path / "refused", *FAST) == 2
    line = one_line_error(capsys, "train")
    assert "column(s) 'const' hold one value in every training row" in line
    assert "give --drop-constant to drop them" in line and "'x'" not in line
    assert not (tmp_path / "refused").exists()
    # without a header, the column is named by its index; a constant whole number is refused too
    # when nothing is dequantised
    plain = rows[:, [0, 2]].copy()
    plain[:, 1] = 4.0
    np.save(tmp_path / "plain.npy", plain)
    assert run_cli("train", "--data", tmp_path / "plain.npy", "--out", tmp_path / "refused", "--dequantize", "none",
                   *FAST) == 2
    assert "column(s) column 1 hold one value" in one_line_error(capsys, "train")

    run = tmp_path / "run"
    assert run_cli("train", "--data", data, "--out", run, "--drop-constant", *FAST) == 0
    assert "dropped 1 constant column(s): 'const' (= 2.5); samples give them their value" in capsys.readouterr().out
    record = json.loads((run / "run.json").read_text())
    assert record["columns"]["dropped"] == [[1, 2.5]] and record["features"] == 2
    assert record["columns"]["integer"] == [2]
    out = tmp_path / "samples.csv"
    assert run_cli("sample", run, "--num", "200", "--out", out) == 0
    capsys.readouterr()
    header, samples = read_csv(out)
    assert header == "x,const,count" and samples.shape == (200, 3)
    assert np.all(samples[:, 1] == 2.5) and whole(samples[:, 2])
    # a test file of the data's width is evaluated over the columns the flow models
    np.save(tmp_path / "test.npy", rows[:30])
    assert run_cli("evaluate", run, "--data", tmp_path / "test.npy") == 0
    assert "on 30 vectors" in capsys.readouterr().out


def test_names_must_match_the_width(tmp_path):
    with pytest.raises(ValueError, match="names lists 2 column names for 5 columns"):
        train_vectors(mixed_table(40, 6), tmp_path / "run", names=["a", "b"], progress=False)
    assert not (tmp_path / "run").exists()
