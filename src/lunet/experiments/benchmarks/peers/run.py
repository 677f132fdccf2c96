"""A run of the peers benchmark: each model on each data set, its results file (validated,
combined, written atomically) and the machine it ran on."""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from lunet.experiments.benchmarks.peers.models import MODELS, MissingExtra, PeerModel, available, build, require
from lunet.experiments.benchmarks.peers.protocol import LOG, SCHEMA, Protocol, family
from lunet.experiments.benchmarks.peers.report import draw_figures, format_params
from lunet.experiments.benchmarks.peers.spaces import PeerData, load
from lunet.experiments.benchmarks.peers.speed import grid_samples, measure_speed
from lunet.experiments.benchmarks.peers.training import train_with_budgets
from lunet.experiments.files.atomic import write_text_atomic
from lunet.experiments.files.safe import read_text
from lunet.experiments.store.folder import check_output

__all__ = ["machine_info", "validate_results", "combine_results", "check_outputs", "run_peers", "missing_extras"]


def machine_info() -> dict[str, Any]:
    """Where the figures come from: platform, CPU, torch and its threads, package versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions: dict[str, Optional[str]] = {}
    for package in ("torch", "zuko", "scikit-learn", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(), "versions": versions}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check(condition: bool, problem: str, problems: list[str]) -> None:
    if not condition:
        problems.append(problem)


def validate_results(doc: dict[str, Any]) -> list[str]:
    """The problems of a results document against the schema (empty when it conforms)."""
    problems: list[str] = []
    _check(doc.get("schema") == SCHEMA, f"schema is {doc.get('schema')!r}, not {SCHEMA!r}", problems)
    for key in ("protocol", "machine", "datasets", "budgets_s", "quick"):
        _check(key in doc, f"missing {key!r}", problems)
    for dname, d in doc.get("datasets", {}).items():
        for key in ("unit", "budgets_s", "info", "models"):
            _check(key in d, f"{dname}: missing {key!r}", problems)
        for mname, m in d.get("models", {}).items():
            where = f"{dname}/{mname}"
            for key in ("label", "marks", "curve", "speed", "eval_seconds", "max_step_seconds"):
                _check(key in m, f"{where}: missing {key!r}", problems)
            marks = m.get("marks", [])
            _check([mk.get("budget_s") for mk in marks] == d.get("budgets_s"), f"{where}: marks are not the budgets",
                   problems)
            for mk in marks:
                for key in ("train_seconds", "process_seconds", "steps", "epochs", "val", "test", "test_sem"):
                    _check(key in mk, f"{where} at {mk.get('budget_s')} s: missing {key!r}", problems)
            speed = m.get("speed", {})
            for key in ("params", "params_free", "peak_train_memory_mib", "density", "sampling", "sampling_batch1"):
                _check(key in speed, f"{where}: speed lacks {key!r}", problems)
    return problems


def combine_results(docs: Sequence[dict[str, Any]], names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """One results document from several runs of the benchmark (``names``: where each came from, for
    messages): every (data set, model) of each, the later one where two hold the same pair. The runs
    must conform to the schema and share the protocol, the budgets, the quick flag and the machine
    (its platform, processor, thread count and package versions); ``ValueError`` says which does not.
    The result lists each run's command and times under ``"runs"``."""
    names = list(names) if names is not None else [f"results {i + 1}" for i in range(len(docs))]
    if not docs:
        raise ValueError("combine_results needs at least one results document")
    first = docs[0]
    for name, doc in zip(names, docs):
        problems = validate_results(doc)
        if problems:
            raise ValueError(f"{name} is not a results file of this benchmark: {'; '.join(problems[:3])}")
        for key in ("protocol", "budgets_s", "quick", "machine"):
            if doc[key] != first[key]:
                raise ValueError(f"{name} was measured under another {key.replace('_s', '')} than {names[0]}: "
                                 f"figures of the two do not compare")
    combined: dict[str, Any] = {key: first[key] for key in ("schema", "quick", "machine", "protocol", "budgets_s")}
    combined["runs"] = [{"from": name, "command": doc.get("command", ""), "started": doc.get("started"),
                         "finished": doc.get("finished")} for name, doc in zip(names, docs)]
    combined["datasets"] = {}
    for doc in docs:
        for dname, d in doc["datasets"].items():
            entry = combined["datasets"].setdefault(dname, {**{k: v for k, v in d.items() if k != "models"},
                                                            "models": {}})
            entry["models"].update(d["models"])
    return combined


def _write(doc: dict[str, Any], out: Optional[Path]) -> None:
    if out is None:
        return
    doc["updated"] = _now()
    write_text_atomic(out, json.dumps(doc, indent=1) + "\n")  # a killed run keeps the previous file whole


def check_outputs(datasets: Sequence[Union[str, PeerData]], out: Optional[Path], figures: Optional[Union[str, Path]],
                  data_dir: Optional[str] = None) -> None:
    """Before anything is measured: ``ValueError`` naming the results file ``out`` or a picture in
    ``figures`` that cannot be written, or that would replace a data file or a file in a run folder
    (:func:`~lunet.experiments.store.folder.check_output`)."""
    from lunet.experiments.data.mnist import data_files

    inputs = data_files(data_dir)
    if out is not None:
        check_output(out, "--out", inputs=inputs)
    if figures is None:
        return
    for item in datasets:
        name = item if isinstance(item, str) else item.name
        images = family(name) == "images" if isinstance(item, str) else item.kind == "images"
        for picture in ("curves", "samples") if images else ("curves",):
            check_output(Path(figures) / f"peers-{name}-{picture}.png", "--figures", inputs=inputs)


