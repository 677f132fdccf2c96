"""MNIST-like data sets read from the four standard IDX files.

The files are parsed with numpy (a 16-byte header for images, 8 for labels),
gzipped or not, with magic numbers and sizes checked and the MD5 sums of the
known originals verified. Nothing is ever downloaded: the files are found in a
data directory (see :func:`search_dirs` for the order).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from lunet.experiments.config.presets import IMAGE_DATASETS

__all__ = ["CLASS_NAMES", "SPLITS", "ENV_VAR", "FILES", "MD5", "SYSTEM_DIRS", "IDX_IMAGES", "IDX_LABELS",
           "read_idx", "user_cache_dir", "search_dirs", "find_file", "data_files", "load_dataset",
           "dataset_digest", "train_val_split"]

PathLike = Union[str, os.PathLike]

# what each label means, for pictures
CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
SPLITS = ("train", "test")
ENV_VAR = "LUNET_DATA_DIR"

# (images file, labels file) per split, under the names every MNIST loader uses.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# MD5 of the *uncompressed* originals, so a plain and a gzipped copy verify alike.
MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

# Directories a system package installs the files into (searched last).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}

# IDX magic numbers: two zero bytes, type code 0x08 (unsigned byte), rank.
IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801
_GZIP_MAGIC = b"\x1f\x8b"


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(choices)}")


def _read_bytes(path: Path) -> bytes:
    """The uncompressed contents of ``path``; gzip is recognised by content, not name."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: corrupt or truncated gzip data ({exc}); re-fetch the file") from exc


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4:
        raise ValueError(f"{path}: only {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic not in (IDX_IMAGES, IDX_LABELS):
        raise ValueError(
            f"{path}: not an IDX file of unsigned bytes: magic number 0x{magic:08x}, expected "
            f"0x{IDX_IMAGES:08x} (images, 3-D) or 0x{IDX_LABELS:08x} (labels, 1-D)"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: truncated header: expected {header} bytes for a rank-{ndim} IDX file, found {len(data)}"
        )
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        problem = "truncated" if found < expected else "trailing bytes after the data"
        raise ValueError(
            f"{path}: payload size does not match the header ({problem}): shape {shape} needs "
            f"{expected} bytes after the {header}-byte header, found {found}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzipped or plain.

    Returns a uint8 array of shape (N, rows, cols) for images (magic 0x00000803)
    or (N,) for labels (magic 0x00000801). Raises ``ValueError`` naming the file
    for a wrong magic number or a payload that does not match the header.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path).copy()


@functools.lru_cache(maxsize=16)
def _read_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, str]:
    # Keyed on the resolved path and its stat, so a replaced file is read again.
    p = Path(path)
    data = _read_bytes(p)
    digest = hashlib.md5(data).hexdigest()
    array = _parse_idx(data, p)  # a read-only view of ``data``: callers get copies
    return array, digest


def _read_with_md5(path: Path) -> tuple[np.ndarray, str]:
    resolved = path.resolve()
    st = resolved.stat()
    return _read_cached(str(resolved), st.st_mtime_ns, st.st_size)


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lunet`` if that variable holds an absolute path, else ``~/.cache/lunet``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "lunet"


def search_dirs(name: str, data_dir: Optional[PathLike] = None) -> list[tuple[Path, str]]:
    """The directories searched for data set ``name``, in order, each with its origin.

    Order: the explicit ``data_dir``, the ``LUNET_DATA_DIR`` environment
    variable, the per-user cache folder, then system directories (Debian's
    ``/usr/share/datasets/fashion-mnist`` for fashion-mnist). Each base
    directory is searched as ``<base>/<name>/`` and as ``<base>/``, so both the
    parent of the data set folders and the folder itself may be given.
    """
    _check_choice(name, IMAGE_DATASETS, "dataset")
    bases: list[tuple[Path, str]] = []
    if data_dir is not None:
        bases.append((Path(data_dir).expanduser(), "--data-dir"))
    env = os.environ.get(ENV_VAR, "")
    if env:
        bases.append((Path(env).expanduser(), ENV_VAR))
    bases.append((user_cache_dir(), "user cache"))
    dirs: list[tuple[Path, str]] = []
    for base, origin in bases:
        dirs.append((base / name, origin))
        dirs.append((base, origin))
    dirs.extend((Path(d), "system package") for d in SYSTEM_DIRS.get(name, ()))
    return dirs


