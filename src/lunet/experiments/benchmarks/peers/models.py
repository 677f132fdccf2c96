"""The models of the peers benchmark (``lunet.experiments.benchmarks.peers``): LU-Net and zuko's flows.

Each entry of :data:`MODELS` builds, for vectors of width ``features``, a :class:`PeerModel`: an
``nn.Module`` with ``log_prob(h)`` (B, features) -> (B,) nats and ``sample(num_samples)`` ->
(num_samples, features), both in the benchmark's model space (the standardised data, see ``peers.py``).
Another recipe is one more entry::

    from lunet.experiments.benchmarks.peers.models import MODELS, ModelEntry, LUNetPeer

    MODELS["lunet-deep"] = ModelEntry("lunet-deep",
                                      lambda features, data: LUNetPeer(LUNet(features, 8), "LU-Net 8×784"),
                                      "LU-Net, 8 blocks")

zuko is an optional extra (``pip install .[peers]``): it is imported only when one of its
models is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from lunet.experiments.config.presets import GMM2DSettings, paper_lunet_spec, vector_lunet_spec
from lunet.flow import LUNet

__all__ = ["PEERS_EXTRA", "SMALL_DIM", "MissingExtra", "require", "PeerModel", "LUNetPeer", "ZukoPeer", "build_lunet",
           "build_lunet_gaussian", "build_lunet_spline", "build_lunet_best", "build_maf", "build_realnvp", "build_nsf",
           "ModelEntry", "MODELS", "available", "build"]

PEERS_EXTRA = "pip install .[peers]"
# bins per spline of the "lunet-best" model (the MNIST ablation's best, docs/results.md)
BEST_BINS = 16
# widths up to this are "vectors" (the 2-D mixture, tabular data): smaller peer networks
SMALL_DIM = 64


class MissingExtra(ImportError):
    """An optional package of the ``peers`` extra is not installed."""


def require(module: str, what: str) -> Any:
    """``import module``, or :class:`MissingExtra` naming ``pip install .[peers]``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{what} needs the optional package {module!r}: {PEERS_EXTRA} "
                           f"(from a clone of lunet) installs the pinned versions") from exc


class PeerModel(nn.Module):
    """A density model of the benchmark: ``log_prob`` (B, D) -> (B,) nats, ``sample(num_samples)`` -> (num_samples, D).

    ``label`` names the architecture (the tables add the parameter count);
    ``sampling_passes`` is how many network evaluations of a density pass one
    sample costs in sequence (1 for LU-Net and couplings, D for an autoregressive
    flow): it decides whether a sampling measurement fits the time cap."""

    label: str = ""
    sampling_passes: float = 1.0

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, num_samples: int) -> torch.Tensor:
        raise NotImplementedError

    def inference(self) -> Any:
        """What density and sampling are timed on: an object with ``log_prob`` and ``sample(num_samples)``."""
        return self

    def num_parameters(self) -> dict[str, int]:
        """``{"stored": trainable tensor elements, "free": those not fixed at zero by a mask or layout}``."""
        stored = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"stored": stored, "free": stored}


class LUNetPeer(PeerModel):
    """An :class:`~lunet.LUNet`; its own input standardisation stays the identity (the
    benchmark standardises every model's input alike)."""

    def __init__(self, net: LUNet, label: str) -> None:
        super().__init__()
        self.net = net
        self.label = label

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        return self.net.log_prob(h)

    def sample(self, num_samples: int) -> torch.Tensor:
        return self.net.sample(num_samples)

    def inference(self) -> Any:
        # the frozen flow is lunet's documented path for density and sampling from fixed weights
        return self.net.frozen()

    def num_parameters(self) -> dict[str, int]:
        # the packed LU matrix stores an unused diagonal: n of its n² + n elements per block are not learned
        stored = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"stored": stored, "free": self.net.num_parameters("free")}


