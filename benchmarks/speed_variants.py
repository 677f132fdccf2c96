"""Variants behind the design choices in docs/benchmark.md, timed side by side.

    python benchmarks/speed_variants.py [--rounds 12] [--compile]

1. The training step of the paper's LU-Net at batch 256 with the triangular
   products blocked to depth 0 (one masked product), 1, 2, 3 and 4.
2. Sampling and density at batches 1, 4 and 32: the frozen products split
   among 2 threads by output columns, one product each on 2 threads, 1 thread;
   and chains of four products alone, split and not, at widths 512 to 1,024
   and batches 1 to 256: where the split pays.
3. Density at batch 1,000 with the standardisation, the activations' ``1 - a``
   and the signs folded into a frozen flow's matrices and each activation from
   one sigmoid, against the module's own pass (not frozen).
4. The leaky softplus's training pass (forward and backward) with its written-out
   backward against autograd through the definition; drawing with autograd on
   by a frozen flow's ``sample``, the module's ``sample`` (no graph) and ``rsample``
   (differentiable).
5. The finiteness screen of a batch of 1,000 and of 1: elementwise against one sum.
6. With ``--compile``: the activation's forward (value and log-det) in eager
   mode against ``torch.compile`` (needs a C++ compiler; compiling takes a while).

Rounds alternate the variants, so slow drifts of a noisy machine hit all alike;
the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Callable, Iterable

import torch

from lunet import functional
from lunet.experiments.benchmarks.measure import training_step
from lunet.experiments.config.models import build_model
from lunet.experiments.config.presets import paper_lunet_spec
from lunet.fast.affine import FrozenAffine, as_frozen_affine_weight
from lunet.layers import LeakySoftplus


def _seconds(fn: Callable[[], object], calls: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _alternate(variants: dict[str, Callable[[], object]], rounds: int, calls: int = 1) -> dict[str, float]:
    """Median time (s) per call of each variant, over ``rounds`` rounds that run the
    variants in turn, ``calls`` calls each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(_seconds(fn, calls))
    return {name: statistics.median(t) for name, t in times.items()}


