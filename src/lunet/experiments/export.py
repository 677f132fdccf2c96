"""``lunet export``: a run's best weights and what they model, in one small file.

The file is a checkpoint without optimiser state: :func:`lunet.experiments.checkpoint.load_model`
loads it as a :class:`~lunet.LUNet` (or :class:`~lunet.baselines.RealNVP`), or as a
:class:`~lunet.ClassConditionalFlow` for a per-class run. Its ``"run"`` entry
holds the run's description (data set, kind, the logit λ of image runs), which
says how pixels map to the model's inputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lunet.experiments.checkpoint import load_checkpoint, save_checkpoint
from lunet.experiments.rundir import RunFolder, read_text


def _best_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    return ckpt["best_model"] if ckpt.get("best_model") is not None else ckpt["model"]


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the best weights of the run in ``run_dir`` to ``out``; returns ``out``.

    Raises ``FileNotFoundError`` when ``run_dir`` holds no run made by ``lunet train``."""
    from lunet.experiments import vector_runs

    run = RunFolder(run_dir)
    if vector_runs.is_vector_run(run_dir):  # a run on own data
        vector_runs.read_run_file(run_dir)  # a damaged run.json is named, not copied into the export
        paths = [run.checkpoint]
        record = json.loads(read_text(run.run_file))
        record.pop("data_file", None)  # where this machine keeps the data says nothing about the model
    elif run.run_file.is_file():  # an image run
        from lunet.experiments.images import model_folder, read_run_file

        settings = read_run_file(run_dir)
        paths = [model_folder(run, c, settings.kind).checkpoint for c in settings.classes]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]} not found: the run in {run_dir} has not saved every model yet")
        record = json.loads(read_text(run.run_file))
        record.pop("data_dir", None)  # where this machine keeps the data says nothing about the model
    elif run.checkpoint.is_file():  # a 2-D run
        paths = [run.checkpoint]
        record = {"dataset": "gmm2d"}
    else:
        raise FileNotFoundError(
            f"{run_dir} holds no run made by `lunet train` (neither {run.run_file.name} nor {run.checkpoint.name})"
        )
    ckpts = [load_checkpoint(p) for p in paths]
    exported: dict[str, Any] = {
        "model_spec": ckpts[0]["model_spec"],
        "run": record,
        "epoch": [c["epoch"] for c in ckpts] if len(ckpts) > 1 else ckpts[0]["epoch"],
        "train_seconds": sum(c.get("train_seconds", 0.0) for c in ckpts),
        "best_model": None,
        "exported": True,
    }
    if len(ckpts) == 1:
        exported["model"] = _best_weights(ckpts[0])
    else:
        exported["model"] = None
        exported["class_models"] = [_best_weights(c) for c in ckpts]
    save_checkpoint(exported, out)
    return Path(out)
