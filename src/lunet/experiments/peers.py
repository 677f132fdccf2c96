"""LU-Net beside the flows users pick instead (zuko's MAF, RealNVP and NSF), under one protocol.

Every model sees the same tensors: images are dequantised, mapped to logits
(lunet's :class:`~lunet.experiments.preprocess.ImagePreprocessor`) and standardised
by a :class:`~lunet.Standardize` fitted once on the training split; vectors are
standardised the same way. The Jacobian of that shared map is added to every
model's ``log_prob``, so each figure is the likelihood of the data: bits/dim of
the dequantised images (lunet's :func:`~lunet.experiments.preprocess.bits_per_dim`),
nats/dim of raw vectors, KL(truth || model) in nats for the 2-D mixture.

Training: Adam, one learning rate and batch size, the same gradient clipping,
the same batch order and noise (one seed), the clock running only during
training steps. In the constant-rate form each model trains once, for the
largest wall-clock budget, at one rate; in the scheduled form it trains once
per budget, from the same start, its rate falling on a cosine to zero at that
budget's last training second: the best it reaches when it knows its time.
Validation runs at intervals with the clock paused; at each budget mark the
test figure of the best-validation weights so far is reported. Then parameters, peak training
memory, density and sampling speed. Definitions: ``docs/peers.md``.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from lunet.experiments.bench import _proc_status_kib, time_call
from lunet.experiments.peer_models import MODELS, MissingExtra, PeerModel, available, build, require
from lunet.experiments.preprocess import ImagePreprocessor, bits_per_dim, logit_transform
from lunet.experiments.rundir import check_output, read_text, write_text_atomic
from lunet.experiments.schedule import rate_factor
from lunet.experiments.settings import DEFAULT_LAM
from lunet.standardize import Standardize

SCHEMA = "lunet-peers/1"
DATASETS = ("mnist", "fashion-mnist", "gmm2d", "breast-cancer")
DEFAULT_BUDGETS = {"images": [60.0, 300.0, 1200.0], "vectors": [10.0, 30.0, 60.0]}
QUICK_BUDGETS = {"images": [5.0, 15.0], "vectors": [2.0, 5.0]}
QUICK_DATASETS = ("mnist", "gmm2d", "breast-cancer")
# rows of the image splits: (train, validation, test); None = all
FULL_IMAGE_ROWS = (None, 5000, None)
QUICK_IMAGE_ROWS = (10000, 500, 500)
QUICK_GMM2D_TEST = 10000
# fixed seeds of the data side, apart from the run's seed, so that every run scores the same tensors
FIT_SEED, VAL_SEED, TEST_SEED, SPLIT_SEED = 101, 102, 103, 0
# breast cancer's six concavity features hold exact zeros in the same 13 rows (an atom)
BREAST_CANCER_DROPPED = ("mean concavity", "mean concave points", "concavity error", "concave points error",
                         "worst concavity", "worst concave points")
LOG = Callable[[str], None]
SCHEDULES = ("constant", "cosine")
# how the tables name each form of the benchmark
FORMS = {"constant": "constant-rate form: one run per model at one rate, marked at each budget",
         "cosine": "scheduled form: one run per model and budget, the rate falling on a cosine to zero at the "
                   "budget's last training second"}


@dataclass
class Protocol:
    """What is the same for every model. ``eval_first`` is the interval between validations as a
    fraction of the smallest budget; later ones come every ``eval_growth`` × the training time so far."""

    lr: float = 1e-3
    batch_size: int = 256
    grad_clip: Optional[float] = 10.0
    warmup_steps: int = 0  # the rate rises linearly to ``lr`` over this many steps, for every model alike
    # "constant": one run to the largest budget at one rate; "cosine": one run per budget, the rate
    # falling to zero at its last training second (after the warm-up), the same rule for every model
    schedule: str = "constant"
    seed: int = 0
    eval_first: float = 1 / 6
    eval_growth: float = 0.25
    eval_elements: int = 784_000  # numbers per evaluation batch: 1,000 images, or more rows of narrower vectors
    density_batch: int = 1000
    speed_repeats: int = 3
    sample_cap_s: float = 120.0
    memory_steps: int = 2
    measure_memory: bool = True
    grid_samples: int = 10
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- the shared preprocessing ---------------------------------------------------------------


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
            return self.space.from_pixels(self.train[rows], generator)
        h = self.train[rows]
        return h, self.train_logdet.expand(h.shape[0])

    @torch.no_grad()
    def train_in_model_space(self, chunk: int = 5000) -> torch.Tensor:
        """The training split in model space (N, D), images dequantised once from a fixed seed:
        what a recipe that starts from the data is built from."""
        if self.kind != "images":
            return self.train
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
        self.val = tuple(t.to(device) for t in self.val)
        self.test = tuple(t.to(device) for t in self.test)
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
    from lunet.experiments.data import dataset_digest, load_dataset, train_val_split

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
    from lunet.experiments.gmm2d import make_splits
    from lunet.experiments.toy import GaussianMixture2D

    splits = make_splits(0)
    test = splits["test"][:QUICK_GMM2D_TEST] if quick else splits["test"]
    return vectors_from_splits("gmm2d", splits["train"], splits["val"], test,
                               entropy=GaussianMixture2D().entropy(),
                               info={"source": "lunet.experiments.gmm2d.make_splits(0)",
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


def family(name: str) -> str:
    """``"images"`` or ``"vectors"``: which list of budgets a data set trains under."""
    return "images" if name in ("mnist", "fashion-mnist") else "vectors"


# -- training under wall-clock budgets ------------------------------------------------------


def _divergence(exc: Exception) -> bool:
    # torch.distributions refuses a non-finite latent: "Expected value argument ... within the support"
    return isinstance(exc, ValueError) and "support" in str(exc)


def optimise_step(model: PeerModel, optimizer: torch.optim.Optimizer, h: torch.Tensor, logdet: torch.Tensor,
                  grad_clip: Optional[float]) -> float:
    """One step on the mean NLL per dimension of the data (nats); returns it, NaN if it was not finite
    (the weights are then left as they were)."""
    try:
        loss = -(model.log_prob(h) + logdet).mean() / h.shape[1]
    except ValueError as exc:
        if _divergence(exc):
            return math.nan
        raise
    value = float(loss.detach())
    if not math.isfinite(value):
        return math.nan
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return value


@torch.no_grad()
def data_log_prob(model: PeerModel, split: tuple[torch.Tensor, torch.Tensor], elements: int = 784_000) -> torch.Tensor:
    """``log p`` of the data (N,) float64 nats: the model's ``log_prob`` of ``h`` plus the shared Jacobian,
    in batches of about ``elements`` numbers; NaN where the model refuses its input."""
    h, logdet = split
    batch = max(1, elements // h.shape[1])
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, h.shape[0], batch):
        part = h[start : start + batch]
        try:
            lp = model.log_prob(part).double()
        except ValueError as exc:
            if not _divergence(exc):
                raise
            lp = torch.full((part.shape[0],), math.nan, dtype=torch.float64, device=part.device)
        out.append(lp + logdet[start : start + batch])
    model.train(was_training)
    return torch.cat(out)


class BestKeeper:
    """The best weights by validation figure (lower is better; non-finite never counts), with their test figure."""

    def __init__(self) -> None:
        self.val = math.inf
        self.test: Optional[tuple[float, float]] = None
        self.state: Optional[dict[str, torch.Tensor]] = None
        self.at_seconds: Optional[float] = None

    def offer(self, val: float, model: torch.nn.Module, seconds: float) -> bool:
        """Keep a copy of ``model``'s weights if ``val`` beats the best so far; returns whether it did."""
        if not (math.isfinite(val) and val < self.val):
            return False
        self.val, self.at_seconds = val, seconds
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


