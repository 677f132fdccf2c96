"""Reading and writing users' data sets of feature vectors (lunet.experiments.data.rows)."""

import os
import pickle
import re
import stat

import numpy as np
import pytest
import torch

from lunet.experiments.data.rows import VECTOR_SUFFIXES, check_width, load_vectors, save_vectors

# Values whose shortest decimal form is long, tiny, huge or negative: a CSV
# written with too few digits would not read them back exactly.
AWKWARD = torch.tensor(
    [[0.1, 1 / 3, -2.5e-300, 1.7976931348623157e308],
     [-0.0, 123456789.123456789, 5e-324, -7.0],
     [2 ** 0.5, -1e-7, 1e22, 0.30000000000000004]],
    dtype=torch.float64,
)


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", VECTOR_SUFFIXES)
def test_round_trip_is_exact(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    written = save_vectors(AWKWARD, path)
    assert written == path
    back = load_vectors(path)
    assert back.dtype == torch.float64
    assert back.shape == (3, 4)
    assert back.device.type == "cpu"
    assert back.is_contiguous()
    assert torch.equal(back, AWKWARD)


@pytest.mark.parametrize("suffix", VECTOR_SUFFIXES)
def test_float32_round_trip_reads_back_the_same_values(tmp_path, suffix):
    data = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    path = save_vectors(data, tmp_path / f"data{suffix}")
    assert torch.equal(load_vectors(path), data.double())


def test_csv_is_written_without_header_and_with_shortest_exact_floats(tmp_path):
    path = save_vectors(torch.tensor([[0.1, 2.0], [1 / 3, -1e-7]], dtype=torch.float64), tmp_path / "d.csv")
    assert path.read_text().splitlines() == ["0.1,2.0", f"{1 / 3!r},-1e-07"]


def test_save_creates_parent_folders_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a" / "b" / "data.npy"
    save_vectors(torch.ones(2, 3), path)
    assert path.is_file()
    assert os.listdir(path.parent) == ["data.npy"]
    # the file gets ordinary permissions, not mkstemp's owner-only ones
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_save_replaces_an_existing_file(tmp_path):
    path = save_vectors(torch.zeros(2, 2), tmp_path / "d.pt")
    save_vectors(torch.ones(3, 1), path)
    assert torch.equal(load_vectors(path), torch.ones(3, 1, dtype=torch.float64))


def test_save_pt_holds_one_contiguous_cpu_tensor(tmp_path):
    data = torch.arange(12.0).reshape(3, 4).t()  # not contiguous
    path = save_vectors(data, tmp_path / "d.pt")
    raw = torch.load(path, weights_only=True)
    assert isinstance(raw, torch.Tensor) and raw.is_contiguous() and raw.device.type == "cpu"
    assert torch.equal(raw, data)


def test_save_refuses_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"d\.txt.*\.npy, \.csv, \.pt"):
        save_vectors(torch.ones(2, 2), tmp_path / "d.txt")
    assert not (tmp_path / "d.txt").exists()


