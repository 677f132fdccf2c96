"""The tables of docs/ood.md, in Markdown, from the JSONs that reproduce/ood.sh writes.

    python reproduce/ood_table.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}
ROWS = (("unconditional", "run", "LU-Net, unconditional"), ("per_class", "run", "LU-Net, one model per class"),
        ("unconditional", "gaussian", "full-covariance Gaussian"))


def table(metric: str) -> str:
    reports = {}
    for path in sorted((ROOT / "docs" / "results").glob("ood-*.json")):
        r = json.loads(path.read_text())
        reports[(r["dataset"], r["kind"])] = r
    scores = next(iter(reports.values()))["scores"]
    lines = ["| trained on → tested against | model | "
             + " | ".join(v.replace("|", "\\|") for v in scores.values()) + " |",
             "| --- | --- | " + " | ".join("---" for _ in scores) + " |"]
    for dataset in NAMES:
        for kind, model, label in ROWS:
            r = reports.get((dataset, kind))
            if r is None:
                continue
            where = f"{NAMES[dataset]} → {NAMES[r['against']]}"
            cells = " | ".join(f"{r['models'][model]['metrics'][s][metric]:.3f}" for s in scores)
            lines.append(f"| {where} | {label} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    for metric, title in (("auroc", "AUROC"), ("fpr_at_95_tpr", "FPR at 95 % TPR"), ("aupr", "AUPR")):
        print(f"{title}\n\n{table(metric)}\n")


if __name__ == "__main__":
    main()
