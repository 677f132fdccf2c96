"""The peers benchmark's tables and figures, from its results file."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Optional

import torch

from lunet.experiments.benchmarks.peers.protocol import FORMS

__all__ = ["format_params", "markdown_tables", "draw_figures"]


def format_params(n: int) -> str:
    """A parameter count as the tables show it: 2.46M, 4.8k, 950."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _fmt_count(n: Optional[float], digits: int = 0) -> str:
    return "—" if n is None else f"{n:,.{digits}f}"


def markdown_tables(doc: dict[str, Any]) -> str:
    """Per data set: the test figure at each budget (epochs in brackets), the clocks behind the
    marks, and the speed table."""
    blocks = []
    for dname, d in doc["datasets"].items():
        if not d.get("models"):
            continue
        budgets = d["budgets_s"]
        unit = d["unit"]
        form = FORMS[doc["protocol"].get("schedule", "constant")]
        lines = [f"### {dname} ({unit}, lower is better; {form})", "",
                 "| model | " + " | ".join(f"{b:g} s" for b in budgets) + " |",
                 "|" + " --- |" * (1 + len(budgets))]
        for m in d["models"].values():
            cells = []
            for mk in m["marks"]:
                test = "—" if mk["test"] is None else f"{mk['test']:.3f} ± {mk['test_sem']:.3f}"
                cells.append(f"{test} ({mk['epochs']:.1f} ep)" + (" stopped" if mk.get("stopped") else ""))
            lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
        lines += ["", "| model | budget | training s | CPU s | steps | best validation at s | evaluation s (all) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in d["models"].values():
            for i, mk in enumerate(m["marks"]):
                lines.append(f"| {m['label'] if i == 0 else ''} | {mk['budget_s']:g} | {mk['train_seconds']:.1f} | "
                             f"{mk['process_seconds']:.1f} | {mk['steps']:,} | {_fmt_count(mk['best_at_s'], 1)} | "
                             + (f"{m['eval_seconds']:.1f}" if i == 0 else "") + " |")
        lines += ["", "| model | params (free) | peak training memory, MiB | density /s (batch) | "
                  "sampling /s (batch, calls) | batch-1 sampling, ms (calls) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m in d["models"].values():
            s = m["speed"]
            sampling, one = s["sampling"], s["sampling_batch1"]
            samp = (f"{sampling['per_s']:,.1f} ({sampling['batch']:,}, {sampling['calls']})" if sampling.get("per_s")
                    else f"not measured ({sampling.get('why', '')})")
            lat = (f"{one['seconds'] * 1e3:,.1f} ({one['calls']})" if one.get("per_s")
                   else f"not measured ({one.get('why', '')})")
            lines.append(f"| {m['label']} | {format_params(s['params'])} ({format_params(s['params_free'])}) | "
                         f"{_fmt_count(s['peak_train_memory_mib'])} | {s['density']['per_s']:,.0f} "
                         f"({s['density']['batch']:,}) | {samp} | {lat} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def draw_figures(doc: dict[str, Any], dname: str, folder: Path,
                 image_shape: Optional[tuple[int, int]] = None) -> list[Path]:
    """``peers-<dataset>-curves.png`` (test figure of the best-validation weights against training
    seconds, one line per model) and, for images, ``peers-<dataset>-samples.png`` (a row per model)."""
    from lunet.experiments.plots import plt, save_figure, save_image_grid

    d = doc["datasets"][dname]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in d["models"].values():
        points = [(c["train_seconds"], c["test"]) for c in m["curve"]
                  if c["test"] is not None and c["train_seconds"] > 0]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=".", label=m["label"])
    for b in d["budgets_s"]:
        ax.axvline(b, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (evaluation excluded)")
    ax.set_ylabel(f"test {d['unit']}, best-validation weights")
    ax.set_title(f"{dname}: {doc['machine']['torch_threads']} torch threads" + (", quick form" if doc["quick"] else ""))
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [save_figure(fig, folder / f"peers-{dname}-curves.png")]
    if image_shape is not None:
        rows, labels = [], []
        h, w = image_shape
        for m in d["models"].values():
            s = m.get("samples", {})
            if s.get("pixels_b64"):
                raw = torch.frombuffer(bytearray(base64.b64decode(s["pixels_b64"])), dtype=torch.uint8)
                rows.append(raw.reshape(-1, h, w).float() / 255)
                labels.append(m["label"])
            else:
                rows.append(torch.full((doc["protocol"]["grid_samples"], h, w), 0.5))
                labels.append(f"{m['label']}: not sampled")
        if rows:
            budget = d["budgets_s"][-1]
            paths.append(save_image_grid(torch.cat(rows), folder / f"peers-{dname}-samples.png",
                                         nrow=rows[0].shape[0], row_labels=labels,
                                         title=f"{dname}: samples after {budget:g} training seconds, T = 1"))
    return paths