class ZukoPeer(PeerModel):
    """A ``zuko.flows.Flow`` (unconditional): ``flow()`` is its distribution."""

    def __init__(self, flow: nn.Module, label: str) -> None:
        super().__init__()
        self.flow = flow
        self.label = label
        parts = list(getattr(flow.transform, "transforms", [flow.transform]))
        # MaskedAutoregressiveTransform inverts in `passes` sequential evaluations of its network
        self.sampling_passes = sum(float(getattr(t, "passes", 1)) for t in parts) / len(parts)

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        return self.flow().log_prob(h)

    def sample(self, num_samples: int) -> torch.Tensor:
        with torch.no_grad():
            return self.flow().sample((num_samples,))

    def num_parameters(self) -> dict[str, int]:
        stored = sum(p.numel() for p in self.parameters() if p.requires_grad)
        masked = 0
        for module in self.modules():
            mask = getattr(module, "mask", None)
            weight = getattr(module, "weight", None)
            if isinstance(mask, torch.Tensor) and isinstance(weight, nn.Parameter) and mask.shape == weight.shape:
                masked += int((mask == 0).sum())  # MADE's weights that the mask holds at zero
        return {"stored": stored, "free": stored - masked}


def _hidden(features: int, large: list[int], small: list[int]) -> list[int]:
    return large if features > SMALL_DIM else small


def build_lunet(features: int, data: Optional[torch.Tensor] = None) -> LUNetPeer:
    """lunet's recipe for the width: the paper's 4 blocks for images, 8 blocks of learned
    leaky-softplus slopes for vectors (the model docs/peers.md measured), the 2-D experiment's
    16 blocks for ``dim = 2``."""
    if features == 2:
        s = GMM2DSettings()
        net = LUNet(2, s.num_blocks, alpha=s.alpha, diag=s.diag, init_scale=s.init_scale, learn_alpha=s.learn_alpha)
        return LUNetPeer(net, f"LU-Net {s.num_blocks}×2")
    spec = (paper_lunet_spec(features=features) if features > SMALL_DIM
            else vector_lunet_spec(features, num_blocks=8, activation="leaky_softplus"))
    spec.pop("name")
    net = LUNet(**spec)
    which = "paper's " if features > SMALL_DIM else ""
    return LUNetPeer(net, f"LU-Net {which}{spec['num_blocks']}×{features}")


def build_lunet_gaussian(features: int, data: Optional[torch.Tensor] = None) -> LUNetPeer:
    """:func:`build_lunet`, started as lunet starts its image runs (``lunet train``'s default
    ``--data-init gaussian``): at the full-covariance Gaussian fit of the training data
    (``data`` (N, features), N > features; with fewer rows it stays at :func:`build_lunet`'s start)."""
    model = build_lunet(features)
    if data is not None and data.shape[0] > features:
        model.net.init_gaussian(data.to(next(model.parameters()).dtype))
        model.label += ", Gaussian start"
    return model


def _spline_lunet(features: int, what: str, **splines: Any) -> LUNetPeer:
    """lunet's network for the width (:func:`build_lunet`'s) with a monotone spline per feature in
    place of each leaky softplus, of the size ``splines`` gives (the spline's arguments of
    :class:`~lunet.LUNet`: ``bins``, ``input_spline``); ``what`` ends the label."""
    if features == 2:
        s = GMM2DSettings()
        net = LUNet(2, s.num_blocks, diag=s.diag, init_scale=s.init_scale, activation="spline", **splines)
    else:
        spec = (paper_lunet_spec(features=features, activation="spline", **splines) if features > SMALL_DIM
                else vector_lunet_spec(features, num_blocks=8, activation="spline", **splines))
        spec.pop("name")
        net = LUNet(**spec)
    return LUNetPeer(net, f"LU-Net {net.num_blocks}×{features}, {what}")


def build_lunet_spline(features: int, data: Optional[torch.Tensor] = None) -> LUNetPeer:
    """:func:`build_lunet`'s network with a monotone spline (8 bins on [-5, 5], one per
    feature) in place of each leaky softplus: LU layers and elementwise maps, nothing else."""
    return _spline_lunet(features, "splines")


def build_lunet_best(features: int, data: Optional[torch.Tensor] = None) -> LUNetPeer:
    """:func:`build_lunet_spline`'s network with the spline changes that won the MNIST ablation
    (docs/results.md): 16 bins per spline, and one more spline per feature before the first block."""
    return _spline_lunet(features, f"{BEST_BINS}-bin splines, input spline", bins=BEST_BINS, input_spline=True)