def test_save_refuses_data_that_is_not_2d(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(4,\) is not 2-D"):
        save_vectors(torch.ones(4), tmp_path / "d.csv")


def test_csv_with_header_and_spaces(tmp_path):
    path = write(tmp_path / "d.csv", "x, y ,z\n1, 2 ,3\n 4.5,-5e-1,6\n")
    assert torch.equal(load_vectors(path), torch.tensor([[1, 2, 3], [4.5, -0.5, 6]], dtype=torch.float64))


def test_csv_without_header(tmp_path):
    path = write(tmp_path / "d.csv", "1,2\n3,4\n5,6\n")
    assert torch.equal(load_vectors(path), torch.tensor([[1.0, 2], [3, 4], [5, 6]], dtype=torch.float64))


def test_csv_blank_lines_are_ignored(tmp_path):
    path = write(tmp_path / "d.csv", "\na,b\n\n1,2\n   \n\n3,4\n\n")
    assert torch.equal(load_vectors(path), torch.tensor([[1.0, 2], [3, 4]], dtype=torch.float64))


@pytest.mark.parametrize("text,message", [
    ("a,b,c,d\n1,2,3,4\n\n5,6,7\n", r"^.*data\.csv: line 4 has 3 columns, line 2 has 4$"),
    ("a,b,c\n1,2\n3,4\n", r"line 2 has 2 columns, the header on line 1 has 3"),
    ("x,y,z\n1,2,3\n4,five,6\n", r"data\.csv: line 3, column 2: 'five' is not a number"),
    ("1,2,3\n4,5, \n", r"data\.csv: line 2, column 3 is empty"),
    ("1,,3\n4,5,6\n", r"line 1, column 2 is empty"),  # not taken for a header
    ("x,y\n1,2\n3,4\n5,nan\nnan,6\n", r"data\.csv: 2 values are NaN or infinite \(the first in row 2, line 4\)"),
], ids=["ragged-row-names-line-and-both-counts", "header-wider-than-rows", "text-cell-names-line-column-and-text",
        "empty-cell-names-line-and-column", "empty-cell-in-first-row-is-not-a-header", "nan-names-count-row-and-line"])
def test_a_bad_csv_is_refused_naming_where(tmp_path, text, message):
    path = write(tmp_path / "data.csv", text)
    with pytest.raises(ValueError, match=message):
        load_vectors(path)


def test_npy_inf_names_count_and_row(tmp_path):
    data = np.zeros((10, 3))
    data[7, 1] = np.inf
    data[9, 0] = -np.inf
    np.save(tmp_path / "data.npy", data)
    with pytest.raises(ValueError, match=r"^.*data\.npy: 2 values are NaN or infinite \(the first in row 7\)$"):
        load_vectors(tmp_path / "data.npy")


def test_pt_single_nan(tmp_path):
    data = torch.zeros(4, 2)
    data[3, 0] = float("nan")
    torch.save(data, tmp_path / "data.pt")
    with pytest.raises(ValueError, match=r"1 value is NaN or infinite \(the first in row 3\)"):
        load_vectors(tmp_path / "data.pt")


@pytest.mark.parametrize("suffix", VECTOR_SUFFIXES)
def test_one_row_is_too_few(tmp_path, suffix):
    path = save_vectors(torch.ones(1, 3), tmp_path / f"data{suffix}")
    with pytest.raises(ValueError, match=r"data\.\w+ has 1 row of data; at least 2 are needed \(N < 2\)"):
        load_vectors(path)


def test_csv_with_only_a_header_has_no_rows(tmp_path):
    path = write(tmp_path / "data.csv", "x,y\n")
    with pytest.raises(ValueError, match=r"has 0 rows of data.*N < 2"):
        load_vectors(path)


def test_zero_columns_refused(tmp_path):
    np.save(tmp_path / "data.npy", np.zeros((4, 0)))
    with pytest.raises(ValueError, match=r"data\.npy has 0 columns \(shape \(4, 0\)\)"):
        load_vectors(tmp_path / "data.npy")


def test_1d_array_refused_with_a_hint(tmp_path):
    np.save(tmp_path / "data.npy", np.arange(5.0))
    with pytest.raises(ValueError, match=r"data\.npy holds data of shape \(5,\), not 2-D.*shape \(N, 1\)"):
        load_vectors(tmp_path / "data.npy")


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_3d_array_refused(tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, np.zeros((2, 3, 4)))
    else:
        torch.save(torch.zeros(2, 3, 4), path)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\), not 2-D") as info:
        load_vectors(path)
    assert "(N, 1)" not in str(info.value)


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64, bool, np.float16, np.float32])
def test_npy_int_bool_float_are_converted(tmp_path, dtype):
    array = (np.arange(6).reshape(3, 2) % 2).astype(dtype)
    np.save(tmp_path / "d.npy", array)
    back = load_vectors(tmp_path / "d.npy")
    assert back.dtype == torch.float64 and back.is_contiguous()
    assert torch.equal(back, torch.tensor(array.astype(np.float64)))


def test_npy_fortran_order_is_made_contiguous(tmp_path):
    array = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.save(tmp_path / "d.npy", array)
    back = load_vectors(tmp_path / "d.npy")
    assert back.is_contiguous() and torch.equal(back, torch.tensor([[0.0, 1, 2], [3, 4, 5]], dtype=torch.float64))


def test_pt_int_and_bool_tensors_are_converted(tmp_path):
    torch.save(torch.tensor([[1, 0], [0, 1]], dtype=torch.bool), tmp_path / "b.pt")
    torch.save(torch.tensor([[3, -4], [5, 6]], dtype=torch.int16), tmp_path / "i.pt")
    assert torch.equal(load_vectors(tmp_path / "b.pt"), torch.eye(2, dtype=torch.float64))
    assert torch.equal(load_vectors(tmp_path / "i.pt"), torch.tensor([[3.0, -4], [5, 6]], dtype=torch.float64))