def _print_table(header: list[str], rows: Iterable[list[str]]) -> None:
    """One markdown table, after a blank line."""
    print("\n| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def block_depths(rounds: int) -> dict[int, float]:
    """Median step time (s) per blocking depth of the training path."""
    torch.manual_seed(0)
    model = build_model(paper_lunet_spec())
    step = training_step(model, torch.randn(256, 784))
    leaves = {0: 10**9, 1: 392, 2: 196, 3: 98, 4: 49}  # the block_leaf giving each depth at width 784
    times: dict[int, list[float]] = {d: [] for d in leaves}
    for _ in range(3):
        step()
    for _ in range(rounds):
        for depth, leaf in leaves.items():
            for block in model.blocks:
                block.block_leaf = leaf
            step()  # one untimed step after each switch
            times[depth].append(_seconds(step, 2))
    return {d: statistics.median(t) for d, t in times.items()}


def small_batches(rounds: int, batches: tuple[int, ...] = (1, 4, 32)) -> dict[str, dict[int, float]]:
    """Median times (s) of a frozen flow's ``sample(b)`` and ``log_prob`` at small batches ``b``:
    with the frozen products split among 2 threads by output columns (the default), as
    one product each on 2 threads, and on 1 thread (where nothing is split)."""
    torch.manual_seed(0)
    flow = build_model(paper_lunet_spec())
    split, whole = flow.frozen(), flow.frozen(split_below_rows=0)
    saved = torch.get_num_threads()
    variants = {"split, 2 threads": (2, split), "one product, 2 threads": (2, whole), "1 thread": (1, split)}
    times = {f"{task} {name}": {b: [] for b in batches} for task in ("sampling", "density") for name in variants}
    xs = {b: torch.randn(b, 784) for b in batches}  # as in `lunet bench --micro`
    try:
        for _ in range(rounds):
            for name, (threads, model) in variants.items():
                torch.set_num_threads(threads)
                for b in batches:
                    for task, fn in (("sampling", lambda: model.sample(b)), ("density", lambda: model.log_prob(xs[b]))):
                        _seconds(fn, 5)
                        times[f"{task} {name}"][b].append(_seconds(fn, 30))
    finally:
        torch.set_num_threads(saved)
    return {k: {b: statistics.median(v) for b, v in per.items()} for k, per in times.items()}


def split_bounds(
    rounds: int, widths: tuple[int, ...] = (512, 640, 784, 1024), batches: tuple[int, ...] = (1, 4, 16, 64, 128, 256)
) -> dict[tuple[int, int], tuple[float, float]]:
    """Median times (s) of a chain of four frozen products (``FrozenAffine``) on 2 threads,
    split among the threads by output columns and as one product, per (width, batch):
    the measurements behind the defaults of ``split_below_rows`` and ``split_min_bytes``."""
    torch.manual_seed(0)
    saved = torch.get_num_threads()
    times: dict[tuple[int, int], tuple[list[float], list[float]]] = {}
    try:
        torch.set_num_threads(2)
        for width in widths:
            weights = [(as_frozen_affine_weight(torch.randn(width, width) / width**0.5, torch.float32),
                        torch.randn(width)) for _ in range(4)]
            # split_min_bytes=0: every width may split; the row bound decides
            chains = {below: [FrozenAffine(w, b, split_below_rows=below, split_min_bytes=0) for w, b in weights]
                      for below in (10**9, 0)}
            for batch in batches:
                x = torch.randn(batch, width)

                def chain(mats: list) -> None:
                    h = x
                    for layer in mats:
                        h = layer(h)

                split, whole = [], []
                for _ in range(rounds):
                    for below, out in ((10**9, split), (0, whole)):
                        chain(chains[below])
                        out.append(_seconds(lambda: chain(chains[below]), 10))
                times[width, batch] = (statistics.median(split), statistics.median(whole))
    finally:
        torch.set_num_threads(saved)
    return times


def density_folding(rounds: int) -> dict[str, float]:
    """Median times (s) of ``log_prob`` at batch 1,000: a frozen flow's folded plan with its
    activations from one sigmoid of the negated pre-activation, and the module's own pass,
    not frozen (triangular products, each activation applying its ``1 - a`` itself)."""
    torch.manual_seed(0)
    model = build_model(paper_lunet_spec()).eval()
    frozen = model.frozen()
    x = torch.randn(1000, 784)

    variants = {
        "frozen, folded, one sigmoid (log_prob)": lambda: frozen.log_prob(x),
        "module, not frozen": lambda: model.log_prob(x),
    }
    with torch.no_grad():
        for fn in variants.values():
            assert torch.allclose(fn(), model.log_prob(x), rtol=1e-5, atol=1e-2)
        return _alternate(variants, rounds)


def finiteness_screen(rounds: int) -> dict[int, dict[str, float]]:
    """Median times (s) of screening a (B, 784) batch for NaN/inf, at B = 1,000 and 1:
    elementwise, by one sum tested as a tensor, and by one sum tested as a Python float
    (what ``check_batch`` does)."""
    out: dict[int, dict[str, float]] = {}
    for batch in (1000, 1):
        x = torch.randn(batch, 784)
        variants = {"bool(isfinite(x).all())": lambda: bool(torch.isfinite(x).all()),
                    "bool(isfinite(x.sum()))": lambda: bool(torch.isfinite(x.sum())),
                    "math.isfinite(x.sum().item())": lambda: math.isfinite(x.sum().item())}
        out[batch] = _alternate(variants, rounds, 10 if batch > 1 else 200)
    return out


def activation_training(rounds: int) -> dict[str, float]:
    """Median time (s) of one leaky-softplus forward and backward (value and log-det) at
    batch 256, width 784: the fixed slope's written-out backward against autograd through
    the definition (the learnable slope's path, here with the slope fixed)."""
    act = LeakySoftplus(0.1)
    x = (3 * torch.randn(256, 784)).requires_grad_()
    g_value, g_logdet = torch.randn(256, 784), torch.randn(256)

    def written_out() -> None:
        torch.autograd.grad(act(x), x, (g_value, g_logdet))

    def autograd() -> None:
        a = 0.1
        logdet = functional.leaky_softplus_log_derivative(x, a).sum(dim=1)
        torch.autograd.grad((functional.leaky_softplus(x, a), logdet), x, (g_value, g_logdet))

    return _alternate({"written-out backward": written_out, "autograd": autograd}, rounds, 10)


def sampling_modes(rounds: int) -> dict[str, dict[int, float]]:
    """Median time (s) of drawing 1 and 1,000 images from the paper's network with autograd
    on: a frozen flow's ``sample``, the module's ``sample`` (no graph) and ``rsample``
    (differentiable, the training path)."""
    torch.manual_seed(0)
    model = build_model(paper_lunet_spec())
    frozen = model.frozen()
    out: dict[str, dict[int, float]] = {"frozen().sample": {}, "sample": {}, "rsample": {}}
    for batch in (1, 1000):
        variants = {"frozen().sample": lambda: frozen.sample(batch), "sample": lambda: model.sample(batch),
                    "rsample": lambda: model.rsample(batch)}
        for name, t in _alternate(variants, rounds, 20 if batch == 1 else 1).items():
            out[name][batch] = t
    return out


def compiled_activation(rounds: int) -> dict[str, float]:
    """Median time (s) of the leaky-softplus forward at batch 1,000, eager and compiled."""
    act = LeakySoftplus(0.1)
    x = torch.randn(1000, 784)
    start = time.perf_counter()
    compiled = torch.compile(act)
    with torch.no_grad():
        compiled(x)
        compile_s = time.perf_counter() - start
        out = _alternate({"eager": lambda: act(x), "compiled": lambda: compiled(x)}, rounds, 10)
    out["compile_seconds"] = compile_s
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the activation")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    depths = block_depths(args.rounds)
    _print_table(
        ["training step, batch 256", "ms"],
        ([("plain products" if d == 0 else f"blocked, depth {d} (blocks of {784 >> d})"), f"{t * 1e3:.1f}"]
         for d, t in depths.items()),
    )
    small = small_batches(args.rounds)
    batches = list(next(iter(small.values())))
    _print_table(
        ["small batches, ms per call", *(f"batch {b}" for b in batches)],
        ([name, *(f"{t * 1e3:.3f}" for t in per.values())] for name, per in small.items()),
    )
    bounds = split_bounds(args.rounds)
    widths = sorted({w for w, _ in bounds})
    _print_table(
        ["four products, split / one product", *(f"width {w}" for w in widths)],
        (
            [f"batch {b}", *(f"{bounds[w, b][0] * 1e3:.3f} / {bounds[w, b][1] * 1e3:.3f} ms" for w in widths)]
            for b in sorted({b for _, b in bounds})
        ),
    )
    folding = density_folding(args.rounds)
    _print_table(["density, batch 1,000", "ms"], ([name, f"{t * 1e3:.1f}"] for name, t in folding.items()))
    training = activation_training(args.rounds)
    _print_table(
        ["leaky softplus forward and backward, batch 256", "ms"],
        ([name, f"{t * 1e3:.2f}"] for name, t in training.items()),
    )
    modes = sampling_modes(args.rounds)
    _print_table(
        ["drawing with autograd on", "batch 1, ms", "batch 1,000, ms"],
        ([f"`{name}`", f"{per[1] * 1e3:.2f}", f"{per[1000] * 1e3:.1f}"] for name, per in modes.items()),
    )
    screen = finiteness_screen(args.rounds)
    _print_table(
        ["NaN/inf screen", "batch 1,000, ms", "batch 1, µs"],
        ([f"`{name}`", f"{screen[1000][name] * 1e3:.3f}", f"{screen[1][name] * 1e6:.1f}"] for name in screen[1000]),
    )
    if args.compile:
        r = compiled_activation(args.rounds)
        _print_table(
            ["leaky softplus forward, batch 1,000", "ms"],
            [["eager", f"{r['eager'] * 1e3:.2f}"], ["torch.compile", f"{r['compiled'] * 1e3:.2f}"]],
        )
        print(f"(compilation took {r['compile_seconds']:.0f} s)")

if __name__ == "__main__":
    main()
