"""The conditional LU-Net beside the unconditional one of the same width and depth, timed side by side.

    python benchmarks/conditional_speed.py [--rounds 9] [--threads 1] [--activation spline] [--out FILE.json]

For each width (784 with batch 256 and 1,000 rows; 64 with 1,000 rows), 4 blocks of the paper's
leaky softplus: density (``log_prob``) and sampling through the frozen flows, the conditional one
with a different context in every row (class labels, 10 classes); beside it, "before", the
frozen flow's passes as they were written first (the context network run at every call, plain
passes block by block, as under ``torch.func.vmap``); batch-1 sampling; and a training step at
batch 256 (Adam, forward and backward) of each module. Rounds alternate the variants, so slow
drifts of a noisy machine hit all alike; the figures are medians over rounds, in milliseconds,
with the ratios conditional / unconditional. ``--activation spline``: both flows with 8-bin splines
(the unconditional one's shared by every row, the conditional one's knots given by each row's context).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from lunet import ConditionalLUNet, LUNet
from lunet.checks import set_value_checks
from lunet.conditional_density import broadcast_rows


def _alternate(variants: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, float]:
    """Median milliseconds per call of each variant over ``rounds`` rounds of ``calls`` calls each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up: allocator, thread pool, tables
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _step(model: torch.nn.Module, loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with set_value_checks(False):
            loss().backward()
        opt.step()

    return step


def measure(features: int, rows: int, rounds: int, blocks: int = 4,
            activation: str = "leaky_softplus") -> dict[str, float]:
    """Milliseconds per call of every variant at ``features`` wide and ``rows`` rows, and the ratios."""
    torch.manual_seed(0)
    plain = LUNet(features, blocks, init_scale=0.1, activation=activation)
    cond = ConditionalLUNet(features, 16, blocks, num_classes=10, init_scale=0.1, activation=activation)
    with torch.no_grad():  # contexts that matter: the context network away from its zero start
        cond.conditioner[-1].weight.normal_(0, 0.05)
    labels = torch.arange(rows) % 10  # a different context in every row
    x = torch.randn(rows, features)
    frozen, cfrozen = plain.frozen(), cond.frozen()
    z = torch.randn(rows, features)
    batch = x[:256]

    def before(data: torch.Tensor, plain_pass: Callable) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                rows, params, _ = broadcast_rows(data, cond._params(labels), "input")
                return plain_pass(rows, *params)
        return run

    times = _alternate({
        "density": lambda: frozen.log_prob(x),
        "conditional_density": lambda: cfrozen.log_prob(x, labels),
        "conditional_density_before": before(x, cfrozen.plain_forward_rows),
        "sampling": lambda: frozen.inverse(z),
        "conditional_sampling": lambda: cfrozen.inverse(z, labels),
        "conditional_sampling_before": before(z, cfrozen.plain_inverse_rows),
    }, rounds, calls=3)
    times.update(_alternate({
        "sampling_batch1": lambda: frozen.sample(1),
        "conditional_sampling_batch1": lambda: cfrozen.sample(1, labels[3]),
    }, rounds, calls=50))
    times.update(_alternate({
        "training_step_256": _step(plain, lambda: -plain.log_prob(batch).mean()),
        "conditional_training_step_256": _step(cond, lambda: -cond.log_prob(batch, labels[:256]).mean()),
    }, rounds, calls=2))
    ratios = {f"{name}_ratio": times[f"conditional_{name}"] / times[name]
              for name in ("density", "sampling", "sampling_batch1", "training_step_256")}
    ratios.update({f"{name}_before_ratio": times[f"conditional_{name}_before"] / times[name]
                   for name in ("density", "sampling")})
    return {"features": features, "rows": rows, "blocks": blocks, "activation": activation, **times, **ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--activation", choices=("leaky_softplus", "spline"), default="leaky_softplus")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(features, rows, args.rounds, activation=args.activation)
               for features, rows in ((784, 1000), (784, 256), (64, 1000))]
    header = ("density", "sampling", "sampling_batch1", "training_step_256")
    print("features rows | " + " | ".join(f"{h}: unconditional, conditional ms (ratio)" for h in header))
    for r in results:
        cells = [f"{r[h]:.2f}, {r['conditional_' + h]:.2f} ({r[h + '_ratio']:.2f})" for h in header]
        print(f"{r['features']} {r['rows']} | " + " | ".join(cells)
              + f" | before: density {r['density_before_ratio']:.2f}, sampling {r['sampling_before_ratio']:.2f}")
    if args.out:
        doc = {"command": f"python benchmarks/conditional_speed.py --rounds {args.rounds} --threads {args.threads} "
                          f"--activation {args.activation}",
               "torch": torch.__version__, "threads": args.threads, "results": results}
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
