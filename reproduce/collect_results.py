"""Gather the headline figures of docs/results/*.json into docs/results.json.

    python reproduce/collect_results.py

Shape: {"mnist": {"unconditional": {...}, "per_class": {...}, "conditional": {...}, "conditional-spline": {...},
"best": {...}, "best-bins16-input-1800s": {...}, "best-bins16-input-batch128-1800s": {...}}, "fashion-mnist": {...},
"gmm2d": {...}, "peers": {...}, "tables": {...}, "sbi": {...}}. The image entries (reproduce/images.sh, and
`--recipe best`) hold bits_per_dim, paper_bits_per_pixel, epochs, train_seconds (and the class
agreement and the out-of-distribution detection figures of reproduce/ood.sh where measured);
"gmm2d" the KL over seeds (docs/gmm2d.md); "peers" the test figure of each model at each budget,
by form of the benchmark (docs/peers.md); "tables" the test NLL of each model on each own table
(docs/own-data.md); "sbi" each estimator's mean C2ST and time for 10,000 draws per task and simulation
budget (docs/sbi.md). Each entry names the file it came from.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# results written where their script writes them rather than as {dataset}-{kind}.json
FILES = {("fashion-mnist", "best-bins16-input-batch128-1800s"):
         "fashion-mnist-ablation/bins-16-input-spline-batch-128-1800s.json"}
KEEP = ("bits_per_dim", "bits_per_dim_std_over_draws", "paper_bits_per_pixel", "num_test_images", "lam",
        "train_seconds", "bayes_classifier_accuracy", "per_class", "num_parameters_free", "num_parameters_stored")


def _ood_summary(report: dict) -> dict:
    """AUROC, AUPR and FPR at 95 % TPR of each model and score, against the other data set."""
    return {
        "against": report["against"],
        **{model: {score: {k: m[k] for k in ("auroc", "aupr", "fpr_at_95_tpr")} for score, m in r["metrics"].items()}
           for model, r in report["models"].items()},
    }


RESULTS = ROOT / "docs" / "results"
# the peers benchmark's results files behind docs/peers.md's tables, by form
PEERS_FILES = {"constant": ("peers-mnist-cpu.json",),
               "cosine": ("peers-scheduled-mnist-cpu.json", "peers-scheduled-fashion-mnist-cpu.json",
                          "peers-scheduled-vectors-cpu.json"),
               # the scheduled form again, two threads on a quiet machine (docs/peers.md)
               "cosine-2-threads-quiet": ("peers-scheduled-mnist-quiet-cpu2.json",)}


def _read(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def gmm2d_summary() -> dict | None:
    """KL(truth || model) of the 2-D demo over seeds: median and maximum, nats."""
    doc = _read("gmm2d-seeds.json")
    if doc is None:
        return None
    kls = sorted(r["kl_nats"] for r in doc["runs"])
    return {"from": "docs/results/gmm2d-seeds.json", "seeds": len(kls), "kl_nats_median": statistics.median(kls),
            "kl_nats_max": kls[-1]}


def peers_summary() -> dict:
    """Per form, data set and model: the test figure at each budget (training seconds) and the parameters."""
    out: dict = {}
    for form, names in PEERS_FILES.items():
        for name in names:
            doc = _read(name)
            if doc is None:
                continue
            for dname, d in doc["datasets"].items():
                entry = out.setdefault(form, {}).setdefault(dname, {"unit": d["unit"], "from": [], "models": {}})
                entry["from"].append(f"docs/results/{name}")
                for mname, m in d["models"].items():
                    entry["models"][mname] = {"label": m["label"], "params": m["speed"]["params"],
                                              "test": {f"{mk['budget_s']:g}": mk["test"] for mk in m["marks"]}}
    return out


def tables_summary() -> dict | None:
    """Per own table: each model's test NLL in nats/dim (docs/own-data.md's benchmark)."""
    doc = _read("tables-cpu.json")
    if doc is None:
        return None
    return {"from": "docs/results/tables-cpu.json", "budget_s": doc["budget_s"],
            "tables": {t["table"]: {m: r["test_nll_nats_per_dim"] for m, r in t["models"].items()}
                       for t in doc["tables"]}}


def sbi_summary() -> dict | None:
    """Per task and simulation budget: each estimator's mean C2ST and seconds for 10,000 draws through sbi."""
    doc = _read("sbi-cpu.json")
    if doc is None:
        return None
    out: dict = {"from": "docs/results/sbi-cpu.json", "tasks": {}}
    for run in doc["runs"]:
        if "c2st_mean" not in run:
            continue
        timed = [s for s in run["sample_s"] if s is not None]
        cell = out["tasks"].setdefault(run["task"], {}).setdefault(str(run["budget"]), {})
        cell[run["estimator"]] = {"c2st": run["c2st_mean"],
                                  "sample_10k_s": statistics.mean(timed) if timed else None}
    return out


def main() -> None:
    results: dict = {}
    for dataset in ("mnist", "fashion-mnist"):
        for kind in ("unconditional", "per_class", "conditional", "conditional-spline", "best",
                     "best-bins16-input-1800s", "best-bins16-input-batch128-1800s"):
            path = ROOT / "docs" / "results" / FILES.get((dataset, kind), f"{dataset}-{kind}.json")
            if not path.exists():
                continue
            r = json.loads(path.read_text())
            entry = {"from": str(path.relative_to(ROOT)), **{k: r[k] for k in KEEP if k in r}}
            entry["epochs"] = max(r["epochs"])
            agreement = path.with_name(f"{dataset}-{kind}-agreement.json")
            if agreement.exists():
                entry["class_agreement"] = json.loads(agreement.read_text())
            ood = path.with_name(f"ood-{dataset}-{kind}.json")
            if ood.exists():
                entry["ood"] = _ood_summary(json.loads(ood.read_text()))
            results.setdefault(dataset, {})[kind] = entry
    for key, summary in (("gmm2d", gmm2d_summary()), ("peers", peers_summary()), ("tables", tables_summary()),
                         ("sbi", sbi_summary())):
        if summary:
            results[key] = summary
    out = ROOT / "docs" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
