"""IDX parsing, checksums, data-directory resolution and the real MNIST-like files."""

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import idx_bytes, write_idx
from lunet.experiments.config.presets import IMAGE_DATASETS
from lunet.experiments.data import mnist as data
from lunet.experiments.data.mnist import (
    find_file,
    load_dataset,
    read_idx,
    search_dirs,
    train_val_split,
    user_cache_dir,
)

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


def write_split(directory: Path, split: str, n: int = 3, label: int = 0, gz: bool = False, side: int = 4):
    """Small images (n, side, side) and labels all equal to ``label`` under the real file names."""
    images_name, labels_name = data.FILES[split]
    images = np.arange(n * side * side, dtype=np.int64).reshape(n, side, side) % 256
    labels = np.full(n, label)
    write_idx(directory / images_name, images, gz)
    write_idx(directory / labels_name, labels, gz)
    return images.astype(np.uint8), labels


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    """No LUNET_DATA_DIR, a private HOME and cache, no system directories."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "system" / "fashion-mnist"),)})
    return tmp_path


# --- IDX parsing -----------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_read_idx_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 2)).astype(np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    got_images = read_idx(write_idx(tmp_path / "img", images, gz))
    got_labels = read_idx(write_idx(tmp_path / "lab", labels, gz))
    assert got_images.dtype == np.uint8 and got_images.shape == (5, 3, 2)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_idx_recognises_gzip_by_content(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path), labels)


def test_read_idx_wrong_magic(tmp_path):
    raw = bytearray(idx_bytes(np.zeros(4, dtype=np.uint8)))
    raw[2] = 0x0D  # float32 type code: not unsigned bytes
    path = tmp_path / "float.idx"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"float\.idx.*magic number 0x00000d01.*expected 0x00000803.*0x00000801"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_read_idx_truncated_and_oversized_payload(tmp_path, gz):
    raw = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))
    cases = {"short": (raw[:-1], "truncated.*needs 18 bytes.*found 17"), "long": (raw + b"\0", "trailing.*found 19")}
    for name, (payload, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(gzip.compress(payload) if gz else payload)
        with pytest.raises(ValueError, match=rf"{name}: payload size does not match the header \({message}"):
            read_idx(path)


def test_read_idx_truncated_header_and_corrupt_gzip(tmp_path):
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))[:10])
    with pytest.raises(ValueError, match="short: truncated header: expected 16 bytes.*found 10"):
        read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(idx_bytes(np.zeros(100, dtype=np.uint8)))[:-12])
    with pytest.raises(ValueError, match="broken.gz: corrupt or truncated gzip"):
        read_idx(broken)


# --- checksums, resolution, errors ----------------------------------------------------


def test_checksum_mismatch_and_no_verify(clean_env):
    root = clean_env / "data"
    images, labels = write_split(root / "mnist", "train", n=3, label=7)
    with pytest.raises(ValueError) as info:
        load_dataset("mnist", "train", data_dir=root)
    message = str(info.value)
    expected = data.MD5["mnist"]["train-images-idx3-ubyte"]
    assert "train-images-idx3-ubyte" in message and expected in message
    actual = hashlib.md5(idx_bytes(images)).hexdigest()
    assert actual in message and "re-fetch" in message and "--no-verify" in message

    x, y = load_dataset("mnist", "train", data_dir=root, verify=False)
    assert x.dtype == torch.uint8 and x.shape == (3, 16)
    assert y.dtype == torch.int64 and y.tolist() == [7, 7, 7]
    assert torch.equal(x, torch.from_numpy(images.reshape(3, 16)))


def test_missing_file_message_lists_every_place(clean_env, monkeypatch):
    env_dir = clean_env / "env"
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    explicit = clean_env / "explicit"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "test", data_dir=explicit)
    message = str(info.value)
    assert message.count("\n") >= 7  # one message, every place on its own line
    assert "t10k-images-idx3-ubyte" in message
    for place in [
        explicit / "fashion-mnist",
        explicit,
        env_dir / "fashion-mnist",
        env_dir,
        clean_env / "home" / ".cache" / "lunet" / "fashion-mnist",
        clean_env / "system" / "fashion-mnist",
    ]:
        assert f"{place}/" in message
    assert "--data-dir DIR" in message and data.ENV_VAR in message
    assert "apt-get install dataset-fashion-mnist" in message

    monkeypatch.delenv(data.ENV_VAR)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", "train")
    message = str(info.value)
    assert f"{data.ENV_VAR} is not set" in message and "apt-get" not in message


def test_fashion_mnist_system_directory_is_searched_last():
    assert data.SYSTEM_DIRS["fashion-mnist"] == ("/usr/share/datasets/fashion-mnist",)
    dirs = [str(d) for d, _ in search_dirs("fashion-mnist", data_dir="/x")]
    assert dirs[-1] == "/usr/share/datasets/fashion-mnist"
    assert "/usr/share/datasets/fashion-mnist" not in [str(d) for d, _ in search_dirs("mnist")]


def test_system_directory_is_used(clean_env):
    write_split(clean_env / "system" / "fashion-mnist", "test", label=4)
    _, y = load_dataset("fashion-mnist", "test", verify=False)
    assert y.tolist() == [4, 4, 4]


def test_resolution_order(clean_env, monkeypatch):
    explicit, env_dir, xdg = clean_env / "explicit", clean_env / "env", clean_env / "xdg"
    home_cache = clean_env / "home" / ".cache" / "lunet"
    # A distinct label marks which directory each load came from.
    write_split(explicit / "mnist", "test", label=1)
    write_split(env_dir, "test", label=2, gz=True)  # the data set folder itself
    write_split(xdg / "lunet" / "mnist", "test", label=3)
    write_split(home_cache / "mnist", "test", label=4)
    monkeypatch.setenv(data.ENV_VAR, str(env_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))

    def source(**kw):
        return load_dataset("mnist", "test", verify=False, **kw)[1][0].item()

    assert source(data_dir=explicit) == 1
    assert source(data_dir=str(explicit / "mnist")) == 1
    assert source() == 2
    monkeypatch.delenv(data.ENV_VAR)
    assert source() == 3
    assert user_cache_dir() == xdg / "lunet"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == home_cache
    assert source() == 4
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # invalid by the XDG spec: ignored
    assert user_cache_dir() == home_cache


def test_dataset_folder_beats_base_and_plain_beats_gzip(clean_env):
    base = clean_env / "base"
    write_split(base, "test", label=5)
    write_split(base / "mnist", "test", label=6, gz=True)
    assert load_dataset("mnist", "test", data_dir=base, verify=False)[1][0].item() == 6
    write_split(base / "mnist", "test", label=8)  # plain beside gzip in the same folder
    assert find_file("mnist", "t10k-labels-idx1-ubyte", base) == base / "mnist" / "t10k-labels-idx1-ubyte"
    assert load_dataset("mnist", "test", data_dir=base, verify=False)[1][0].item() == 8


def test_unknown_name_or_split():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; valid choices: mnist, fashion-mnist"):
        load_dataset("cifar10", "train")
    with pytest.raises(ValueError, match="unknown split 'val'; valid choices: train, test"):
        load_dataset("mnist", "val")


def test_mismatched_files_and_wrong_rank(clean_env):
    root = clean_env / "d"
    write_split(root, "train", n=3)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(ValueError, match="3 images but 4 labels"):
        load_dataset("mnist", "train", data_dir=root, verify=False)
    write_idx(root / "train-images-idx3-ubyte", np.zeros(4))  # labels where images belong
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: expected images \(N, rows, cols\)"):
        load_dataset("mnist", "train", data_dir=root, verify=False)


def test_cache_returns_independent_copies_and_sees_replaced_files(clean_env):
    root = clean_env / "d"
    write_split(root, "test", label=2)
    hits = data._read_cached.cache_info().hits
    x1, y1 = load_dataset("mnist", "test", data_dir=root, verify=False)
    x1.zero_()
    y1.fill_(9)
    x2, y2 = load_dataset("mnist", "test", data_dir=root, verify=False)
    assert data._read_cached.cache_info().hits >= hits + 2  # the second load parsed nothing
    assert x2.sum() > 0 and y2.tolist() == [2, 2, 2]
    write_split(root, "test", n=5, label=3)
    _, y3 = load_dataset("mnist", "test", data_dir=root, verify=False)
    assert y3.tolist() == [3] * 5


def test_train_val_split_small():
    x = torch.arange(20).reshape(10, 2)
    y = torch.arange(10)
    (tx, ty), (vx, vy) = train_val_split(x, y, num_val=3)
    assert ty.tolist() == list(range(7)) and vy.tolist() == [7, 8, 9]
    assert torch.equal(tx, x[:7]) and torch.equal(vx, x[7:])
    for bad in (0, 10, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_val must be an integer in 1..9"):
            train_val_split(x, y, num_val=bad)
    with pytest.raises(ValueError, match="differ in length"):
        train_val_split(x, y[:9])


# --- the real files -----------------------------------------------------------------

requires_shared_data = pytest.mark.skipif(
    not all((SHARED_DATA / name).is_dir() for name in IMAGE_DATASETS),
    reason=f"shared data folders not found under {SHARED_DATA}",
)

# First labels and class counts of the originals: a check on the parsing order,
# beyond the MD5 of the bytes.
FIRST_LABELS = {
    ("mnist", "train"): [5, 0, 4],
    ("mnist", "test"): [7, 2, 1],
    ("fashion-mnist", "train"): [9, 0, 0],
    ("fashion-mnist", "test"): [9, 2, 1],
}
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@requires_shared_data
@pytest.mark.parametrize("name", IMAGE_DATASETS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_real_data(name, split):
    x, y = load_dataset(name, split, data_dir=SHARED_DATA)  # verify=True: MD5 checked
    n = 60000 if split == "train" else 10000
    assert x.shape == (n, 784) and x.dtype == torch.uint8
    assert y.shape == (n,) and y.dtype == torch.int64
    assert int(y.min()) == 0 and int(y.max()) == 9
    assert y[:3].tolist() == FIRST_LABELS[name, split]
    counts = torch.bincount(y, minlength=10).tolist()
    if name == "fashion-mnist":
        assert counts == [n // 10] * 10
    elif split == "train":
        assert counts == MNIST_TRAIN_COUNTS
    assert 0 < x.float().mean() < 255 and int(x.max()) == 255


@requires_shared_data
def test_real_data_from_dataset_folder_and_env(monkeypatch):
    x1, _ = load_dataset("mnist", "test", data_dir=SHARED_DATA / "mnist")
    monkeypatch.setenv(data.ENV_VAR, str(SHARED_DATA))
    x2, _ = load_dataset("mnist", "test")
    assert torch.equal(x1, x2)


@requires_shared_data
def test_real_data_wrong_folder_is_named(clean_env):
    with pytest.raises(ValueError, match="It is the original fashion-mnist/t10k-images-idx3-ubyte, not mnist"):
        load_dataset("mnist", "test", data_dir=SHARED_DATA / "fashion-mnist")


@requires_shared_data
def test_real_train_val_split():
    x, y = load_dataset("mnist", "train", data_dir=SHARED_DATA)
    (tx, ty), (vx, vy) = train_val_split(x, y)
    assert tx.shape == (55000, 784) and ty.shape == (55000,)
    assert vx.shape == (5000, 784) and vy.shape == (5000,)
    assert torch.equal(vx, x[-5000:]) and torch.equal(vy, y[-5000:])
    assert torch.equal(tx, x[:55000]) and torch.equal(ty, y[:55000])
