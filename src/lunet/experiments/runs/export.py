"""``lunet export``: a run's best weights and what they model, in one small file.

The file is a checkpoint without optimiser state: :func:`lunet.experiments.store.checkpoint.load_model`
loads it as a :class:`~lunet.LUNet` (or :class:`~lunet.baselines.RealNVP`), or as a
:class:`~lunet.ClassConditionalFlow` for a per-class run. Its ``"run"`` entry
holds the run's description (data set, kind, the logit λ of image runs), which
says how pixels map to the model's inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lunet.experiments.config.presets import IMAGES, VECTORS
from lunet.experiments.store.checkpoint import load_checkpoint, save_checkpoint
from lunet.experiments.store.folder import RunFolder, as_folder
from lunet.experiments.store.record import ImageRunSettings, read_run

__all__ = ["export_run"]


def _best_weights(ckpt: dict[str, Any]) -> dict[str, Any]:
    return ckpt["best_model"] if ckpt.get("best_model") is not None else ckpt["model"]


def export_run(run_dir: str | os.PathLike | RunFolder, out: str | os.PathLike) -> Path:
    """Write the best weights of the run in ``run_dir`` to ``out``; returns ``out``.

    Raises ``FileNotFoundError`` when ``run_dir`` holds no run made by ``lunet train``."""
    run = as_folder(run_dir)
    record = read_run(run)  # a damaged run.json is named, not copied into the export
    paths = [run.checkpoint]
    if record.kind == IMAGES:
        from lunet.experiments.runs.images import model_folder

        settings = record.settings
        assert isinstance(settings, ImageRunSettings)  # the settings of every image run's record
        paths = [model_folder(run, c, settings.kind).checkpoint for c in settings.model_classes]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]} not found: the run in {run.path} has not saved every model yet")
    ckpts = [load_checkpoint(p) for p in paths]
    exported: dict[str, Any] = {
        "model_spec": ckpts[0]["model_spec"],
        "run": record.entries(),  # where this machine keeps the data says nothing about the model
        "epoch": [c["epoch"] for c in ckpts] if len(ckpts) > 1 else ckpts[0]["epoch"],
        "train_seconds": sum(c.get("train_seconds", 0.0) for c in ckpts),
        "best_model": None,
        "exported": True,
    }
    extra = ckpts[0].get("extra")
    if record.kind == VECTORS and isinstance(extra, dict) and "reference" in extra:
        exported["extra"] = {"reference": extra["reference"]}  # the Gaussian baseline and the data's range
    if len(ckpts) == 1:
        exported["model"] = _best_weights(ckpts[0])
    else:
        exported["model"] = None
        exported["class_models"] = [_best_weights(c) for c in ckpts]
    save_checkpoint(exported, out)
    return Path(out)