def run_peers(
    datasets: Sequence[Union[str, PeerData]],
    models: Sequence[str],
    budgets: dict[str, Sequence[float]],
    protocol: Protocol = Protocol(),
    out: Optional[Union[str, Path]] = None,
    figures: Optional[Union[str, Path]] = None,
    data_dir: Optional[str] = None,
    quick: bool = False,
    resume: bool = False,
    command: str = "",
    log: LOG = print,
) -> dict[str, Any]:
    """Every model on every data set under ``protocol``, one after the other in this process.

    ``budgets``: training seconds per family (``"images"``, ``"vectors"``). The results file ``out``
    is rewritten after each (data set, model); with ``resume`` the pairs it already holds, measured
    under the same protocol and budgets, are kept and not run again. Figures go to ``figures``.
    Both are checked before anything is measured (:func:`check_outputs`)."""
    out = Path(out) if out is not None else None
    budgets = {k: sorted(float(b) for b in v) for k, v in budgets.items()}
    for name in models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    check_outputs(datasets, out, figures, data_dir)
    doc: dict[str, Any] = {"schema": SCHEMA, "command": command, "quick": quick, "started": _now(),
                           "machine": machine_info(), "protocol": protocol.as_dict(), "budgets_s": budgets,
                           "datasets": {}}
    if resume and out is not None and out.exists():
        try:
            old = json.loads(read_text(out))
        except ValueError as exc:
            raise ValueError(f"{out} is no results file to resume ({exc}); remove it or run without --resume") from None
        same = (old.get("schema"), old.get("protocol"), old.get("budgets_s"), old.get("quick")) == (
            SCHEMA, doc["protocol"], budgets, quick)
        if not same:
            raise ValueError(f"{out} was measured under another protocol or other budgets; "
                             f"remove it or run without --resume")
        doc = old
    device = torch.device(protocol.device)
    for item in datasets:
        dname = item if isinstance(item, str) else item.name
        entry = doc["datasets"].setdefault(dname, {"models": {}})
        todo = [m for m in models if "speed" not in entry["models"].get(m, {})]
        if not todo:
            log(f"{dname}: every model already measured in {out}")
            continue
        data = load(item, data_dir, quick) if isinstance(item, str) else item
        data.to(device)
        fam = "images" if data.kind == "images" else "vectors"
        entry.update({"unit": data.unit, "kind": data.kind, "features": data.features, "budgets_s": budgets[fam],
                      "info": data.info})
        for mname in todo:
            log(f"{dname}: {mname}")
            start = time.perf_counter()
            model, trained = _train_model(mname, data, budgets[fam], protocol, log)
            result: dict[str, Any] = {"label": model.label, **trained}
            result["speed"] = measure_speed(mname, model, data, protocol, log)
            result["label"] = f"{model.label} ({format_params(result['speed']['params'])})"
            if data.kind == "images":
                result["samples"] = grid_samples(model, data, protocol)
            result["wall_seconds"] = time.perf_counter() - start
            entry["models"][mname] = result
            _write(doc, out)
            if figures is not None:
                draw_figures(doc, dname, Path(figures), data.image_shape)
    doc["finished"] = _now()
    _write(doc, out)
    return doc


def _build_model(name: str, data: PeerData, protocol: Protocol) -> PeerModel:
    """Model ``name`` at its start for ``data`` (its own initialisation, seeded), on the protocol's device."""
    start_data = data.train_in_model_space() if MODELS[name].needs_data else None
    model = build(name, data.features, start_data, seed=protocol.seed)
    return model.to(torch.device(protocol.device))


def _train_model(name: str, data: PeerData, budgets: Sequence[float], protocol: Protocol,
                 log: LOG) -> tuple[PeerModel, dict[str, Any]]:
    """Model ``name`` trained under ``protocol`` and its training record (:func:`train_with_budgets`'s).
    The scheduled form trains one model per budget from the same start; the record joins their marks,
    keeps each run's curve under ``"curves"`` (by budget) and the largest run's as ``"curve"``, and the
    model returned is the largest run's."""
    if protocol.schedule == "constant":
        model = _build_model(name, data, protocol)
        return model, train_with_budgets(model, data, budgets, protocol, log)
    runs = []
    for budget in sorted(budgets):
        log(f"  a run of {budget:g} training seconds")
        model = _build_model(name, data, protocol)
        runs.append(train_with_budgets(model, data, [budget], protocol, log))
    stopped = [r["diverged"] for r in runs if r["diverged"]]
    return model, {"marks": [r["marks"][0] for r in runs], "curve": runs[-1]["curve"],
                   "curves": {f"{b:g}": r["curve"] for b, r in zip(sorted(budgets), runs)},
                   "eval_seconds": sum(r["eval_seconds"] for r in runs),
                   "max_step_seconds": max(r["max_step_seconds"] for r in runs),
                   "diverged": stopped[0] if stopped else None}


def missing_extras(models: Sequence[str], datasets: Sequence[str]) -> list[str]:
    """The models and data sets whose optional packages are not installed."""
    missing = [m for m in models if not available(m)]
    if "breast-cancer" in datasets:
        try:
            require("sklearn.datasets", "the breast-cancer data set")
        except MissingExtra:
            missing.append("breast-cancer")
    return missing
