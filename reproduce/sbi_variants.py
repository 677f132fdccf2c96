"""Variants of the spline LU-Net on one task of the SBI benchmark, under docs/sbi.md's protocol.

    python reproduce/sbi_variants.py --task slcp --budget 10000 --variant bins=16 --variant num_blocks=12

Each ``--variant`` is a set of ``lunet_nn`` arguments (``key=value`` pairs separated by commas; the
spline activation unless it says ``activation=leaky_softplus``), and of sbi's ``NPE.train`` with a
``train.`` prefix (``train.learning_rate=1e-3``, ``train.stop_after_epochs=40``), trained by sbi's NPE on the
benchmark's simulations and scored by C2ST against the benchmark's reference posteriors of the ten
observations, which are drawn once and kept in ``--cache`` (the SLCP chains take minutes).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import statistics
import time
from pathlib import Path

import torch

from lunet.experiments.sbi.bench import TASK_NAMES, Protocol, evaluate, references, train_estimator
from lunet.experiments.sbi.tasks import get_task
from lunet.sbi import lunet_nn


def _variant(text: str) -> dict[str, object]:
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--variant takes key=value pairs separated by commas, got {text!r}")
    return {key.strip(): (ast.literal_eval(value) if value[:1].isdigit() else value) for key, value in pairs}


def _npe_train():
    from sbi.inference import NPE

    return NPE.train


def _cached_references(cache: Path, task, protocol: Protocol, x_o: torch.Tensor) -> list[torch.Tensor]:
    """The reference draws of ``x_o``'s observations, read from ``cache`` when it holds them, else drawn
    and kept there; a cache of other draws (another protocol, a damaged file) is refused in one line."""
    if not cache.exists():
        refs = references(task, protocol, x_o)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(refs, cache)
        return refs
    try:
        refs = torch.load(cache, weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file is refused the same way)
        raise SystemExit(f"{cache} is no file of reference draws ({type(exc).__name__}); remove it") from None
    shape = (protocol.posterior_samples, task.theta_dim)
    if not (isinstance(refs, list) and len(refs) == len(x_o)
            and all(isinstance(r, torch.Tensor) and tuple(r.shape) == shape for r in refs)):
        raise SystemExit(f"{cache} does not hold {len(x_o)} draws of shape {shape} for {task.name}; remove it")
    return refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASK_NAMES, required=True)
    parser.add_argument("--budget", type=int, required=True, help="simulations")
    parser.add_argument("--variant", action="append", required=True, help="lunet_nn arguments, e.g. bins=16")
    parser.add_argument("--cache", type=Path, help="reference draws kept here (default runs/sbi-refs-TASK.pt)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    builders = {}
    for text in args.variant:  # every variant checked before any work
        pairs = _variant(text)
        train_args = {key.removeprefix("train."): value for key, value in pairs.items() if key.startswith("train.")}
        unknown = sorted(set(train_args) - set(inspect.signature(_npe_train()).parameters))
        if unknown:
            raise SystemExit(f"--variant {text}: NPE.train takes no {', '.join(unknown)}")
        try:
            builders[text] = (lunet_nn(**{k: v for k, v in pairs.items() if not k.startswith("train.")}), train_args)
        except (TypeError, ValueError) as exc:
            raise SystemExit(f"--variant {text}: {exc}") from None
    task, protocol = get_task(args.task), Protocol()
    theta_o, x_o = task.observations(protocol.observations)
    cache = args.cache or Path("runs") / f"sbi-refs-{args.task}.pt"
    refs = _cached_references(cache, task, protocol, x_o)
    for text, (builder, train_args) in builders.items():
        start = time.perf_counter()
        posterior, record = train_estimator(task, args.budget, builder, protocol, train_args)
        row = evaluate(task, posterior, protocol, theta_o, x_o, refs)
        timed = [s for s in row["sample_s"] if s is not None]
        print(f"[{args.task}] {args.budget} {text}: C2ST {row['c2st_mean']:.3f}, trained {record['train_s']:.1f} s "
              f"({record['epochs']} epochs, {record['parameters']:,} parameters), 10k draws "
              f"{statistics.mean(timed) * 1e3:.1f} ms ({time.perf_counter() - start:.0f} s in all)", flush=True)


if __name__ == "__main__":
    main()