def test_string_npy_refused(tmp_path):
    np.save(tmp_path / "data.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match=r"data\.npy holds values of dtype <U1, not real numbers"):
        load_vectors(tmp_path / "data.npy")


def test_object_npy_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "data.npy", np.array([[1, "a"], [2, "b"]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"data\.npy holds values of dtype object"):
        load_vectors(tmp_path / "data.npy")


def test_complex_npy_refused(tmp_path):
    np.save(tmp_path / "data.npy", np.ones((3, 2), dtype=np.complex128))
    with pytest.raises(ValueError, match=r"data\.npy holds complex numbers"):
        load_vectors(tmp_path / "data.npy")


def test_complex_tensor_refused(tmp_path):
    torch.save(torch.ones(3, 2, dtype=torch.complex64), tmp_path / "data.pt")
    with pytest.raises(ValueError, match=r"data\.pt holds complex numbers \(dtype torch\.complex64\)"):
        load_vectors(tmp_path / "data.pt")


def test_pt_holding_a_dict_refused(tmp_path):
    torch.save({"x": torch.ones(3, 2)}, tmp_path / "data.pt")
    with pytest.raises(ValueError, match=r"data\.pt holds a dict with keys 'x', not a tensor; .*must hold one tensor"):
        load_vectors(tmp_path / "data.pt")


def test_pt_holding_a_list_refused(tmp_path):
    torch.save([torch.ones(3, 2)], tmp_path / "data.pt")
    with pytest.raises(ValueError, match=r"data\.pt holds a list, not a tensor"):
        load_vectors(tmp_path / "data.pt")


class Payload:
    """Stands for any Python object; loading it with plain pickle would run code."""


def test_pt_holding_a_python_object_is_refused_without_running_it(tmp_path):
    torch.save(Payload(), tmp_path / "data.pt")
    with pytest.raises(ValueError, match=r"data\.pt holds a Python object \(.*Payload\).*must hold one tensor"):
        load_vectors(tmp_path / "data.pt")


def test_garbage_pt_refused_in_one_line(tmp_path):
    (tmp_path / "data.pt").write_bytes(b"this is not a tensor file\x00\x01\x02" * 8)
    with pytest.raises(ValueError, match=r"data\.pt could not be read as a \.pt file") as info:
        load_vectors(tmp_path / "data.pt")
    assert "\n" not in str(info.value)


def test_truncated_pt_refused_in_one_line(tmp_path):
    torch.save(torch.ones(50, 4), tmp_path / "full.pt")
    raw = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "data.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"data\.pt could not be read as a \.pt file") as info:
        load_vectors(tmp_path / "data.pt")
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_truncated_npy_refused_in_one_line(tmp_path):
    np.save(tmp_path / "full.npy", np.ones((10, 3)))
    raw = (tmp_path / "full.npy").read_bytes()
    (tmp_path / "data.npy").write_bytes(raw[:-20])
    with pytest.raises(ValueError, match=r"data\.npy could not be read as a \.npy file") as info:
        load_vectors(tmp_path / "data.npy")
    assert "\n" not in str(info.value)


def test_pickle_under_npy_name_refused(tmp_path):
    (tmp_path / "data.npy").write_bytes(pickle.dumps([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match=r"data\.npy holds pickled Python data"):
        load_vectors(tmp_path / "data.npy")


def test_empty_file_refused(tmp_path):
    (tmp_path / "data.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"data\.npy is empty"):
        load_vectors(tmp_path / "data.npy")


def test_non_utf8_csv_refused(tmp_path):
    (tmp_path / "data.csv").write_bytes(b"1,2\n\xff\xfe,3\n")
    with pytest.raises(ValueError, match=r"data\.csv could not be read as a \.csv file \(it is not UTF-8 text\)"):
        load_vectors(tmp_path / "data.csv")


def test_unknown_suffix_lists_accepted_ones(tmp_path):
    path = write(tmp_path / "data.txt", "1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"data\.txt has suffix '\.txt'.*\.npy, \.csv, \.pt"):
        load_vectors(path)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        load_vectors(path)


def test_check_width_mismatch_names_file_and_both_widths():
    with pytest.raises(ValueError, match=r"^new\.csv has 5 features per row but the run models 4$"):
        check_width(torch.zeros(3, 5), 4, "new.csv")


def test_check_width_match_passes():
    assert check_width(torch.zeros(3, 4), 4, "new.csv") is None
