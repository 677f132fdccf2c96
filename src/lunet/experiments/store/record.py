"""The record of a run: its kind, its settings and where its data are, as ``run.json`` holds them.

Three kinds of run: image runs (MNIST, Fashion-MNIST), runs on own feature
vectors (``"data": "vectors"`` in ``run.json``) and 2-D mixture runs (no
``run.json``: a checkpoint, and the results beside it). :func:`run_kind` decides
which a folder holds; :func:`read_run` reads its record and :func:`write_run`
writes one.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Optional, Sequence, Union

from lunet.experiments.config.errors import SettingError, first_sentence
from lunet.experiments.config.models import check_spec, short_repr, shortened
from lunet.experiments.config.presets import (
    DEFAULT_LAM,
    GMM2D,
    IMAGE_DATASETS,
    IMAGES,
    KINDS,
    NUM_CLASSES,
    RECIPES,
    VECTORS,
    paper_lunet_spec,
)
from lunet.experiments.data.columns import ColumnRules
from lunet.experiments.data.contexts import ContextRules
from lunet.experiments.files.atomic import write_text_atomic
from lunet.experiments.files.safe import UnsafeFile, read_text
from lunet.experiments.store.folder import RunFolder
from lunet.limits import check_positive_int

__all__ = ["VECTOR_KEYS", "IMAGE_KINDS", "IMAGE_DATA_INITS", "VECTOR_DATA_INITS", "ImageRunSettings",
           "VectorRunSettings", "RunRecord", "run_kind", "read_run", "write_run", "recorded_data"]

# Entries that only a run on own data writes in run.json: a damaged file that holds one is
# reported as a damaged run on own data, not taken for an image run.
VECTOR_KEYS = ("data", "features", "val_fraction", "data_file")
# "conditional": one ConditionalLUNet of p(x | class) for every class
IMAGE_KINDS = ("unconditional", "class", "per_class", "conditional")
IMAGE_DATA_INITS = ("gaussian", "standardize", "none")
VECTOR_DATA_INITS = ("standardize", "gaussian", "none")


@dataclass
class ImageRunSettings:
    """What an image run models."""

    dataset: str = "mnist"
    kind: str = "unconditional"
    class_label: Optional[int] = None
    model: dict[str, Any] = field(default_factory=lambda: paper_lunet_spec())
    lam: float = DEFAULT_LAM
    data_init: str = "gaussian"  # "gaussian" (start at the full-covariance Gaussian fit), "standardize" or "none"
    recipe: str = "paper"  # the named settings the run started from (settings.RECIPES)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {tuple(RECIPES)}, got {self.recipe!r}")
        if self.dataset not in IMAGE_DATASETS:
            raise ValueError(f"dataset must be one of {IMAGE_DATASETS}, got {self.dataset!r}")
        if self.kind not in IMAGE_KINDS:
            raise ValueError(f"kind must be one of {IMAGE_KINDS}, got {self.kind!r}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0 < self.lam < 0.5:
            raise ValueError(f"lam (the logit transform's λ) must lie strictly between 0 and 0.5, got {self.lam!r}")
        if self.data_init not in IMAGE_DATA_INITS:
            raise ValueError(f"data_init must be one of {IMAGE_DATA_INITS}, got {self.data_init!r}")
        # true is an int to Python; read back from run.json it is no class
        if self.class_label is not None and (isinstance(self.class_label, bool)
                                             or not isinstance(self.class_label, int)):
            raise ValueError(f"class_label must be an integer or null, got {self.class_label!r}")
        if self.kind == "class" and not (isinstance(self.class_label, int) and 0 <= self.class_label < NUM_CLASSES):
            raise ValueError(f"--class must be an integer in 0..{NUM_CLASSES - 1}, got {self.class_label!r}")
        check_spec(self.model)
        if (self.kind == "conditional") != (self.model.get("name") == "conditional_lunet"):
            raise ValueError(f"a run of kind {self.kind!r} cannot hold the model {self.model.get('name')!r}: a "
                             f"conditional run holds one conditional_lunet, other runs none")

    @property
    def classes(self) -> list[Optional[int]]:
        """The class of each density the run models (None = all classes): one per class for a
        per-class or conditional run."""
        if self.kind in ("per_class", "conditional"):
            return list(range(NUM_CLASSES))
        return [self.class_label] if self.kind == "class" else [None]

    @property
    def model_classes(self) -> list[Optional[int]]:
        """The class of each model the run trains and stores (None = all classes): a conditional run
        trains one model for every class."""
        return [None] if self.kind == "conditional" else self.classes


@dataclass
class VectorRunSettings:
    """What a run on own data models."""

    features: int
    model: dict[str, Any]
    val_fraction: Optional[float] = 0.1  # None: validated on rows given apart (val_data)
    data_init: str = "standardize"
    # the rules of lunet.experiments.data.columns.ColumnRules, as entries (None: every column as it is)
    columns: Optional[dict[str, Any]] = None
    # a run of p(x | c): the rules of lunet.experiments.data.contexts.ContextRules, as entries (None: p(x))
    context: Optional[dict[str, Any]] = None

    def __post_init__(self) -> None:
        # each field checked for its type too: read back from run.json, "3" is no width and true no fraction
        check_positive_int(self.features, "features")
        check_spec(self.model)
        if self.val_fraction is not None and not (
                isinstance(self.val_fraction, (int, float)) and not isinstance(self.val_fraction, bool)
                and 0 < self.val_fraction < 1):
            raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction!r}")
        if not isinstance(self.data_init, str) or self.data_init not in VECTOR_DATA_INITS:
            raise ValueError(f"data_init must be one of {VECTOR_DATA_INITS}, got {self.data_init!r}")
        if self.columns is not None:
            ColumnRules.from_entries(self.columns, self.features)
        if self.model.get("features") != self.features:
            raise ValueError(f"the model spec's features {self.model.get('features')!r} is not the data's width "
                             f"{self.features}")
        conditional = self.model.get("name") == "conditional_lunet"
        if self.context is None and conditional:
            raise ValueError("the model is conditional but the run records no context")
        if self.context is not None:
            rules = ContextRules.from_entries(self.context)
            if not conditional or self.model.get("num_classes") != rules.num_classes:
                raise ValueError(f"the run's context ({rules.kind}, num_classes {rules.num_classes}) is not the "
                                 f"model's ({self.model.get('name')}, num_classes {self.model.get('num_classes')!r})")

    @property
    def context_rules(self) -> Optional[ContextRules]:
        """The context's rules of a run of ``p(x | c)``, None for a run of ``p(x)``."""
        return None if self.context is None else ContextRules.from_entries(self.context)


