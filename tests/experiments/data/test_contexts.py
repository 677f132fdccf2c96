"""The condition of a run on own data (lunet.experiments.data.contexts): labels or vectors chosen from the
training contexts, later context files checked against those rules, the flow's and the Gaussian's view
of them, and the rules' round trip through run.json."""

from __future__ import annotations

import pytest
import torch

from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.presets import MAX_AUTO_CLASSES, MAX_LABEL_EMBEDDING
from lunet.experiments.data.contexts import ContextRules, check_rows


def labels(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1)


def test_one_column_of_whole_numbers_from_zero_reads_as_labels():
    rules = ContextRules.choose(labels(0, 2, 1, 2))
    assert (rules.kind, rules.width, rules.num_classes) == ("labels", 1, 3)
    assert rules.features == 3 and rules.design_width == 3
    assert "class labels 0..2" in rules.describe()


def test_anything_else_reads_as_vectors():
    for context in (labels(0.5, 1.0, 2.0), labels(-1, 0, 1), labels(0, 1, MAX_AUTO_CLASSES),
                    torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], dtype=torch.float64)):
        rules = ContextRules.choose(context)
        assert rules.kind == "vectors" and rules.num_classes is None
        assert rules.features == rules.width == rules.design_width == context.shape[1]
    assert ContextRules.choose(labels(0, 1, 2), kind="vectors").kind == "vectors"


def test_many_classes_are_embedded_in_at_most_max_label_embedding_dimensions():
    many = labels(*range(MAX_LABEL_EMBEDDING + 5))
    rules = ContextRules.choose(many)
    assert rules.num_classes == MAX_LABEL_EMBEDDING + 5 and rules.features == MAX_LABEL_EMBEDDING


def test_labels_asked_for_must_be_one_column_of_whole_numbers_from_zero():
    with pytest.raises(SettingError) as caught:
        ContextRules.choose(torch.zeros(3, 2, dtype=torch.float64), kind="labels", name="c.npy")
    assert "c.npy has 2 columns; class labels are one column of whole numbers" in str(caught.value)
    with pytest.raises(ValueError, match=r"c.npy: class labels must be whole numbers from 0; row 1 holds 1.5 "
                                         r"\(2 such rows\)"):
        ContextRules.choose(labels(0, 1.5, -1), kind="labels", name="c.npy")
    with pytest.raises(ValueError, match="context_kind must be one of"):
        ContextRules.choose(labels(0, 1), kind="classes")


def test_a_constant_column_of_vectors_is_refused_by_its_name():
    context = torch.tensor([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0]], dtype=torch.float64)
    with pytest.raises(SettingError) as caught:
        ContextRules.choose(context, names=["dose", "site"], name="c.csv")
    assert "c.csv: context 'site' holds one value in every training row" in str(caught.value)
    with pytest.raises(SettingError) as caught:
        ContextRules.choose(context, name="c.csv")
    assert "context column 1 holds one value" in str(caught.value)


def test_later_contexts_are_checked_against_the_runs_rules():
    rules = ContextRules.choose(labels(0, 1, 2))
    given = labels(2, 0)
    assert rules.check(given, "test.npy") is given
    with pytest.raises(ValueError, match="test.npy: class labels must be the run's classes 0..2; row 1 holds 3"):
        rules.check(labels(1, 3), "test.npy")
    with pytest.raises(ValueError, match="test.npy has 2 columns per row but the run's contexts have 1"):
        rules.check(torch.zeros(2, 2, dtype=torch.float64), "test.npy")


def test_the_flow_takes_labels_as_integers_and_vectors_in_its_dtype():
    rules = ContextRules.choose(labels(0, 1, 2))
    taken = rules.to_model(labels(2, 0), torch.float32, torch.device("cpu"))
    assert taken.dtype == torch.int64 and taken.tolist() == [2, 0]
    design = rules.design(labels(2, 0))
    assert design.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]  # one-hot for the Gaussian
    vectors = ContextRules.choose(torch.tensor([[0.5, 1.0], [1.5, -1.0]], dtype=torch.float64))
    rows = torch.tensor([[0.25, 2.0]], dtype=torch.float64)
    assert vectors.to_model(rows, torch.float32, torch.device("cpu")).dtype == torch.float32
    assert torch.equal(vectors.design(rows), rows)


def test_the_rules_round_trip_through_their_entries():
    for rules in (ContextRules.choose(labels(0, 1, 2)),
                  ContextRules.choose(torch.tensor([[0.5, 1.0], [1.5, -1.0]], dtype=torch.float64), names=["a", "b"])):
        assert ContextRules.from_entries(rules.entries()) == rules


@pytest.mark.parametrize("entries, message", [
    ("labels", "context must be a mapping of width, kind, num_classes and names"),
    ({"width": 1, "kind": "labels", "num_classes": 3}, "context must be a mapping"),
    ({"width": 0, "kind": "vectors", "num_classes": None, "names": None}, "context.width must be a positive integer"),
    ({"width": True, "kind": "vectors", "num_classes": None, "names": None}, "context.width must be a positive"),
    ({"width": 1, "kind": "classes", "num_classes": 3, "names": None}, "context.kind must be 'labels' or 'vectors'"),
    ({"width": 2, "kind": "labels", "num_classes": 3, "names": None}, "context of labels must be one column"),
    ({"width": 1, "kind": "labels", "num_classes": True, "names": None}, "context of labels must be one column"),
    ({"width": 1, "kind": "vectors", "num_classes": 3, "names": None}, "context of vectors has no num_classes"),
    ({"width": 2, "kind": "vectors", "num_classes": None, "names": ["a"]}, "context.names must be None or 2 strings"),
], ids=["not-a-dict", "missing-key", "zero-width", "bool-width", "unknown-kind", "wide-labels", "bool-classes",
        "vectors-with-classes", "names-short"])
def test_damaged_entries_are_refused_saying_what_is_wrong(entries, message):
    with pytest.raises(ValueError, match=message):
        ContextRules.from_entries(entries)


def test_contexts_and_data_must_hold_one_row_each_for_the_other():
    check_rows(torch.zeros(3, 1), torch.zeros(3, 4), "c.npy", "x.npy")
    check_rows(torch.zeros(3, 1), 3, "c.npy", "x.npy")
    with pytest.raises(ValueError, match="c.npy has 1 row, x.npy has 1,200: give one context row per data row"):
        check_rows(torch.zeros(1, 1), 1200, "c.npy", "x.npy")
    with pytest.raises(ValueError, match="c.npy has 4 rows, x.npy has 3"):
        check_rows(torch.zeros(4, 2), torch.zeros(3, 4), "c.npy", "x.npy")
