"""How the defaults of `lunet train --data` were chosen: each choice changed alone, on the benchmark's tables.

    python reproduce/own_data_defaults.py --out docs/results/own-data-ablation.json   # about 15 minutes
    python reproduce/own_data_defaults.py --tables wine,banana                        # a few minutes
    python reproduce/own_data_defaults.py --tables clusters --variants defaults,blocks-16-steps-10k

``--variants`` picks rows by name, among them the longer and deeper runs of :data:`SIZE_VARIANTS`
that the default set leaves out (docs/notes/own-data-size.md).

Each row trains lunet on the training 80 % of each table (lunet.experiments.benchmarks.tables) with the
defaults and one change, then prints the test NLL in nats/dim (the 20 % test rows) and the share
of 10,000 samples at T = 1 that lie more than one range outside the training rows' range. The
first row is the defaults themselves, the second the full-covariance Gaussian.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from lunet.experiments.benchmarks.tables import gaussian_baseline, load_table
from lunet.experiments.files.atomic import write_text_atomic
from lunet.experiments.runs.vector_run import evaluate_vectors
from lunet.experiments.runs.vectors import train_vectors
from lunet.experiments.store.folder import check_output
from lunet.experiments.training.state import TrainingDiverged

# name -> (what changes, train_vectors keyword arguments)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "defaults": ("4 blocks (8 from 400 rows), splines, the Gaussian start, about 3,000 steps at 1e-3, early stopping",
                 {}),
    "leaky": ("learned leaky-softplus slopes instead of splines",
              {"model_spec": {"activation": "leaky_softplus"}}),
    "standardize": ("the standardised start instead of the Gaussian", {"data_init": "standardize"}),
    "blocks-4": ("4 blocks on every table", {"model_spec": {"num_blocks": 4}}),
    "blocks-8": ("8 blocks on every table", {"model_spec": {"num_blocks": 8}}),
    "lr-1e-2": ("Adam at 1e-2 instead of 1e-3", {"config": {"lr": 1e-2}}),
    "input-spline": ("a spline per column before the first block", {"model_spec": {"input_spline": True}}),
    "bins-16": ("16 bins per spline instead of 8", {"model_spec": {"bins": 16}}),
    "no-stop": ("no early stopping (the whole schedule, the best weights kept)", {"config": {"patience": None}}),
    "60-epochs": ("60 epochs (the earlier count) instead of about 3,000 steps",
                  {"config": {"epochs": 60, "eval_every": 1}}),
}
# longer and deeper runs for tables of thousands of rows, run when named; "steps" sets the epochs
# that give about that many optimiser steps on the table (batches of 256)
SIZE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "steps-10k": ("4 blocks, about 10,000 steps", {"steps": 10_000, "model_spec": {"num_blocks": 4}}),
    "blocks-8-steps-10k": ("8 blocks, about 10,000 steps", {"steps": 10_000, "model_spec": {"num_blocks": 8}}),
    "blocks-8-bins-16-steps-10k": ("8 blocks of 16 bins, about 10,000 steps",
                                   {"steps": 10_000, "model_spec": {"num_blocks": 8, "bins": 16}}),
    "blocks-8-lr-3e-3-steps-10k": ("8 blocks, Adam at 3e-3, about 10,000 steps",
                                   {"steps": 10_000, "model_spec": {"num_blocks": 8}, "config": {"lr": 3e-3}}),
    "blocks-16-steps-10k": ("16 blocks, about 10,000 steps", {"steps": 10_000, "model_spec": {"num_blocks": 16}}),
    "blocks-16-bins-16-steps-10k": ("16 blocks of 16 bins, about 10,000 steps",
                                    {"steps": 10_000, "model_spec": {"num_blocks": 16, "bins": 16}}),
}
DEFAULT_TABLES = ("wine", "breast-cancer", "diabetes", "banana", "clusters")


def run(table: Any, options: dict[str, Any]) -> dict[str, Any]:
    options = dict(options)
    steps = options.pop("steps", None)
    if steps is not None:
        per_epoch = math.ceil(table.train.shape[0] / 256)
        options["config"] = {**options.get("config", {}), "epochs": max(1, round(steps / per_epoch))}
    with tempfile.TemporaryDirectory() as folder:
        try:
            _, summary = train_vectors(table.train, Path(folder) / "run", progress=False, **options)
        except TrainingDiverged as exc:
            return {"diverged": str(exc).split(";")[0]}
        nll = evaluate_vectors(Path(folder) / "run", table.test)["nll_nats_per_dim"]
    return {"test_nll_nats_per_dim": nll, "train_seconds": summary["train_seconds"], "epochs": summary["epochs"],
            "far_outside_fraction": summary["samples"]["far_outside_fraction"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default=",".join(DEFAULT_TABLES))
    parser.add_argument("--out", type=Path, help="results JSON")
    parser.add_argument("--variants", help=f"rows to run, by name (default: {','.join(VARIANTS)}; also "
                                           f"{','.join(SIZE_VARIANTS)})")
    args = parser.parse_args(argv)
    known = {**VARIANTS, **SIZE_VARIANTS}
    chosen = VARIANTS if args.variants is None else {}
    for name in [] if args.variants is None else [n for n in args.variants.split(",") if n]:
        if name not in known:
            parser.error(f"--variants: no variant {name!r}; known: {', '.join(known)}")
        chosen[name] = known[name]
    if args.out is not None:
        try:
            check_output(args.out, "--out")
        except ValueError as exc:
            parser.error(str(exc))
    torch.set_num_threads(1)
    names = [n for n in args.tables.split(",") if n]
    doc: dict[str, Any] = {"command": " ".join(sys.argv), "threads": 1, "variants": {k: v[0] for k, v in
                                                                                      chosen.items()}, "tables": {}}
    for name in names:
        table = load_table(name)
        gaussian = run_gaussian(table)
        rows = doc["tables"][name] = {"gaussian": gaussian}
        print(f"{name} ({table.train.shape[0]} x {table.features}): Gaussian {gaussian:.4f}", flush=True)
        for variant, (_, options) in chosen.items():
            rows[variant] = run(table, options)
            r = rows[variant]
            if "diverged" in r:
                print(f"  {variant:<12} {r['diverged']}", flush=True)
                continue
            print(f"  {variant:<12} {r['test_nll_nats_per_dim']:.4f}  far {100 * r['far_outside_fraction']:.2f} %  "
                  f"{r['epochs']} epochs, {r['train_seconds']:.1f} s", flush=True)
        if args.out is not None:
            write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print("\n| change | " + " | ".join(names) + " |\n| --- |" + " --- |" * len(names))
    print("| full-covariance Gaussian | " + " | ".join(f"{doc['tables'][n]['gaussian']:.3f}" for n in names) + " |")
    for variant, (what, _) in chosen.items():
        cells = []
        for n in names:
            r = doc["tables"][n][variant]
            if "diverged" in r:
                cells.append("diverged")
                continue
            far = r["far_outside_fraction"]
            cells.append(f"{r['test_nll_nats_per_dim']:.3f}" + (f" ({100 * far:.1f} % far)" if far else ""))
        print(f"| {what} | " + " | ".join(cells) + " |")
    return 0


def run_gaussian(table: Any) -> float:
    """The test NLL of the full-covariance Gaussian of the training rows (dequantised as lunet does)."""
    _, fit, test = gaussian_baseline(table)
    return float(-fit.log_prob(test).mean() / table.features)


if __name__ == "__main__":
    raise SystemExit(main())
