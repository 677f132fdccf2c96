"""Gather the evaluation JSONs written by reproduce/images.sh into docs/results.json.

    python reproduce/collect_results.py

Shape: {"mnist": {"unconditional": {...}, "per_class": {...}}, "fashion-mnist": {...}}, each entry with
bits_per_dim, paper_bits_per_pixel, epochs, train_seconds (and the class agreement and the
out-of-distribution detection figures of reproduce/ood.sh where measured).
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEP = ("bits_per_dim", "bits_per_dim_std_over_draws", "paper_bits_per_pixel", "num_test_images", "lam",
        "train_seconds", "bayes_classifier_accuracy", "per_class", "num_parameters_free", "num_parameters_stored")


def _ood_summary(report: dict) -> dict:
    """AUROC, AUPR and FPR at 95 % TPR of each model and score, against the other data set."""
    return {
        "against": report["against"],
        **{model: {score: {k: m[k] for k in ("auroc", "aupr", "fpr_at_95_tpr")} for score, m in r["metrics"].items()}
           for model, r in report["models"].items()},
    }


def main() -> None:
    results: dict = {}
    for dataset in ("mnist", "fashion-mnist"):
        for kind in ("unconditional", "per_class"):
            path = ROOT / "docs" / "results" / f"{dataset}-{kind}.json"
            if not path.exists():
                continue
            r = json.loads(path.read_text())
            entry = {k: r[k] for k in KEEP if k in r}
            entry["epochs"] = max(r["epochs"])
            agreement = path.with_name(f"{dataset}-{kind}-agreement.json")
            if agreement.exists():
                entry["class_agreement"] = json.loads(agreement.read_text())
            ood = path.with_name(f"ood-{dataset}-{kind}.json")
            if ood.exists():
                entry["ood"] = _ood_summary(json.loads(ood.read_text()))
            results.setdefault(dataset, {})[kind] = entry
    out = ROOT / "docs" / "results.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
