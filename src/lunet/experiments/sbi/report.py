"""The SBI benchmark's results file as markdown tables and a posterior figure per task (docs/sbi.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from lunet.experiments.sbi.bench import ESTIMATORS, FIGURE_DIMS, TASK_NAMES

__all__ = ["markdown_tables", "draw_posteriors"]


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return sum(kept) / len(kept) if kept else None


def _cell(value: Optional[float], fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _table(results: dict[str, Any], title: str, metric: str, fmt: str, scale: float = 1.0) -> list[str]:
    rows = {(r["task"], r["budget"], r["estimator"]): r for r in results["runs"]}
    budgets = sorted({r["budget"] for r in results["runs"]})
    estimators = [e for e in ESTIMATORS if any(r["estimator"] == e for r in results["runs"])]
    lines = [f"**{title}**", "", "| task | simulations | " + " | ".join(estimators) + " |",
             "| --- | ---: | " + " | ".join("---:" for _ in estimators) + " |"]
    for task in TASK_NAMES:
        for budget in budgets:
            if not any((task, budget, e) in rows for e in estimators):
                continue
            cells = []
            for e in estimators:
                row = rows.get((task, budget, e))
                if row is None:
                    cells.append("not run")
                elif "error" in row:
                    cells.append("failed")
                else:
                    value = row[metric]
                    value = _mean(value) if isinstance(value, list) else value
                    cells.append(_cell(None if value is None else value * scale, fmt))
            lines.append(f"| {task} | {budget:,} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown_tables(results: dict[str, Any]) -> str:
    """C2ST, training time, sampling times and log-density of the true parameters, task × budget × estimator."""
    refs = results["references"]
    lines = ["**Reference check**: C2ST between two independent reference draws (10,000 each), mean over the "
             "observations (0.5 is indistinguishable)", "", "| task | C2ST | range |", "| --- | ---: | --- |"]
    for task in TASK_NAMES:
        if task in refs:
            s = refs[task]["c2st_self"]
            lines.append(f"| {task} | {refs[task]['c2st_self_mean']:.3f} | {min(s):.3f} – {max(s):.3f} |")
    lines.append("")
    lines += _table(results, "C2ST against the reference (mean over the observations; 0.5 is perfect)",
                    "c2st_mean", ".3f")
    lines += _table(results, "Training time (s, sbi's loop to its stopping rule)", "train_s", ".1f")
    lines += _table(results, "10,000 posterior draws through sbi (ms, `posterior.sample`, mean over the observations)",
                    "sample_s", ".1f", 1e3)
    lines += _table(results, "10,000 draws from the estimator alone (ms)", "estimator_sample_s", ".1f", 1e3)
    lines += _table(results, "Posterior log-density of the true parameters (nats, mean over the observations; "
                    "higher is better)", "log_prob_true", ".2f")
    return "\n".join(lines)


def draw_posteriors(results: dict[str, Any], folder: Path, budget: Optional[int] = None) -> list[Path]:
    """One figure per task, ``folder/sbi-<task>.png``: the first observation's reference draws and each
    estimator's, two coordinates, at ``budget`` (the largest run if ``None``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if "error" not in r]
    budget = budget or max(r["budget"] for r in runs)
    paths = []
    for task in TASK_NAMES:
        ref = results["references"].get(task)
        mine = [r for r in runs if r["task"] == task and r["budget"] == budget]
        if ref is None or not mine:
            continue
        panels = [("reference", ref["figure_samples"])] + [(r["estimator"], r["figure_samples"]) for r in mine]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.8), sharex=True, sharey=True)
        a, b = FIGURE_DIMS[task]
        xs = [p[0] for p in ref["figure_samples"]]
        ys = [p[1] for p in ref["figure_samples"]]
        pad_x, pad_y = 0.5 * (max(xs) - min(xs)) + 1e-3, 0.5 * (max(ys) - min(ys)) + 1e-3
        truth = ref["theta_o"][0]
        for ax, (name, pts) in zip(axes, panels):
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=2, alpha=0.4)
            ax.plot(truth[a], truth[b], "r+", ms=10)
            ax.set_title(name, fontsize=9)
            ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
            ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
            ax.set_xlabel(f"θ{a + 1}")
        axes[0].set_ylabel(f"θ{b + 1}")
        fig.suptitle(f"{task}, observation 1, {budget:,} simulations (red +: true θ)", fontsize=10)
        fig.tight_layout()
        path = folder / f"sbi-{task.replace('_', '-')}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