def find_file(name: str, filename: str, data_dir: Optional[PathLike] = None) -> Path:
    """The first ``filename`` or ``filename.gz`` in :func:`search_dirs` order.

    Within one directory the plain file is preferred to the gzipped one (it
    reads faster; both verify against the same MD5). Raises
    ``FileNotFoundError`` listing every place searched and how to fix it.
    """
    dirs = search_dirs(name, data_dir)
    for directory, _ in dirs:
        for candidate in (directory / filename, directory / (filename + ".gz")):
            if candidate.is_file():
                return candidate
    looked = "\n".join(f"  {directory}/  ({origin})" for directory, origin in dirs)
    if not os.environ.get(ENV_VAR):
        looked += f"\n  ({ENV_VAR} is not set)"
    fix = (
        f"Fix: pass --data-dir DIR (data_dir=DIR) or set {ENV_VAR}=DIR, where DIR or DIR/{name} "
        f"holds the four IDX files ({', '.join(f for pair in FILES.values() for f in pair)}), plain or .gz"
    )
    if name == "fashion-mnist":
        fix += "; or install Debian's package: apt-get install dataset-fashion-mnist"
    raise FileNotFoundError(f"{name} file {filename} (or {filename}.gz) not found. Looked in:\n{looked}\n{fix}.")


def data_files(data_dir: Optional[PathLike] = None) -> list[tuple[Path, str]]:
    """Every IDX file of every data set that lies where :func:`search_dirs` looks (with
    ``data_dir``), plain or gzipped, each with what it is: files that no output may replace."""
    found = []
    for name in IMAGE_DATASETS:
        for directory, _ in search_dirs(name, data_dir):
            for filename in (f + suffix for pair in FILES.values() for f in pair for suffix in ("", ".gz")):
                if (directory / filename).is_file():
                    found.append((directory / filename, f"the {name} data file {filename} that lunet reads"))
    return found


def _verify(path: Path, name: str, filename: str, digest: str) -> None:
    expected = MD5[name][filename]
    if digest == expected:
        return
    # A common mistake is pointing one data set at the other's folder: say so.
    known = [f"{d}/{f}" for d, sums in MD5.items() for f, s in sums.items() if s == digest]
    what = f" It is the original {known[0]}, not {name}/{filename}." if known else ""
    hint = "apt-get install --reinstall dataset-fashion-mnist, or " if name == "fashion-mnist" else ""
    raise ValueError(
        f"{path}: MD5 of the uncompressed file is {digest}, expected {expected} for the original "
        f"{name}/{filename}.{what} Fix: re-fetch the file ({hint}copy it again from a good source), "
        f"or pass --no-verify (verify=False) if this is a deliberately modified copy."
    )


def _load_file(name: str, filename: str, data_dir: Optional[PathLike], verify: bool, ndim: int) -> np.ndarray:
    path = find_file(name, filename, data_dir)
    array, digest = _read_with_md5(path)
    if verify:
        _verify(path, name, filename, digest)
    if array.ndim != ndim:
        kind = "images (N, rows, cols)" if ndim == 3 else "labels (N,)"
        raise ValueError(f"{path}: expected {kind}, found an IDX array of shape {array.shape}")
    return array


def load_dataset(
    name: str, split: str, data_dir: Optional[PathLike] = None, verify: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split of an MNIST-like data set.

    ``name`` is one of :data:`IMAGE_DATASETS`, ``split`` ``"train"`` or ``"test"``.
    Returns images as a uint8 tensor (N, rows*cols) flattened row-major, i.e.
    (N, 784) for the standard files, and labels as int64 (N,). Files are found
    as described in :func:`search_dirs`; MD5 sums of the originals are checked
    unless ``verify=False``. Parsed files are cached in-process; every call
    returns fresh tensors that the caller may modify.
    """
    _check_choice(name, IMAGE_DATASETS, "dataset")
    _check_choice(split, SPLITS, "split")
    images_file, labels_file = FILES[split]
    images = _load_file(name, images_file, data_dir, verify, ndim=3)
    labels = _load_file(name, labels_file, data_dir, verify, ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{name} {split}: {images.shape[0]} images but {labels.shape[0]} labels; the files do not belong together"
        )
    x = torch.from_numpy(images.reshape(images.shape[0], -1).copy())
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def dataset_digest(name: str, data_dir: Optional[PathLike] = None) -> str:
    """One MD5 over the MD5s of the data set's four files: names the exact data a result came from."""
    digests = [_read_with_md5(find_file(name, f, data_dir))[1] for pair in FILES.values() for f in pair]
    return hashlib.md5("".join(digests).encode()).hexdigest()


def train_val_split(
    images: torch.Tensor, labels: torch.Tensor, num_val: int = 5000
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Split training data into ``((train_x, train_y), (val_x, val_y))``.

    The last ``num_val`` rows are the validation split, a fixed choice
    independent of any seed; model selection uses it, never the test set.
    Returns views of the inputs.
    """
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"images and labels differ in length: {n} vs {labels.shape[0]}")
    if isinstance(num_val, bool) or not isinstance(num_val, int) or not 0 < num_val < n:
        raise ValueError(f"num_val must be an integer in 1..{n - 1} for {n} training rows, got {num_val!r}")
    cut = n - num_val
    return (images[:cut], labels[:cut]), (images[cut:], labels[cut:])