def _zuko_label(kind: str, transforms: int, hidden: list[int], extra: str = "") -> str:
    return f"zuko {kind} {transforms}×[{', '.join(map(str, hidden))}]{extra}"


def build_maf(features: int, data: Optional[torch.Tensor] = None) -> PeerModel:
    """zuko's MAF: 5 affine autoregressive transforms, MADE of one hidden layer of 1,024 for
    images, two of 128 for vectors; orders alternate."""
    zuko = require("zuko", "the zuko-maf model")
    hidden = _hidden(features, [1024], [128, 128])
    return ZukoPeer(zuko.flows.MAF(features, transforms=5, hidden_features=hidden), _zuko_label("MAF", 5, hidden))


def build_realnvp(features: int, data: Optional[torch.Tensor] = None) -> PeerModel:
    """zuko's RealNVP: 10 affine couplings on alternating checkered masks, MLP of one hidden
    layer of 1,024 for images, two of 128 for vectors."""
    zuko = require("zuko", "the zuko-realnvp model")
    hidden = _hidden(features, [1024], [128, 128])
    return ZukoPeer(zuko.flows.RealNVP(features, transforms=10, hidden_features=hidden),
                    _zuko_label("RealNVP", 10, hidden))


def build_nsf(features: int, data: Optional[torch.Tensor] = None) -> PeerModel:
    """zuko's NSF: autoregressive rational-quadratic splines of 8 bins, 3 transforms of one
    hidden layer of 512 for images, 5 of two of 128 for vectors."""
    zuko = require("zuko", "the zuko-nsf model")
    hidden = _hidden(features, [512], [128, 128])
    transforms = 3 if features > SMALL_DIM else 5
    flow = zuko.flows.NSF(features, transforms=transforms, hidden_features=hidden, bins=8)
    return ZukoPeer(flow, _zuko_label("NSF", transforms, hidden, ", 8 bins"))


@dataclass(frozen=True)
class ModelEntry:
    """A model of the benchmark: ``build(features, data)`` -> :class:`PeerModel`, where ``data`` is
    the training split in model space (N, features; images dequantised once, from a fixed seed) for
    recipes that start from the data (``needs_data``), else None."""

    name: str
    build: Callable[[int, Optional[torch.Tensor]], PeerModel]
    summary: str
    requires: Optional[str] = None  # the optional package it imports
    needs_data: bool = False  # whether ``build`` uses the training data (else it gets None)


MODELS: dict[str, ModelEntry] = {
    "lunet": ModelEntry("lunet", build_lunet,
                        "LU-Net: the paper's 4 blocks on images; 8 blocks of learned slopes on vectors"),
    "lunet-gaussian": ModelEntry("lunet-gaussian", build_lunet_gaussian,
                                 "LU-Net as `lunet` starts it: at the full-covariance Gaussian fit of the data",
                                 needs_data=True),
    "lunet-spline": ModelEntry("lunet-spline", build_lunet_spline,
                               "LU-Net with a monotone spline per feature in place of each leaky softplus"),
    "lunet-best": ModelEntry("lunet-best", build_lunet_best,
                             f"LU-Net with {BEST_BINS}-bin splines and an input spline (the MNIST ablation's best)"),
    "zuko-maf": ModelEntry("zuko-maf", build_maf, "zuko MAF, 5 transforms", requires="zuko"),
    "zuko-realnvp": ModelEntry("zuko-realnvp", build_realnvp, "zuko RealNVP, 10 couplings", requires="zuko"),
    "zuko-nsf": ModelEntry("zuko-nsf", build_nsf, "zuko NSF, 8 bins", requires="zuko"),
}


def available(name: str) -> bool:
    """Whether the optional package that model ``name`` needs (if any) can be imported."""
    needs = MODELS[name].requires
    if needs is None:
        return True
    try:
        importlib.import_module(needs)
    except ImportError:
        return False
    return True


def build(name: str, features: int, data: Optional[torch.Tensor] = None, seed: int = 0) -> PeerModel:
    """Model ``name`` for width ``features``, its weights drawn from ``seed`` (whatever was built before)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    torch.manual_seed(seed)
    model = MODELS[name].build(features, data)
    if not isinstance(model, PeerModel):
        raise TypeError(f"the builder of {name!r} returned {type(model).__name__}, not a PeerModel")
    return model
