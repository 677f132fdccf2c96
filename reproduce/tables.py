"""The tabular benchmark: lunet's defaults beside the Gaussian and zuko's MAF and NSF, table by table.

    python reproduce/tables.py --out docs/results/tables-cpu.json --figures docs/figures --earlier   # about 40 min
    python reproduce/tables.py --tables iris,wine --budget 10                              # a quick look

Each table (lunet.experiments.benchmarks.tables) is split 80/20 by a fixed seed. lunet trains on the 80 %
exactly as `lunet train --data` does (its own 10 % validation rows, its defaults, early stopping);
the full-covariance Gaussian is fitted to the same 80 %. zuko's flows see lunet's training and
validation rows, standardised as lunet standardises them, and train under the peers benchmark's
protocol (Adam 1e-3, batch 256, the best validation weights kept) for the training seconds lunet's
run took, and again for --budget seconds. Every model is scored on the 20 % test rows (NLL in nats
per dimension) and draws 10,000 samples at T = 1, counted against the training rows' range.
Columns of whole numbers that lunet dequantises (`--dequantize auto`) are dequantised for every
model alike (zuko and the Gaussian train on one fixed draw of the noise), and sampled as whole numbers.
zuko and scikit-learn come with `pip install .[peers]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lunet.experiments.benchmarks.peers import Protocol, machine_info, train_with_budgets, vectors_from_splits
from lunet.experiments.benchmarks.peers.models import build
from lunet.experiments.benchmarks.tables import TABLES, gaussian_baseline, load_table
from lunet.experiments.config.presets import vector_lunet_spec
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.files.atomic import write_text_atomic
from lunet.experiments.runs.vector_report import sample_report
from lunet.experiments.runs.vector_run import evaluate_vectors, sample_vectors
from lunet.experiments.runs.vectors import split_rows, train_vectors
from lunet.experiments.store.folder import check_output

NUM_SAMPLES = 10_000
# lunet's earlier own-data defaults, from their standardised start: 60 epochs of batch 256 at 1e-2
EARLIER_CONFIG = TrainConfig(epochs=60, batch_size=256, lr=1e-2)
PEERS = ("zuko-maf", "zuko-nsf")


def _row(nll: float, samples: torch.Tensor, table: Any, seconds: float, **more: Any) -> dict[str, Any]:
    report = sample_report(samples, table.train.min(0).values, table.train.max(0).values)
    return {"test_nll_nats_per_dim": nll, "train_seconds": seconds, "samples": report, **more}


def earlier_spec(features: int) -> dict[str, Any]:
    """The model of lunet's earlier own-data defaults: 8 blocks, learned leaky-softplus slopes."""
    return vector_lunet_spec(features, num_blocks=8, activation="leaky_softplus")


def run_table(name: str, budget: float, figures: Path | None, log: Any, earlier: bool = False) -> dict[str, Any]:
    table = load_table(name)
    # the columns of whole numbers that lunet dequantises: every model sees them so, the test rows
    # with the noise lunet's evaluation draws, and samples rounded down as lunet's are
    rules, gaussian, test = gaussian_baseline(table)
    result: dict[str, Any] = {"table": name, "info": table.info, "num_train": table.train.shape[0],
                              "num_test": table.test.shape[0], "features": table.features,
                              "dequantised_columns": rules.integer, "models": {}}
    models = result["models"]
    gen = torch.Generator().manual_seed(0)
    draws = gaussian.scale_tril @ torch.randn(table.features, NUM_SAMPLES, generator=gen, dtype=torch.float64)
    models["gaussian"] = _row(float(-gaussian.log_prob(test).mean() / table.features),
                              rules.to_data(gaussian.mean + draws.T), table, 0.0)
    log(f"{name}: {table.train.shape[0]:,} training rows x {table.features}; Gaussian "
        f"{models['gaussian']['test_nll_nats_per_dim']:.4f}")
    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "run"
        _, summary = train_vectors(table.train, run, progress=False)
        nll = evaluate_vectors(run, table.test)["nll_nats_per_dim"]
        models["lunet"] = _row(nll, sample_vectors(run, NUM_SAMPLES), table, summary["train_seconds"],
                               epochs=summary["epochs"], best_epoch=summary["best_epoch"],
                               stopped_early=summary["stopped_early"], data_init=summary["data_init"])
        if figures is not None:
            shutil.copyfile(run / "samples.png", figures / f"tables-{name}-samples.png")
        if earlier:
            old = Path(folder) / "earlier"
            _, before = train_vectors(table.train, old, EARLIER_CONFIG, model_spec=earlier_spec(table.features),
                                      data_init="standardize", progress=False)
            models["lunet-earlier"] = _row(evaluate_vectors(old, table.test)["nll_nats_per_dim"],
                                           sample_vectors(old, NUM_SAMPLES), table, before["train_seconds"])
            log(f"  lunet's earlier defaults {models['lunet-earlier']['test_nll_nats_per_dim']:.4f}")
    lunet_seconds = max(summary["train_seconds"], 1.0)
    log(f"  lunet defaults {nll:.4f} in {lunet_seconds:.1f} s ({summary['epochs']} epochs)")
    train, val = split_rows(table.train, 0.1)  # lunet's own split of the training rows
    train, val = (rules.dequantized(x, torch.Generator().manual_seed(seed)) for x, seed in ((train, 1), (val, 2)))
    data = vectors_from_splits(name, train.float(), val.float(), test.float())
    protocol = Protocol(measure_memory=False)
    for peer in PEERS:
        model = build(peer, table.features)
        marks = train_with_budgets(model, data, sorted({lunet_seconds, budget}), protocol)["marks"]
        with torch.no_grad():
            samples = rules.to_data(data.space.to_data(model.sample(NUM_SAMPLES)).double())
        final = marks[-1]
        models[peer] = _row(final["test"], samples, table, final["train_seconds"], label=model.label,
                            at_lunet_seconds=marks[0]["test"])
        log(f"  {peer}: {marks[0]['test']:.4f} at {lunet_seconds:.1f} s, {final['test']:.4f} at {budget:g} s")
    return result