@dataclass(frozen=True)
class RunRecord:
    """One run: its ``kind`` (:data:`KINDS`), its ``settings`` (None for a 2-D run) and where its
    data are (``data``: the folder an image run found its data set in, the file a run on own data
    was trained on; None if not recorded)."""

    kind: str
    settings: Union[ImageRunSettings, VectorRunSettings, None] = None
    data: Optional[str] = None
    context: Optional[str] = None  # a run of p(x | c) on own data: the file its contexts came from

    def entries(self) -> dict[str, Any]:
        """What ``run.json`` holds for the run, but where its data are: what the run is."""
        if self.kind == VECTORS:
            assert isinstance(self.settings, VectorRunSettings)  # each kind holds its own settings
            entries = {"data": VECTORS, **asdict(self.settings)}
            if entries["context"] is None:  # a run of p(x) records none, as before contexts were
                del entries["context"]
            return entries
        if self.kind == IMAGES:
            assert isinstance(self.settings, ImageRunSettings)  # each kind holds its own settings
            return asdict(self.settings)
        return {"dataset": GMM2D}


def run_kind(run: RunFolder) -> Optional[str]:
    """The kind of the run in the folder ``run``, None if it holds none; :class:`UnsafeFile` if
    ``run.json`` is a FIFO, a device or a folder. A ``run.json`` that holds an entry of :data:`VECTOR_KEYS`
    is a run on own data, damaged or not (so that reading it names the damage)."""
    try:
        record = json.loads(read_text(run.run_file))
    except UnsafeFile:  # refused by its name here rather than taken for some other kind of run
        raise
    except OSError:
        record = None
    except ValueError:
        return IMAGES
    if isinstance(record, dict) and any(key in record for key in VECTOR_KEYS):
        return VECTORS
    if run.run_file.exists():
        return IMAGES
    return GMM2D if run.checkpoint.is_file() else None


def read_run(run: RunFolder, kinds: Sequence[str] = KINDS) -> RunRecord:
    """The record of the run in the folder ``run``, which must be of one of ``kinds``; ``ValueError`` (or
    ``FileNotFoundError``) saying what the folder holds instead, or what is wrong with ``run.json``."""
    kind = run_kind(run)
    if kind is None and GMM2D in kinds:
        raise FileNotFoundError(f"{run.path} holds no run made by `lunet train` (neither {run.run_file.name} "
                                f"nor {run.checkpoint.name})")
    if kind == GMM2D and kind in kinds:
        return RunRecord(GMM2D)
    # the reader of the kind asked for says what the folder holds instead
    if IMAGES in kinds and (kind == IMAGES or kind not in kinds):
        return _read_images(run)
    return _read_vectors(run)


