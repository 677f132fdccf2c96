"""The data every model of the peers benchmark sees: images and vectors in one shared space
(dequantised, logit, standardised), with the Jacobian that makes each figure the data's likelihood."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch

from lunet.experiments.benchmarks.peers.models import require
from lunet.experiments.benchmarks.peers.protocol import (
    BREAST_CANCER_DROPPED,
    DATASETS,
    FIT_SEED,
    FULL_IMAGE_ROWS,
    QUICK_GMM2D_TEST,
    QUICK_IMAGE_ROWS,
    SPLIT_SEED,
    TEST_SEED,
    VAL_SEED,
)
from lunet.experiments.config.presets import DEFAULT_LAM
from lunet.experiments.data.preprocess import ImagePreprocessor, bits_per_dim, logit_transform
from lunet.standardize import Standardize

__all__ = ["ImageSpace", "VectorSpace", "PeerData", "images_from_pixels", "vectors_from_splits", "load_images",
           "load_gmm2d", "load_breast_cancer", "load"]


class ImageSpace:
    """Pixels (B, D) 0..255 -> the models' space ``h`` (B, D): uniform dequantisation, lunet's
    logit transform with ``lam``, then a fixed standardisation fitted on the training split.

    ``log p(y) = log p_model(h) + logdet`` for the dequantised ``y = (x + u) / 256``."""

    def __init__(self, features: int, lam: float = DEFAULT_LAM) -> None:
        self.pre = ImagePreprocessor(lam, features)
        self.standardize = Standardize(features)
        self.features = features

    @torch.no_grad()
    def fit(self, pixels: torch.Tensor, seed: int = FIT_SEED, chunk: int = 5000) -> "ImageSpace":
        """Fit the standardisation to the logits of one seeded dequantisation of ``pixels`` (N, D)."""
        gen = torch.Generator().manual_seed(seed)
        logits = torch.cat([self.pre.to_model_space(pixels[i : i + chunk], gen)[0]
                            for i in range(0, pixels.shape[0], chunk)])
        self.standardize.fit(logits)
        return self

    def from_dequantised(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (B, D) in [0, 1] -> ``(h, log|det ∂h/∂y|)``, (B, D) and (B,)."""
        logits, logdet = logit_transform(y, self.pre.lam)
        h, std_logdet = self.standardize(logits)
        return h, logdet + std_logdet

    def from_pixels(self, x: torch.Tensor, generator: Optional[torch.Generator] = None,
                    noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (B, D), dequantised with ``noise`` or a draw from ``generator`` -> ``(h, logdet)``."""
        logits, logdet = self.pre.to_model_space(x, generator, noise=noise)
        h, std_logdet = self.standardize(logits)
        return h, logdet + std_logdet

    def to_data(self, h: torch.Tensor) -> torch.Tensor:
        """Model-space ``h`` (B, D) -> dequantised images ``y`` (B, D) in [0, 1]."""
        logits, _ = self.standardize.inverse(h)
        return self.pre.to_images(logits)

    def figure(self, log_p: torch.Tensor) -> torch.Tensor:
        """``log p(y)`` (N,) nats -> bits/dim (N,), lunet's standard figure (a uniform model scores 8)."""
        return bits_per_dim(log_p, self.features)


class VectorSpace:
    """Raw vectors (B, D) -> ``h`` (B, D) by a standardisation fitted on the training split;
    ``log p(x) = log p_model(h) + logdet``. ``entropy``: the truth's differential entropy in
    nats when known, and then the figure is KL(truth || model) per point, else nats/dim."""

    def __init__(self, features: int, entropy: Optional[float] = None) -> None:
        self.standardize = Standardize(features)
        self.features = features
        self.entropy = entropy

    def fit(self, x: torch.Tensor) -> "VectorSpace":
        self.standardize.fit(x)
        return self

    def from_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, D) -> ``(h, log|det ∂h/∂x|)``, (B, D) and (B,)."""
        return self.standardize(x)

    def to_data(self, h: torch.Tensor) -> torch.Tensor:
        return self.standardize.inverse(h)[0]

    def figure(self, log_p: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` (N,) nats -> KL contributions ``−log p − H`` (nats per point) or nats/dim (N,)."""
        if self.entropy is not None:
            return -log_p - self.entropy
        return -log_p / self.features