def warm_up(model: PeerModel, data: PeerData, protocol: Protocol) -> None:
    """One untimed step on a copy of ``model`` (its own optimiser, its own batch): the process's
    one-time costs (first autograd pass, allocator, thread pool) are paid outside every budget,
    whichever model runs first, and the model itself is left untouched."""
    copy_ = copy.deepcopy(model)
    optimizer = torch.optim.Adam([p for p in copy_.parameters() if p.requires_grad], lr=protocol.lr)
    gen = torch.Generator().manual_seed(protocol.seed + 1)
    rows = torch.arange(min(protocol.batch_size, data.train.shape[0]), device=data.train.device)
    h, logdet = data.train_batch(rows, gen)
    optimise_step(copy_, optimizer, h, logdet, protocol.grad_clip)


def train_with_budgets(model: PeerModel, data: PeerData, budgets: Sequence[float], protocol: Protocol,
                       log: Optional[LOG] = None) -> dict[str, Any]:
    """Train ``model`` up to the largest budget (training seconds: steps only, evaluation paused)
    and report each budget mark. Loads the best-validation weights at the end. The rate follows
    ``protocol``'s warm-up and schedule; a cosine reaches zero at the largest budget.

    Returns ``{"marks": [...], "curve": [...], "eval_seconds", "max_step_seconds", "diverged"}``:
    a mark per budget with the training and CPU seconds at which it was reached, steps, epochs, the
    best validation figure so far and the test figure (and its standard error) of those weights."""
    budgets = sorted(float(b) for b in budgets)
    if not budgets or budgets[0] <= 0:
        raise ValueError(f"budgets must be positive seconds, got {budgets}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=protocol.lr)
    gen = torch.Generator().manual_seed(protocol.seed)
    device = data.train.device
    n = data.train.shape[0]
    order = torch.randperm(n, generator=gen).to(device)
    position = 0
    clock = cpu = eval_seconds = max_step = 0.0
    steps = rows = 0
    keeper = BestKeeper()
    curve: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    diverged: Optional[str] = None
    first = protocol.eval_first * budgets[0]

    def evaluate() -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        val, _ = data.figure(data_log_prob(model, data.val, protocol.eval_elements))
        if keeper.offer(val, model, clock):
            keeper.test = data.figure(data_log_prob(model, data.test, protocol.eval_elements))
        curve.append({"train_seconds": clock, "val": val, "best_val": keeper.val,
                      "test": keeper.test[0] if keeper.test else None})
        eval_seconds += time.perf_counter() - start

    model.train()
    warm_up(model, data, protocol)
    evaluate()
    next_eval = first
    for budget in budgets:
        while clock < budget and diverged is None:
            target = min(next_eval, budget)
            while clock < target and diverged is None:
                start, start_cpu = time.perf_counter(), time.process_time()
                if position >= n:
                    order, position = torch.randperm(n, generator=gen).to(device), 0
                idx = order[position : position + protocol.batch_size]
                position += idx.numel()
                h, logdet = data.train_batch(idx, gen)
                factor = rate_factor(steps, protocol.schedule, protocol.warmup_steps, 0, clock / budgets[-1])
                for group in optimizer.param_groups:
                    group["lr"] = protocol.lr * factor
                loss = optimise_step(model, optimizer, h, logdet, protocol.grad_clip)
                took = time.perf_counter() - start
                clock += took
                cpu += time.process_time() - start_cpu
                max_step = max(max_step, took)
                steps += 1
                rows += idx.numel()
                if math.isnan(loss):
                    diverged = f"non-finite loss at step {steps} ({clock:.1f} training seconds)"
            evaluate()
            next_eval = clock + max(first, protocol.eval_growth * clock)
        mark = {"budget_s": budget, "train_seconds": clock, "process_seconds": cpu, "steps": steps,
                "epochs": rows / n, "val": keeper.val, "best_at_s": keeper.at_seconds,
                "test": keeper.test[0] if keeper.test else None, "test_sem": keeper.test[1] if keeper.test else None,
                "evaluations": len(curve)}
        if diverged is not None:
            mark["stopped"] = diverged
        marks.append(mark)
        if log:
            test = "—" if mark["test"] is None else f"{mark['test']:.4f} {data.unit}"
            log(f"  {budget:g} s: {clock:.1f} training s ({cpu:.1f} CPU s), {mark['epochs']:.2f} epochs, "
                f"test {test} (best validation at {keeper.at_seconds or 0:.1f} s)"
                + (f"; stopped: {diverged}" if diverged else ""))
    if keeper.state is not None:
        model.load_state_dict(keeper.state)
    model.eval()
    return {"marks": marks, "curve": curve, "eval_seconds": eval_seconds, "max_step_seconds": max_step,
            "diverged": diverged}


# -- speed and memory -----------------------------------------------------------------------


def _memory_probe(name: str, features: int, batch: int, steps: int, lr: float, grad_clip: Optional[float],
                  device: str) -> float:
    """In a fresh process: peak memory of ``steps`` training steps at ``batch``, MiB (see
    :func:`peak_training_memory_mib`)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    h = torch.randn(batch, features)
    logdet = torch.zeros(batch)
    if dev.type == "cpu":
        with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark: count from here
            f.write("5")
        before = _proc_status_kib("VmRSS")
    model = build(name, features, None).to(dev)
    h, logdet = h.to(dev), logdet.to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimise_step(model, optimizer, h, logdet, grad_clip)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return (_proc_status_kib("VmHWM") - before) / 1024


def peak_training_memory_mib(name: str, features: int, protocol: Protocol) -> float:
    """Peak memory of ``protocol.memory_steps`` training steps of model ``name`` at the protocol's batch.

    CPU: the peak resident set (VmHWM) of a fresh child process, reset once torch is imported,
    minus its resident set before the model existed: weights, gradients, Adam's state and the
    activations of a step, as ``lunet bench`` measures it. CUDA: ``max_memory_allocated``."""
    module = MODELS[name].build.__module__  # an entry registered elsewhere is imported there too
    code = (
        "import importlib, json\n"
        f"importlib.import_module({module!r})\n"
        "from lunet.experiments.peers import _memory_probe\n"
        f"print(json.dumps(_memory_probe({name!r}, {features}, {protocol.batch_size}, {protocol.memory_steps}, "
        f"{protocol.lr!r}, {protocol.grad_clip!r}, {protocol.device!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the memory probe of {name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def _rows(h: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``h``, repeated if it has fewer."""
    return h[:n] if h.shape[0] >= n else h.repeat(-(-n // h.shape[0]), 1)[:n]


def _timed_sampling(inference: Any, n: int, projected: float, cap: float, repeats: int,
                    device: torch.device) -> dict[str, Any]:
    """Time ``inference.sample(n)``: as many calls (up to ``repeats``) as the projection lets fit in ``cap``."""
    calls = max(1, min(repeats, int(cap / max(projected, 1e-9)) // 2))
    warmup = 1 if projected * (calls + 1) <= cap else 0
    with torch.no_grad():
        t = time_call(lambda: inference.sample(n), device, repeats=calls, warmup=warmup)
    return {"batch": n, "calls": calls, "warmup_calls": warmup, "seconds": t.median, "per_s": n / t.median,
            "ms_per_sample": t.median / n * 1e3, "projected_s": projected}


def measure_speed(name: str, model: PeerModel, data: PeerData, protocol: Protocol,
                  log: Optional[LOG] = None) -> dict[str, Any]:
    """Parameters, peak training memory, density throughput (batch ``protocol.density_batch``) and
    latency (batch 1), sampling throughput at the largest of 1,000 / 100 / 10 whose projected time
    fits ``protocol.sample_cap_s``, and batch-1 sampling latency.

    The projection (``sampling_passes`` × the density time of that batch) only decides whether to
    measure; every figure reported is measured, with its batch and number of calls. What did not fit
    is reported as not measured, with its projection."""
    device = torch.device(protocol.device)
    model.eval()
    inference = model.inference()
    counts = model.num_parameters()
    out: dict[str, Any] = {"params": counts["stored"], "params_free": counts["free"],
                           "sampling_passes": model.sampling_passes, "notes": []}
    out["peak_train_memory_mib"] = None
    if protocol.measure_memory:
        try:
            out["peak_train_memory_mib"] = peak_training_memory_mib(name, data.features, protocol)
        except RuntimeError as exc:
            out["notes"].append(str(exc))
    else:
        out["notes"].append("peak training memory not measured (measure_memory=False)")
    h = data.test[0]
    batch = protocol.density_batch
    x = _rows(h, batch)
    with torch.no_grad():
        t = time_call(lambda: inference.log_prob(x), device, repeats=protocol.speed_repeats)
        t1 = time_call(lambda: inference.log_prob(x[:1]), device, repeats=protocol.speed_repeats)
    out["density"] = {"batch": batch, "calls": protocol.speed_repeats, "seconds": t.median, "per_s": batch / t.median}
    out["density_batch1_ms"] = t1.median * 1e3
    cap, passes = protocol.sample_cap_s, model.sampling_passes
    projected1 = passes * t1.median
    if projected1 <= cap:
        out["sampling_batch1"] = _timed_sampling(inference, 1, projected1, cap, 5, device)
    else:
        out["sampling_batch1"] = {"per_s": None, "projected_s": projected1,
                                  "why": f"projected {projected1:.0f} s over the cap of {cap:g} s"}
    out["sampling"] = {"per_s": None}
    for n in (1000, 100, 10):
        if n == batch:
            t_n = t.median
        else:
            with torch.no_grad():
                t_n = time_call(lambda: inference.log_prob(_rows(h, n)), device, repeats=1).median
        projected = passes * t_n
        if projected <= cap:
            out["sampling"] = _timed_sampling(inference, n, projected, cap, protocol.speed_repeats, device)
            break
        out["sampling"] = {"per_s": None, "batch": n, "projected_s": projected,
                           "why": f"projected {projected:.0f} s at batch {n} over the cap of {cap:g} s"}
    if log:
        log(f"  speed: {_speed_line(out)}")
    return out


def grid_samples(model: PeerModel, data: PeerData, protocol: Protocol) -> dict[str, Any]:
    """``protocol.grid_samples`` images drawn from ``model`` (seeded) as base64 uint8 pixels, if their
    projected time fits the sampling cap; else why not."""
    n = protocol.grid_samples
    inference = model.inference()
    device = torch.device(protocol.device)
    with torch.no_grad():
        projected = model.sampling_passes * time_call(
            lambda: inference.log_prob(_rows(data.test[0], n)), device, repeats=1, warmup=0).median
    if projected > protocol.sample_cap_s:
        return {"pixels_b64": None, "why": f"projected {projected:.0f} s over the cap of {protocol.sample_cap_s:g} s"}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(protocol.seed)
        with torch.no_grad():
            h = inference.sample(n)
    bad = int((~torch.isfinite(h)).any(dim=-1).sum())
    if bad:  # a draw that overflowed has no picture; the model's figures stand without one
        return {"pixels_b64": None, "why": f"{bad} of {n} samples hold non-finite values"}
    y = data.space.to_data(h.float()).cpu()
    pixels = torch.nan_to_num(y * 256, nan=0.0).floor().clamp(0, 255).to(torch.uint8)
    return {"pixels_b64": base64.b64encode(pixels.numpy().tobytes()).decode(), "count": n, "shape": list(pixels.shape)}


def _speed_line(s: dict[str, Any]) -> str:
    sampling = s["sampling"]
    one = s["sampling_batch1"]
    mem = s.get("peak_train_memory_mib")
    return (f"{format_params(s['params'])} params, peak training memory "
            + ("—" if mem is None else f"{mem:.0f} MiB")
            + f", density {s['density']['per_s']:,.0f}/s, sampling "
            + (f"{sampling['per_s']:,.1f}/s (batch {sampling['batch']})" if sampling.get("per_s") else "not measured")
            + ", batch-1 sampling " + (f"{one['seconds'] * 1e3:,.1f} ms" if one.get("per_s") else "not measured"))


# -- the run: results file, tables, figures -------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Where the figures come from: platform, CPU, torch and its threads, package versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for package in ("torch", "zuko", "scikit-learn", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(), "versions": versions}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check(condition: bool, problem: str, problems: list[str]) -> None:
    if not condition:
        problems.append(problem)


def validate_results(doc: dict[str, Any]) -> list[str]:
    """The problems of a results document against the schema (empty when it conforms)."""
    problems: list[str] = []
    _check(doc.get("schema") == SCHEMA, f"schema is {doc.get('schema')!r}, not {SCHEMA!r}", problems)
    for key in ("protocol", "machine", "datasets", "budgets_s", "quick"):
        _check(key in doc, f"missing {key!r}", problems)
    for dname, d in doc.get("datasets", {}).items():
        for key in ("unit", "budgets_s", "info", "models"):
            _check(key in d, f"{dname}: missing {key!r}", problems)
        for mname, m in d.get("models", {}).items():
            where = f"{dname}/{mname}"
            for key in ("label", "marks", "curve", "speed", "eval_seconds", "max_step_seconds"):
                _check(key in m, f"{where}: missing {key!r}", problems)
            marks = m.get("marks", [])
            _check([mk.get("budget_s") for mk in marks] == d.get("budgets_s"), f"{where}: marks are not the budgets",
                   problems)
            for mk in marks:
                for key in ("train_seconds", "process_seconds", "steps", "epochs", "val", "test", "test_sem"):
                    _check(key in mk, f"{where} at {mk.get('budget_s')} s: missing {key!r}", problems)
            speed = m.get("speed", {})
            for key in ("params", "params_free", "peak_train_memory_mib", "density", "sampling", "sampling_batch1"):
                _check(key in speed, f"{where}: speed lacks {key!r}", problems)
    return problems


def combine_results(docs: Sequence[dict[str, Any]], names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """One results document from several runs of the benchmark (``names``: where each came from, for
    messages): every (data set, model) of each, the later one where two hold the same pair. The runs
    must conform to the schema and share the protocol, the budgets, the quick flag and the machine
    (its platform, processor, thread count and package versions); ``ValueError`` says which does not.
    The result lists each run's command and times under ``"runs"``."""
    names = list(names) if names is not None else [f"results {i + 1}" for i in range(len(docs))]
    if not docs:
        raise ValueError("combine_results needs at least one results document")
    first = docs[0]
    for name, doc in zip(names, docs):
        problems = validate_results(doc)
        if problems:
            raise ValueError(f"{name} is not a results file of this benchmark: {'; '.join(problems[:3])}")
        for key in ("protocol", "budgets_s", "quick", "machine"):
            if doc[key] != first[key]:
                raise ValueError(f"{name} was measured under another {key.replace('_s', '')} than {names[0]}: "
                                 f"figures of the two do not compare")
    combined: dict[str, Any] = {key: first[key] for key in ("schema", "quick", "machine", "protocol", "budgets_s")}
    combined["runs"] = [{"from": name, "command": doc.get("command", ""), "started": doc.get("started"),
                         "finished": doc.get("finished")} for name, doc in zip(names, docs)]
    combined["datasets"] = {}
    for doc in docs:
        for dname, d in doc["datasets"].items():
            entry = combined["datasets"].setdefault(dname, {**{k: v for k, v in d.items() if k != "models"},
                                                            "models": {}})
            entry["models"].update(d["models"])
    return combined


def _write(doc: dict[str, Any], out: Optional[Path]) -> None:
    if out is None:
        return
    doc["updated"] = _now()
    write_text_atomic(out, json.dumps(doc, indent=1) + "\n")  # a killed run keeps the previous file whole


def check_outputs(datasets: Sequence[Union[str, PeerData]], out: Optional[Path], figures: Optional[Union[str, Path]],
                  data_dir: Optional[str] = None) -> None:
    """Before anything is measured: ``ValueError`` naming the results file ``out`` or a picture in
    ``figures`` that cannot be written, or that would replace a data file or a file in a run folder
    (:func:`~lunet.experiments.rundir.check_output`)."""
    from lunet.experiments.data import data_files

    inputs = data_files(data_dir)
    if out is not None:
        check_output(out, "--out", inputs=inputs)
    if figures is None:
        return
    for item in datasets:
        name = item if isinstance(item, str) else item.name
        images = family(name) == "images" if isinstance(item, str) else item.kind == "images"
        for picture in ("curves", "samples") if images else ("curves",):
            check_output(Path(figures) / f"peers-{name}-{picture}.png", "--figures", inputs=inputs)


def run_peers(
    datasets: Sequence[Union[str, PeerData]],
    models: Sequence[str],
    budgets: dict[str, Sequence[float]],
    protocol: Protocol = Protocol(),
    out: Optional[Union[str, Path]] = None,
    figures: Optional[Union[str, Path]] = None,
    data_dir: Optional[str] = None,
    quick: bool = False,
    resume: bool = False,
    command: str = "",
    log: LOG = print,
) -> dict[str, Any]:
    """Every model on every data set under ``protocol``, one after the other in this process.

    ``budgets``: training seconds per family (``"images"``, ``"vectors"``). The results file ``out``
    is rewritten after each (data set, model); with ``resume`` the pairs it already holds, measured
    under the same protocol and budgets, are kept and not run again. Figures go to ``figures``.
    Both are checked before anything is measured (:func:`check_outputs`)."""
    out = Path(out) if out is not None else None
    budgets = {k: sorted(float(b) for b in v) for k, v in budgets.items()}
    for name in models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    check_outputs(datasets, out, figures, data_dir)
    doc: dict[str, Any] = {"schema": SCHEMA, "command": command, "quick": quick, "started": _now(),
                           "machine": machine_info(), "protocol": protocol.as_dict(), "budgets_s": budgets,
                           "datasets": {}}
    if resume and out is not None and out.exists():
        try:
            old = json.loads(read_text(out))
        except ValueError as exc:
            raise ValueError(f"{out} is no results file to resume ({exc}); remove it or run without --resume") from None
        same = (old.get("schema"), old.get("protocol"), old.get("budgets_s"), old.get("quick")) == (
            SCHEMA, doc["protocol"], budgets, quick)
        if not same:
            raise ValueError(f"{out} was measured under another protocol or other budgets; "
                             f"remove it or run without --resume")
        doc = old
    device = torch.device(protocol.device)
    for item in datasets:
        dname = item if isinstance(item, str) else item.name
        entry = doc["datasets"].setdefault(dname, {"models": {}})
        todo = [m for m in models if "speed" not in entry["models"].get(m, {})]
        if not todo:
            log(f"{dname}: every model already measured in {out}")
            continue
        data = load(item, data_dir, quick) if isinstance(item, str) else item
        data.to(device)
        fam = "images" if data.kind == "images" else "vectors"
        entry.update({"unit": data.unit, "kind": data.kind, "features": data.features, "budgets_s": budgets[fam],
                      "info": data.info})
        for mname in todo:
            log(f"{dname}: {mname}")
            start = time.perf_counter()
            model, trained = _train_model(mname, data, budgets[fam], protocol, log)
            result: dict[str, Any] = {"label": model.label, **trained}
            result["speed"] = measure_speed(mname, model, data, protocol, log)
            result["label"] = f"{model.label} ({format_params(result['speed']['params'])})"
            if data.kind == "images":
                result["samples"] = grid_samples(model, data, protocol)
            result["wall_seconds"] = time.perf_counter() - start
            entry["models"][mname] = result
            _write(doc, out)
            if figures is not None:
                draw_figures(doc, dname, Path(figures), data.image_shape)
    doc["finished"] = _now()
    _write(doc, out)
    return doc


def _build_model(name: str, data: PeerData, protocol: Protocol) -> PeerModel:
    """Model ``name`` at its start for ``data`` (its own initialisation, seeded), on the protocol's device."""
    start_data = data.train_in_model_space() if MODELS[name].needs_data else None
    model = build(name, data.features, start_data, seed=protocol.seed)
    return model.to(torch.device(protocol.device))


def _train_model(name: str, data: PeerData, budgets: Sequence[float], protocol: Protocol,
                 log: LOG) -> tuple[PeerModel, dict[str, Any]]:
    """Model ``name`` trained under ``protocol`` and its training record (:func:`train_with_budgets`'s).
    The scheduled form trains one model per budget from the same start; the record joins their marks,
    keeps each run's curve under ``"curves"`` (by budget) and the largest run's as ``"curve"``, and the
    model returned is the largest run's."""
    if protocol.schedule == "constant":
        model = _build_model(name, data, protocol)
        return model, train_with_budgets(model, data, budgets, protocol, log)
    runs = []
    for budget in sorted(budgets):
        log(f"  a run of {budget:g} training seconds")
        model = _build_model(name, data, protocol)
        runs.append(train_with_budgets(model, data, [budget], protocol, log))
    stopped = [r["diverged"] for r in runs if r["diverged"]]
    return model, {"marks": [r["marks"][0] for r in runs], "curve": runs[-1]["curve"],
                   "curves": {f"{b:g}": r["curve"] for b, r in zip(sorted(budgets), runs)},
                   "eval_seconds": sum(r["eval_seconds"] for r in runs),
                   "max_step_seconds": max(r["max_step_seconds"] for r in runs),
                   "diverged": stopped[0] if stopped else None}


# -- tables and pictures --------------------------------------------------------------------


def format_params(n: int) -> str:
    """A parameter count as the tables show it: 2.46M, 4.8k, 950."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _fmt_count(n: Optional[float], digits: int = 0) -> str:
    return "—" if n is None else f"{n:,.{digits}f}"


def markdown_tables(doc: dict[str, Any]) -> str:
    """Per data set: the test figure at each budget (epochs in brackets), the clocks behind the
    marks, and the speed table."""
    blocks = []
    for dname, d in doc["datasets"].items():
        if not d.get("models"):
            continue
        budgets = d["budgets_s"]
        unit = d["unit"]
        form = FORMS[doc["protocol"].get("schedule", "constant")]
        lines = [f"### {dname} ({unit}, lower is better; {form})", "",
                 "| model | " + " | ".join(f"{b:g} s" for b in budgets) + " |",
                 "|" + " --- |" * (1 + len(budgets))]
        for m in d["models"].values():
            cells = []
            for mk in m["marks"]:
                test = "—" if mk["test"] is None else f"{mk['test']:.3f} ± {mk['test_sem']:.3f}"
                cells.append(f"{test} ({mk['epochs']:.1f} ep)" + (" stopped" if mk.get("stopped") else ""))
            lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
        lines += ["", "| model | budget | training s | CPU s | steps | best validation at s | evaluation s (all) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in d["models"].values():
            for i, mk in enumerate(m["marks"]):
                lines.append(f"| {m['label'] if i == 0 else ''} | {mk['budget_s']:g} | {mk['train_seconds']:.1f} | "
                             f"{mk['process_seconds']:.1f} | {mk['steps']:,} | {_fmt_count(mk['best_at_s'], 1)} | "
                             + (f"{m['eval_seconds']:.1f}" if i == 0 else "") + " |")
        lines += ["", "| model | params (free) | peak training memory, MiB | density /s (batch) | "
                  "sampling /s (batch, calls) | batch-1 sampling, ms (calls) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m in d["models"].values():
            s = m["speed"]
            sampling, one = s["sampling"], s["sampling_batch1"]
            samp = (f"{sampling['per_s']:,.1f} ({sampling['batch']:,}, {sampling['calls']})" if sampling.get("per_s")
                    else f"not measured ({sampling.get('why', '')})")
            lat = (f"{one['seconds'] * 1e3:,.1f} ({one['calls']})" if one.get("per_s")
                   else f"not measured ({one.get('why', '')})")
            lines.append(f"| {m['label']} | {format_params(s['params'])} ({format_params(s['params_free'])}) | "
                         f"{_fmt_count(s['peak_train_memory_mib'])} | {s['density']['per_s']:,.0f} "
                         f"({s['density']['batch']:,}) | {samp} | {lat} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def draw_figures(doc: dict[str, Any], dname: str, folder: Path,
                 image_shape: Optional[tuple[int, int]] = None) -> list[Path]:
    """``peers-<dataset>-curves.png`` (test figure of the best-validation weights against training
    seconds, one line per model) and, for images, ``peers-<dataset>-samples.png`` (a row per model)."""
    from lunet.experiments.plots import plt, save_figure, save_image_grid

    d = doc["datasets"][dname]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in d["models"].values():
        points = [(c["train_seconds"], c["test"]) for c in m["curve"]
                  if c["test"] is not None and c["train_seconds"] > 0]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=".", label=m["label"])
    for b in d["budgets_s"]:
        ax.axvline(b, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel(f"test {d['unit']}, best-validation weights")
    ax.set_title(f"{dname}: {doc['machine']['torch_threads']} torch threads" + (", quick form" if doc["quick"] else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [save_figure(fig, folder / f"peers-{dname}-curves.png")]
    if image_shape is not None:
        rows, labels = [], []
        h, w = image_shape
        for m in d["models"].values():
            s = m.get("samples", {})
            if s.get("pixels_b64"):
                raw = torch.frombuffer(bytearray(base64.b64decode(s["pixels_b64"])), dtype=torch.uint8)
                rows.append(raw.reshape(-1, h, w).float() / 255)
                labels.append(m["label"])
            else:
                rows.append(torch.full((doc["protocol"]["grid_samples"], h, w), 0.5))
                labels.append(f"{m['label']}: not sampled")
        if rows:
            budget = d["budgets_s"][-1]
            paths.append(save_image_grid(torch.cat(rows), folder / f"peers-{dname}-samples.png",
                                         nrow=rows[0].shape[0], row_labels=labels,
                                         title=f"{dname}: samples after {budget:g} training seconds, T = 1"))
    return paths


def missing_extras(models: Sequence[str], datasets: Sequence[str]) -> list[str]:
    """The models and data sets whose optional packages are not installed."""
    missing = [m for m in models if not available(m)]
    if "breast-cancer" in datasets:
        try:
            require("sklearn.datasets", "the breast-cancer data set")
        except MissingExtra:
            missing.append("breast-cancer")
    return missing


__all__ = ["DATASETS", "DEFAULT_BUDGETS", "QUICK_BUDGETS", "QUICK_DATASETS", "ImageSpace", "MissingExtra",
           "PeerData", "Protocol", "VectorSpace", "data_log_prob", "draw_figures", "images_from_pixels", "load",
           "markdown_tables", "measure_speed", "missing_extras", "run_peers", "train_with_budgets",
           "validate_results", "vectors_from_splits"]