def write_run(run: RunFolder, record: RunRecord) -> None:
    """``run.json`` of ``record``. An image run's may not replace the description of another run
    that holds checkpoints; where its data lie may change, what they are may not."""
    run.path.mkdir(parents=True, exist_ok=True)
    path = run.run_file
    entries = record.entries()
    if record.kind == IMAGES:
        if path.exists() and run.checkpoints():  # without a checkpoint there is no run to protect
            existing = json.loads(read_text(path))
            existing.pop("data_dir", None)
            if isinstance(existing, dict):  # an entry left out reads as its default, as _read_images reads it
                existing = {"recipe": ImageRunSettings.recipe, **existing}
            if existing != entries:
                raise SettingError("{path} describes another run ({existing}); use another {out}, or the same "
                                   "options to resume", path=path, existing=existing)
        if record.data is not None:
            entries["data_dir"] = record.data
    elif record.kind == VECTORS:
        entries["data_file"] = record.data
        if record.context is not None:
            entries["context_file"] = record.context
    write_text_atomic(path, json.dumps(entries, indent=2) + "\n")


def recorded_data(run: RunFolder, kind: str, key: Optional[str] = None) -> Optional[str]:
    """Where the run of ``kind`` in the folder ``run`` found its data, if recorded (None for a run of another
    kind, or a damaged record); ``key`` another entry naming a file (``"context_file"``);
    :class:`UnsafeFile` when ``run.json`` is no regular file."""
    try:
        entries = json.loads(read_text(run.run_file))
    except UnsafeFile:
        raise
    except (OSError, ValueError):
        return None
    if not isinstance(entries, dict) or (kind == VECTORS) != any(key in entries for key in VECTOR_KEYS):
        return None
    found = entries.get(key or ("data_file" if kind == VECTORS else "data_dir"))
    return found if isinstance(found, str) else None


def _read_images(run: RunFolder) -> RunRecord:
    run_dir, path = run.path, run.run_file
    if not path.exists():
        if run.checkpoint.is_file() and run.summary.is_file():
            raise ValueError(
                f"{run_dir} is a 2-D mixture run: its test NLL and KL are in {run.summary}, its "
                f"pictures in density.png and samples.png; this command takes image runs (MNIST, Fashion-MNIST). "
                f"`lunet export {run_dir} --out FILE` makes its weights a file to load in Python"
            )
        raise FileNotFoundError(f"{path} not found: {run_dir} is not an image run directory made by `lunet train`")
    try:
        entries = json.loads(read_text(path))
    except UnsafeFile:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({shortened(str(exc))}); it was not written by `lunet train` or was damaged"
        ) from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path} holds a {type(entries).__name__}, not the settings of a run")
    data_dir = entries.pop("data_dir", None)
    if any(key in entries for key in VECTOR_KEYS):  # damaged or not, its entries are those of a run on own data
        raise ValueError(f"{run_dir} is a run on own data (trained with --data); this command takes image runs. "
                         f"`lunet evaluate {run_dir} --data FILE` and `lunet sample {run_dir} --out FILE.npy` take it")
    try:
        settings = ImageRunSettings(**entries)
    except TypeError as exc:
        raise ValueError(f"{path} does not describe a run of this version: {shortened(str(exc))}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {shortened(str(exc))}") from None
    return RunRecord(IMAGES, settings, data_dir if isinstance(data_dir, str) else None)


def _read_vectors(run: RunFolder) -> RunRecord:
    path = run.run_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run.path} is not a run directory made by `lunet train`")
    try:
        entries = json.loads(read_text(path))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} does not describe a run on own data ({first_sentence(exc)})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path} does not describe a run on own data: it holds a {type(entries).__name__}")
    if entries.get("data") != VECTORS:
        raise ValueError(f"{path} does not describe a run on own data: its \"data\" entry is "
                         f"{short_repr(entries.get('data'))}, not {VECTORS!r}")
    entries.pop("data")
    known = {f.name for f in fields(VectorRunSettings)} | {"data_file", "context_file"}
    unknown = sorted(set(entries) - known)
    missing = [f.name for f in fields(VectorRunSettings) if f.name not in entries and f.default is MISSING]
    if unknown or missing:
        listed = "; ".join(part for part in (f"unknown entries {', '.join(unknown)}" if unknown else "",
                                             f"no {', '.join(missing)}" if missing else "") if part)
        raise ValueError(f"{path} does not describe a run on own data: {shortened(listed)}")
    files = {key: entries.pop(key, None) for key in ("data_file", "context_file")}
    for key, value in files.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{path} does not describe a run on own data ({key} must be a path or null, "
                             f"got {short_repr(value)})")
    try:
        return RunRecord(VECTORS, VectorRunSettings(**entries), files["data_file"], files["context_file"])
    except ValueError as exc:
        raise ValueError(f"{path} does not describe a run on own data ({shortened(str(exc))})") from None