def markdown(doc: dict[str, Any]) -> str:
    """The results as docs/own-data.md shows them: test NLL in nats/dim, the best of each row in bold."""
    budget = f"{doc['budget_s']:g} s"
    lines = [f"| table (training rows × columns) | Gaussian | lunet's defaults (training s) | zuko MAF, lunet's "
             f"seconds / {budget} | zuko NSF, lunet's seconds / {budget} | lunet's earlier defaults |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in doc["tables"]:
        m = r["models"]
        figures = {"gaussian": m["gaussian"]["test_nll_nats_per_dim"], "lunet": m["lunet"]["test_nll_nats_per_dim"]}
        for peer in PEERS:
            figures[peer + "@lunet"] = m[peer]["at_lunet_seconds"]
            figures[peer] = m[peer]["test_nll_nats_per_dim"]
        best = min(figures.values())

        def cell(key: str) -> str:
            return f"**{figures[key]:.3f}**" if figures[key] == best else f"{figures[key]:.3f}"

        earlier = f"{m['lunet-earlier']['test_nll_nats_per_dim']:.3f}" if "lunet-earlier" in m else "–"
        lines.append(
            f"| {r['table']} ({r['num_train']:,} × {r['features']}) | {cell('gaussian')} | {cell('lunet')} "
            f"({m['lunet']['train_seconds']:.0f}) | {cell('zuko-maf@lunet')} / {cell('zuko-maf')} | "
            f"{cell('zuko-nsf@lunet')} / {cell('zuko-nsf')} | {earlier} |")
    far = ", ".join(f"{r['table']} " + " / ".join(f"{100 * r['models'][k]['samples']['far_outside_fraction']:.2f} %"
                                                 for k in ("lunet", *PEERS)) for r in doc["tables"])
    return "\n".join(lines) + f"\n\nsamples more than one range outside, lunet / MAF / NSF: {far}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated names (default: all)")
    parser.add_argument("--budget", type=float, default=60.0, help="zuko's second budget, training seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, help="results JSON")
    parser.add_argument("--figures", type=Path, help="folder for each table's picture of lunet's samples")
    parser.add_argument("--earlier", action="store_true",
                        help="also lunet's earlier own-data defaults (8 leaky-softplus blocks, 60 epochs at 1e-2)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.tables.split(",") if n.strip()]
    unknown = [n for n in names if n not in TABLES]
    if unknown or args.budget <= 0:
        parser.error(f"unknown table(s) {', '.join(unknown)}; known: {', '.join(TABLES)}" if unknown
                     else "--budget must be positive seconds")
    try:
        if args.out is not None:
            check_output(args.out, "--out")
    except ValueError as exc:
        parser.error(str(exc))
    torch.set_num_threads(args.threads)
    doc: dict[str, Any] = {"command": " ".join(sys.argv), "machine": machine_info(), "threads": args.threads,
                           "budget_s": args.budget, "num_samples": NUM_SAMPLES, "tables": []}
    start = time.perf_counter()
    for name in names:
        doc["tables"].append(run_table(name, args.budget, args.figures, lambda s: print(s, flush=True),
                                       args.earlier))
        if args.out is not None:
            write_text_atomic(args.out, json.dumps(doc, indent=2) + "\n")
    print(f"\n{markdown(doc)}\n\n({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
