"""Users' own data sets of feature vectors for ``lunet train --data FILE``.

A data file holds N rows of D numbers as ``.npy``, ``.csv`` or ``.pt``.
Every file is read as a float64 tensor of shape (N, D) on the CPU, and
anything that is not one (the wrong shape, text, NaN or infinite values, a
damaged file) is refused with a one-line ``ValueError`` that names the file
and, for CSV, the line and column. Nothing in a file runs while it is read:
``.npy`` files are loaded without pickle and ``.pt`` files with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

import numpy as np
import torch

from lunet.experiments.config.errors import first_sentence
from lunet.experiments.config.models import short_repr
from lunet.experiments.files.atomic import write_atomic
from lunet.experiments.files.loads import load_weights_only

__all__ = ["VECTOR_SUFFIXES", "NPY_SIGNATURE", "NPZ_SIGNATURE", "load_vectors", "check_width", "check_fits_dtype",
           "read_header", "save_vectors"]

VECTOR_SUFFIXES = (".npy", ".csv", ".pt")
NPY_SIGNATURE = b"\x93NUMPY"
NPZ_SIGNATURE = b"PK\x03\x04"  # a zip file: np.load reads an .npz archive, refused below

_INT_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
_INT_DTYPES |= {getattr(torch, name) for name in ("uint16", "uint32", "uint64") if hasattr(torch, name)}


def load_vectors(path: str | os.PathLike, min_rows: int = 2) -> torch.Tensor:
    """Read N feature vectors of width D from a ``.npy``, ``.csv`` or ``.pt`` file.

    Returns a contiguous float64 CPU tensor of shape (N, D), N >= ``min_rows``
    (2 to train on: one row at least validates; 1 to evaluate) and D >= 1,
    every value finite. Bool and integer values are converted to float64.

    * ``.npy``: a 2-D array of bool, int or float (no pickled objects).
    * ``.pt``: one real tensor of that shape, nothing else in the file.
    * ``.csv``: comma-separated numbers, one row per line, with an optional
      header row (the first row is a header when one of its cells is text);
      blank lines are skipped and spaces around cells allowed.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (one
    line, naming the file) for anything else that is wrong; row indices in
    messages count from 0, CSV lines and columns from 1.
    """
    suffix = _suffix(path)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if not p.is_file():
        raise ValueError(f"{path} is not a file")
    if p.stat().st_size == 0:
        raise ValueError(f"{path} is empty")
    if suffix == ".npy":
        data, lines = _read_npy(path), None
    elif suffix == ".pt":
        data, lines = _read_pt(path), None
    else:
        data, lines = _read_csv(path)
    n, d = data.shape
    if n < min_rows:
        raise ValueError(f"{path} has {n} row{'' if n == 1 else 's'} of data; at least {min_rows} "
                         f"{'is' if min_rows == 1 else 'are'} needed (N < {min_rows})")
    if d == 0:
        raise ValueError(f"{path} has 0 columns (shape {tuple(data.shape)}); each row needs at least one feature")
    bad = ~torch.isfinite(data)
    count = int(bad.sum())
    if count:
        row = int(bad.any(dim=1).nonzero()[0, 0])
        where = f"row {row}" if lines is None else f"row {row}, line {lines[row]}"
        raise ValueError(
            f"{path}: {count} value{' is' if count == 1 else 's are'} NaN or infinite (the first in {where})"
        )
    return data


def check_width(data: torch.Tensor, features: int, path: str | os.PathLike) -> None:
    """``ValueError`` unless each row of ``data`` (N, D) has ``features`` features, the width the run models."""
    width = data.shape[1]
    if width != features:
        raise ValueError(
            f"{path} has {width} feature{'' if width == 1 else 's'} per row but the run models {features}"
        )


def check_fits_dtype(data: torch.Tensor, dtype: torch.dtype, path: str | os.PathLike) -> None:
    """``ValueError`` naming ``path`` when values of ``data`` (N, D) lie beyond the range of ``dtype``,
    the precision a run computes in: there they would become infinite, and every result NaN."""
    if not dtype.is_floating_point or torch.finfo(dtype).max >= torch.finfo(data.dtype).max:
        return
    top = torch.finfo(dtype).max
    over = data.abs() > top
    count = int(over.sum())
    if count:
        row = int(over.any(dim=1).nonzero()[0, 0])
        raise ValueError(
            f"{path}: {count} value{' lies' if count == 1 else 's lie'} beyond the range of "
            f"{str(dtype).removeprefix('torch.')} (±{top:.4g}), the precision the run computes in "
            f"(the first in row {row}, {float(data[over][0]):.4g}); rescale the data"
        )


def read_header(path: str | os.PathLike) -> Optional[list[str]]:
    """The column names of a ``.csv`` file's header row (as :func:`load_vectors` finds it), else None;
    call it on a file :func:`load_vectors` has read."""
    if _suffix(path) != ".csv":
        return None
    with open(path, newline="", encoding="utf-8-sig") as f:
        for cells in csv.reader(f):
            if len(cells) <= 1 and all(not c.strip() for c in cells):
                continue
            return [c.strip() for c in cells] if any(c.strip() and not _is_number(c) for c in cells) else None
    return None


def save_vectors(data: torch.Tensor, path: str | os.PathLike, header: Optional[Sequence[str]] = None) -> Path:
    """Write ``data`` of shape (N, D) to ``path`` as ``.npy``, ``.csv`` or ``.pt``, chosen by the suffix.

    ``.npy`` and ``.pt`` keep the tensor's dtype (``.npy`` widens dtypes numpy
    lacks, such as bfloat16, to float64); ``.csv`` starts with ``header`` (D names)
    if given and writes every value as the shortest decimal that reads back as the same float64.
    Parent folders are created, and the file is replaced atomically (a failed
    write leaves any old file as it was). Returns the path written.
    """
    suffix = _suffix(path)
    data = torch.as_tensor(data)
    if data.dim() != 2:
        raise ValueError(f"cannot save {path}: data of shape {tuple(data.shape)} is not 2-D (N, D)")
    if data.dtype not in _INT_DTYPES and not data.dtype.is_floating_point:
        raise ValueError(f"cannot save {path}: data of dtype {data.dtype} are not real numbers")
    if header is not None and len(header) != data.shape[1]:
        raise ValueError(f"cannot save {path}: a header of {len(header)} names for {data.shape[1]} columns")
    data = data.detach().cpu().contiguous()

    def write(f: BinaryIO) -> None:
        if suffix == ".pt":
            torch.save(data, f)
        elif suffix == ".npy":
            try:
                array = data.numpy()
            except TypeError:  # a dtype numpy lacks (bfloat16, float8)
                array = data.to(torch.float64).numpy()
            np.save(f, array, allow_pickle=False)
        else:
            if header is not None:
                text = io.StringIO()
                csv.writer(text, lineterminator="\n").writerow(header)
                f.write(text.getvalue().encode("utf-8"))
            f.write("".join(",".join(map(repr, row)) + "\n" for row in data.to(torch.float64).tolist()).encode("ascii"))

    return write_atomic(path, write)


def _suffix(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        accepted = ", ".join(VECTOR_SUFFIXES)
        found = f"suffix {Path(path).suffix!r}" if Path(path).suffix else "no suffix"
        raise ValueError(f"{path} has {found}; data files must end in one of {accepted}")
    return suffix


def _shape_message(path: str | os.PathLike, shape: tuple[int, ...]) -> str:
    hint = "; save a single feature as shape (N, 1)" if len(shape) == 1 else ""
    return f"{path} holds data of shape {tuple(shape)}, not 2-D (N rows, D features){hint}"


def _to_tensor(path: str | os.PathLike, data: torch.Tensor) -> torch.Tensor:
    """Check a loaded tensor is 2-D real numbers and convert it to contiguous float64 on the CPU."""
    if data.is_complex():
        raise ValueError(f"{path} holds complex numbers (dtype {data.dtype}); feature vectors must be real")
    if data.dtype not in _INT_DTYPES and not data.dtype.is_floating_point:
        raise ValueError(f"{path} holds values of dtype {data.dtype}, not real numbers (bool, int or float)")
    if data.dim() != 2:
        raise ValueError(_shape_message(path, tuple(data.shape)))
    if data.layout != torch.strided:
        data = data.to_dense()
    return data.detach().to(device="cpu", dtype=torch.float64).contiguous()


def _read_npy(path: str | os.PathLike) -> torch.Tensor:
    # numpy takes any file without its signature for a pickle: a picture renamed .npy would be "pickled data"
    with open(path, "rb") as f:
        head = f.read(len(NPY_SIGNATURE))
    if head.startswith(b"\x80"):  # the first byte of every binary pickle
        raise ValueError(f"{path} holds pickled Python data, not a numpy array, and is not loaded")
    if head != NPY_SIGNATURE and not head.startswith(NPZ_SIGNATURE):
        raise ValueError(f"{path} is not a .npy file: it does not begin with the .npy signature "
                         f"(its first bytes are {head!r})")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise ValueError(f"{path} holds values of dtype object, not real numbers (bool, int or float)") from None
        raise ValueError(f"{path} could not be read as a .npy file ({first_sentence(exc)})") from None
    except Exception as exc:
        raise ValueError(f"{path} could not be read as a .npy file ({first_sentence(exc)})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive under a .npy name
        if hasattr(array, "close"):
            array.close()
        raise ValueError(f"{path} could not be read as a .npy file (it is an .npz archive)")
    if array.dtype.kind == "c":
        raise ValueError(f"{path} holds complex numbers (dtype {array.dtype}); feature vectors must be real")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path} holds values of dtype {array.dtype}, not real numbers (bool, int or float)")
    if array.ndim != 2:
        raise ValueError(_shape_message(path, array.shape))
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))


def _read_pt(path: str | os.PathLike) -> torch.Tensor:
    obj = load_weights_only(path, ".pt file", "a .pt data file must hold one tensor")
    if not isinstance(obj, torch.Tensor):
        found = type(obj).__name__
        if isinstance(obj, dict) and obj:
            keys = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
            found += f" with keys {keys}"
        raise ValueError(f"{path} holds a {found}, not a tensor; a .pt data file must hold one tensor of shape (N, D)")
    return _to_tensor(path, obj)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: str | os.PathLike) -> tuple[torch.Tensor, list[int]]:
    """The numbers of a CSV file, and the line each row came from (for messages)."""
    rows: list[list[float]] = []
    lines: list[int] = []
    header_line = header_width = width_line = width = None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for cells in reader:
                line = reader.line_num
                if len(cells) <= 1 and all(not c.strip() for c in cells):
                    continue  # a blank line
                if header_line is None and not rows and any(c.strip() and not _is_number(c) for c in cells):
                    header_line, header_width = line, len(cells)
                    continue
                if width is None:
                    width_line, width = line, len(cells)
                    if header_width is not None and width != header_width:
                        raise ValueError(
                            f"{path}: line {line} has {width} columns, "
                            f"the header on line {header_line} has {header_width}"
                        )
                elif len(cells) != width:
                    raise ValueError(f"{path}: line {line} has {len(cells)} columns, line {width_line} has {width}")
                row = []
                for column, cell in enumerate(cells, start=1):
                    if not cell.strip():
                        raise ValueError(f"{path}: line {line}, column {column} is empty")
                    try:
                        row.append(float(cell))
                    except ValueError:
                        hint = "; the file must be comma-separated" if (";" in cell or "\t" in cell) else ""
                        raise ValueError(
                            f"{path}: line {line}, column {column}: {short_repr(cell.strip())} is not a number{hint}"
                        ) from None
                rows.append(row)
                lines.append(line)
    except UnicodeDecodeError:
        raise ValueError(f"{path} could not be read as a .csv file (it is not UTF-8 text)") from None
    except csv.Error as exc:
        raise ValueError(f"{path} could not be read as a .csv file ({first_sentence(exc)})") from None
    if not rows:
        return torch.empty(0, header_width or 0, dtype=torch.float64), lines
    return torch.tensor(rows, dtype=torch.float64), lines