@dataclass
class PeerData:
    """One data set, ready for every model: the training rows (pixels for images, ``h`` for vectors),
    the validation and test sets already in model space with their Jacobians (float64), the space."""

    name: str
    kind: str  # "images" or "vectors"
    unit: str
    space: Union[ImageSpace, VectorSpace]
    train: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    image_shape: Optional[tuple[int, int]] = None
    train_logdet: Optional[torch.Tensor] = None  # vectors: log|det| of the standardisation, one number

    @property
    def features(self) -> int:
        return self.train.shape[1]

    def train_batch(self, rows: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of the training split in model space, ``(h, logdet)``; images get fresh noise from ``generator``."""
        if self.kind == "images":
            assert isinstance(self.space, ImageSpace)  # images come in their own space
            return self.space.from_pixels(self.train[rows], generator)
        assert self.train_logdet is not None  # vectors always carry their standardisation's
        h = self.train[rows]
        return h, self.train_logdet.expand(h.shape[0])

    @torch.no_grad()
    def train_in_model_space(self, chunk: int = 5000) -> torch.Tensor:
        """The training split in model space (N, D), images dequantised once from a fixed seed:
        what a recipe that starts from the data is built from."""
        if self.kind != "images":
            return self.train
        assert isinstance(self.space, ImageSpace)  # images come in their own space
        gen = torch.Generator().manual_seed(FIT_SEED)
        return torch.cat([self.space.from_pixels(self.train[i : i + chunk], gen)[0]
                          for i in range(0, self.train.shape[0], chunk)])

    def figure(self, log_p: torch.Tensor) -> tuple[float, float]:
        """Mean and standard error of the per-row figure for ``log p`` (N,) of the data, nats."""
        per_row = self.space.figure(log_p.double())
        n = per_row.numel()
        sem = float(per_row.std() / math.sqrt(n)) if n > 1 else 0.0
        return float(per_row.mean()), sem

    def to(self, device: torch.device) -> "PeerData":
        self.train = self.train.to(device)
        self.val = (self.val[0].to(device), self.val[1].to(device))
        self.test = (self.test[0].to(device), self.test[1].to(device))
        self.space.standardize.to(device)
        if self.train_logdet is not None:
            self.train_logdet = self.train_logdet.to(device)
        return self


@torch.no_grad()
def _fixed_draw(
    space: ImageSpace, pixels: torch.Tensor, seed: int, chunk: int = 5000
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    parts = [space.from_pixels(pixels[i : i + chunk], gen) for i in range(0, pixels.shape[0], chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]).double()


def images_from_pixels(name: str, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor,
                       lam: float = DEFAULT_LAM, image_shape: Optional[tuple[int, int]] = None,
                       info: Optional[dict[str, Any]] = None) -> PeerData:
    """An image data set from pixel splits (N, D) 0..255: the standardisation fitted on ``train``,
    validation and test dequantised once each from fixed seeds (the same tensors for every model)."""
    space = ImageSpace(train.shape[1], lam).fit(train)
    return PeerData(
        name=name, kind="images", unit="bits/dim", space=space, train=train,
        val=_fixed_draw(space, val, VAL_SEED), test=_fixed_draw(space, test, TEST_SEED),
        info={"num_train": train.shape[0], "num_val": val.shape[0], "num_test": test.shape[0], "lam": lam,
              **(info or {})},
        image_shape=image_shape,
    )


@torch.no_grad()
def vectors_from_splits(name: str, train: torch.Tensor, val: torch.Tensor, test: torch.Tensor,
                        entropy: Optional[float] = None, info: Optional[dict[str, Any]] = None) -> PeerData:
    """A vector data set from raw splits (N, D) float: the standardisation fitted on ``train``.
    With ``entropy`` (nats, the truth's) the figure is KL(truth || model), else nats/dim."""
    space = VectorSpace(train.shape[1], entropy).fit(train)
    h, logdet = space.from_raw(train)
    val_h, val_ld = space.from_raw(val)
    test_h, test_ld = space.from_raw(test)
    return PeerData(
        name=name, kind="vectors", unit="KL, nats" if entropy is not None else "nats/dim", space=space,
        train=h, val=(val_h, val_ld.double()), test=(test_h, test_ld.double()), train_logdet=logdet[0].clone(),
        info={"num_train": train.shape[0], "num_val": val.shape[0], "num_test": test.shape[0], **(info or {})},
    )


def load_images(name: str, data_dir: Optional[str] = None, quick: bool = False) -> PeerData:
    """MNIST or Fashion-MNIST as 784-d vectors: lunet's split (the last 5,000 training images
    validate), the 10,000 test images; the quick form takes the first rows of each."""
    from lunet.experiments.data.mnist import dataset_digest, load_dataset, train_val_split

    images, labels = load_dataset(name, "train", data_dir=data_dir)
    test, _ = load_dataset(name, "test", data_dir=data_dir)
    rows_train, rows_val, rows_test = QUICK_IMAGE_ROWS if quick else FULL_IMAGE_ROWS
    (train, _), (val, _) = train_val_split(images, labels, num_val=5000)
    train, val, test = train[:rows_train], val[:rows_val], test[:rows_test]
    return images_from_pixels(name, train, val, test, image_shape=(28, 28),
                              info={"source": f"{name} IDX files, md5 of the four {dataset_digest(name, data_dir)}",
                                    "split": "lunet's: the last 5,000 training images validate"})


def load_gmm2d(quick: bool = False) -> PeerData:
    """lunet's 2-D mixture (``gmm2d.make_splits(0)``): 9,000 / 3,000 / 50,000 points (the quick
    form tests on the first 10,000), exact entropy."""
    from lunet.experiments.data.mixture2d import GaussianMixture2D
    from lunet.experiments.runs.gmm2d import make_splits

    splits = make_splits(0)
    test = splits["test"][:QUICK_GMM2D_TEST] if quick else splits["test"]
    return vectors_from_splits("gmm2d", splits["train"], splits["val"], test,
                               entropy=GaussianMixture2D().entropy(),
                               info={"source": "lunet.experiments.runs.gmm2d.make_splits(0)",
                                     "figure": "KL = test NLL per point - entropy (1500² quadrature)"})


def load_breast_cancer() -> PeerData:
    """scikit-learn's bundled Wisconsin breast cancer measurements: 569 × 30 → 24 features (the six
    concavity features dropped: they share an atom at exactly 0), split 60/20/20 from a fixed seed."""
    datasets = require("sklearn.datasets", "the breast-cancer data set")
    bunch = datasets.load_breast_cancer()
    keep = [i for i, f in enumerate(bunch.feature_names) if f not in BREAST_CANCER_DROPPED]
    x = torch.tensor(bunch.data[:, keep], dtype=torch.float64)
    n = x.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train, n_val = round(0.6 * n), round(0.2 * n)
    parts = order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]
    train, val, test = (x[p].float() for p in parts)
    return vectors_from_splits("breast-cancer", train, val, test,
                               info={"source": "sklearn.datasets.load_breast_cancer (bundled, offline)",
                                     "features": [bunch.feature_names[i] for i in keep],
                                     "dropped": list(BREAST_CANCER_DROPPED)})


def load(name: str, data_dir: Optional[str] = None, quick: bool = False) -> PeerData:
    """Data set ``name`` (one of :data:`DATASETS`)."""
    if name in ("mnist", "fashion-mnist"):
        return load_images(name, data_dir, quick)
    if name == "gmm2d":
        return load_gmm2d(quick)
    if name == "breast-cancer":
        return load_breast_cancer()
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
