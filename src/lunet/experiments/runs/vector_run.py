"""A trained run on own feature vectors: :class:`VectorRun` (test likelihood, samples, export),
loaded from its folder or its exported file, and the rows it takes.

With contexts the run models ``p(x | c)``; its rows carry their contexts as extra columns, which
:func:`log_prob_fn` splits off."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Union, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lunet.checks import check_batch, check_temperature
from lunet.experiments.config.errors import SettingError, first_sentence
from lunet.experiments.config.presets import MAX_SAMPLE_VALUES, VECTORS
from lunet.experiments.data.columns import ColumnRules
from lunet.experiments.data.contexts import ContextRules, check_rows
from lunet.experiments.data.rows import check_fits_dtype, check_width
from lunet.experiments.runs.vector_report import Reference, comparison_line, sample_report
from lunet.experiments.store.checkpoint import load_model
from lunet.experiments.store.folder import RunFolder, as_folder
from lunet.experiments.store.record import RunRecord, VectorRunSettings, read_run
from lunet.experiments.training.trainer import resolve_device
from lunet.latent import finite_temperature, flow_placement

__all__ = ["SAMPLE_CHUNK_ROWS", "as_vectors", "log_prob_fn", "inverse_in_chunks", "read_run_file", "VectorRun",
           "load_vector_run", "evaluate_vectors", "sample_vectors", "check_sample_count"]


Vectors = Union[torch.Tensor, np.ndarray, Dataset, DataLoader]


SAMPLE_CHUNK_ROWS = 65_536


class VectorFlow(Protocol):
    """What a run's flow is called for: a flow of ``p(x)``, or of ``p(x | c)``, whose passes take the
    contexts after the rows."""

    @property
    def features(self) -> int: ...

    def log_prob(self, x: torch.Tensor, /, *context: torch.Tensor) -> torch.Tensor: ...

    def inverse(self, z: torch.Tensor, /, *context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def as_vectors(data: Vectors, name: str = "data", min_rows: int = 2) -> torch.Tensor:
    """``data`` as one float64 tensor (N, D), N >= ``min_rows``: a tensor or array as it is, a ``Dataset``
    or ``DataLoader`` gathered once (items or batches may be ``(x, label)`` pairs: ``x`` is kept)."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(data)
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=1024)
    if isinstance(data, DataLoader):
        data = torch.cat([_features(batch) for batch in data])
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, a numpy array, a Dataset or a DataLoader, got {type(data).__name__}")
    if data.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(data.shape)}")
    if data.dtype.is_complex:
        raise TypeError(f"{name} must hold real numbers, got {data.dtype}")
    data = data.detach().cpu().to(torch.float64)
    check_batch(data, data.shape[1], name)
    if data.shape[0] < min_rows:
        raise ValueError(f"{name} has {data.shape[0]} row(s); at least {min_rows} are needed")
    return data


def _features(batch: Any) -> torch.Tensor:
    """A batch's vectors as (B, D): the first member of an ``(x, label)`` pair, each item flattened."""
    x = torch.as_tensor(batch[0] if isinstance(batch, (tuple, list)) else batch)
    return x.reshape(x.shape[0], -1)


def log_prob_fn(model: nn.Module, batch: torch.Tensor, noise: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, context: Optional[ContextRules] = None) -> torch.Tensor:
    """``log p(x)`` in nats per row, ``batch`` (B, D) moved to the model's dtype and device; with
    ``noise`` (B, D) U[0, 1) draws and ``mask`` (D,) the columns to dequantise, ``log p(x + noise · mask)``.
    With ``context``, the rules of a conditional run, ``batch`` (B, D + width) carries each row's
    context after its D features, and the result is ``log p(x | c)`` (noise of either width is
    taken for the first D columns)."""
    dtype, device = flow_placement(model)
    flow = cast(VectorFlow, model)  # the Trainer passes its flow as a module
    c = None
    if context is not None:
        width = flow.features
        batch, c = batch[:, :width], context.to_model(batch[:, width:], dtype, device)
        noise = None if noise is None else noise[:, :width]
    batch = batch.to(device=device, dtype=dtype)
    if noise is not None and mask is not None:
        batch = batch + noise.to(batch) * mask.to(batch)
    return flow.log_prob(batch) if c is None else flow.log_prob(batch, c)


@torch.no_grad()
def inverse_in_chunks(model: nn.Module, z: torch.Tensor, context: Optional[tuple[torch.Tensor, ContextRules]] = None
                       ) -> torch.Tensor:
    """``model``'s inverse of latents ``z`` (N, features) in its dtype, float64 on the CPU; a chunk that
    holds a non-finite latent is passed through as it is, for the caller to find. ``context``: the
    contexts of the rows (N, width) float64 and their rules, for a conditional flow."""
    dtype, device = flow_placement(model)
    flow = cast(VectorFlow, model)

    def inverse(chunk: torch.Tensor, index: int) -> torch.Tensor:
        if context is None:
            return flow.inverse(chunk.to(device))[0]
        rows = context[0][index * SAMPLE_CHUNK_ROWS : (index + 1) * SAMPLE_CHUNK_ROWS]
        return flow.inverse(chunk.to(device), context[1].to_model(rows, dtype, device))[0]

    # in chunks: a pass over all the rows at once holds several copies of them per block
    return torch.cat([inverse(chunk, i).double().cpu() if bool(torch.isfinite(chunk).all()) else chunk.double()
                      for i, chunk in enumerate(z.split(SAMPLE_CHUNK_ROWS))])


def read_run_file(run_dir: str | Path | RunFolder) -> VectorRunSettings:
    """The settings of the run on own data in ``run_dir``; ``ValueError`` naming ``run.json`` when it
    is something else."""
    settings = read_run(as_folder(run_dir), (VECTORS,)).settings
    assert isinstance(settings, VectorRunSettings)  # read_run names any other kind of run in its error
    return settings


@dataclass
class VectorRun:
    """A trained run on own data: its settings, its best model (eval mode) and its
    :class:`~lunet.experiments.runs.vector_report.Reference` (None for a run made without one).
    Its methods score and sample rows as the data are given (every column, whole numbers where
    the run dequantises)."""

    settings: VectorRunSettings
    model: nn.Module
    reference: Optional[Reference]

    @property
    def columns(self) -> ColumnRules:
        """The run's column rules (every column as it is for a run made without them)."""
        if self.settings.columns is None:
            return ColumnRules(self.settings.features)
        return ColumnRules.from_entries(self.settings.columns, self.settings.features)

    @property
    def context(self) -> Optional[ContextRules]:
        """How the run reads contexts, for a run of ``p(x | c)``; None for a run of ``p(x)``."""
        return self.settings.context_rules

    def context_rows(self, context: Optional[Vectors], rows: Optional[int], name: str = "context",
                     data_name: str = "data") -> Optional[tuple[torch.Tensor, ContextRules]]:
        """The contexts ``context`` (N, width) of ``rows`` data rows, checked against the run (rows, width,
        labels of its classes), float64, with the run's rules; None for a run of ``p(x)``, which takes
        none (``rows`` None: any number of rows). ``ValueError`` naming ``name`` (and ``data_name``) and
        the figure otherwise."""
        rules = self.context
        if rules is None:
            if context is not None:
                raise ValueError(f"{name}: the run models p(x) without a context (it was trained without one); "
                                 f"leave the contexts out")
            return None
        if context is None:
            raise ValueError("the run models p(x | c): give the contexts, one row per data row (--context FILE)")
        c = rules.check(as_vectors(context, str(name), min_rows=1), str(name))
        if rows is not None:
            check_rows(c, rows, str(name), str(data_name))
        if rules.kind == "vectors":
            check_fits_dtype(c, flow_placement(self.model)[0], name)
        return c, rules

    def model_rows(self, data: Vectors, name: str = "data") -> torch.Tensor:
        """Rows of the data as given (N, width) -> the flow's input (N, features), float64: columns checked,
        constant ones dropped, integer ones dequantised by noise that is a function of each row alone."""
        rules = self.columns
        x = as_vectors(data, str(name), min_rows=1)
        check_width(x, rules.width, name)
        check_fits_dtype(x, flow_placement(self.model)[0], name)
        return rules.dequantized(rules.to_model(x))

    def log_prob(self, data: Vectors, batch_size: int = 4096, name: str = "data",
                 context: Optional[Vectors] = None, context_name: str = "context") -> torch.Tensor:
        """``log p(x)`` in nats of each row of ``data`` (N, width), (N,) float64; for a run of
        ``p(x | c)``, ``log p(x | c)`` under the contexts ``context`` (N, context width), one per row."""
        rows = self.model_rows(data, name)
        return self.rows_log_prob(rows, batch_size, self.context_rows(context, rows.shape[0], context_name, name))

    @torch.no_grad()
    def rows_log_prob(self, rows: torch.Tensor, batch_size: int = 4096,
                      context: Optional[tuple[torch.Tensor, ContextRules]] = None) -> torch.Tensor:
        """``log p`` in nats of the flow's input ``rows`` (N, features), as :meth:`model_rows` gives them;
        ``context``: their contexts and rules, as :meth:`context_rows` gives them."""
        rules = None
        if context is not None:
            rows, rules = torch.cat([rows, context[0]], 1), context[1]
        return torch.cat([log_prob_fn(self.model, chunk, context=rules).double().cpu()
                          for chunk in rows.split(batch_size)])

    @torch.no_grad()
    def sample(self, num_samples: int, temperature: float = 1.0, seed: int = 0,
               context: Optional[Vectors] = None, context_name: str = "context") -> torch.Tensor:
        """``num_samples`` draws (num_samples, width) float64 on the CPU, latents from N(0, T² I) drawn from
        ``seed``, as rows of the data; rows × width at most ``MAX_SAMPLE_VALUES``. A draw that overflows inside
        the flow is refused, naming a temperature at which the same draws stay finite.

        A run of ``p(x | c)`` takes contexts (M, context width) and draws ``num_samples`` rows under
        each: (M · num_samples, width), the draws of context row ``i`` at rows ``i · num_samples`` to
        ``(i + 1) · num_samples - 1``."""
        check_temperature(temperature)
        features, model = self.settings.features, self.model
        given = self.context_rows(context, None, context_name)
        check_sample_count(num_samples, features, 1 if given is None else given[0].shape[0])
        if given is not None:
            given = (given[0].repeat_interleave(num_samples, dim=0), given[1])
        total = num_samples if given is None else given[0].shape[0]
        dtype = flow_placement(model)[0]
        gen = torch.Generator().manual_seed(seed)
        draws = torch.randn(total, features, generator=gen, dtype=torch.float64)
        z = (temperature * draws).to(dtype)
        overflowed = ~torch.isfinite(z).all(dim=1)  # draws beyond the dtype's range: no pass can take them
        samples = inverse_in_chunks(model, z, given)
        overflowed |= ~torch.isfinite(samples).all(dim=1)
        if bool(overflowed.any()):
            few = draws[overflowed][:64]
            flow: nn.Module | types.SimpleNamespace = model
            if given is not None:  # the flow under the overflowing rows' contexts
                c = given[1].to_model(given[0][overflowed][:64], dtype, flow_placement(model)[1])
                conditional = cast(VectorFlow, model)
                flow = types.SimpleNamespace(dtype=dtype, device=flow_placement(model)[1],
                                             inverse=lambda z: conditional.inverse(z, c))
            finite = finite_temperature(flow, lambda t: t * few, temperature)
            where = (f"on the same draws it stays finite at {{temperature}} {finite:.3g}" if finite is not None
                     else "it is not finite on them at any temperature")
            raise SettingError("samples at {temperature} {given:g} overflow {dtype} inside the flow ({bad:,} of "
                               "{rows:,} rows hold NaN or infinite values); " + where + ": give a lower {temperature}",
                               given=temperature, dtype=str(dtype).removeprefix("torch."), bad=int(overflowed.sum()),
                               rows=total)
        return self.columns.to_data(samples)

    def sample_report(self, samples: torch.Tensor) -> Optional[dict[str, Any]]:
        """How far ``samples`` (N, width), as :meth:`sample` gives them, reach beyond the training rows'
        range (:func:`~lunet.experiments.runs.vector_report.sample_report`); None without a reference."""
        if self.reference is None:
            return None
        return sample_report(self.columns.to_model(samples), self.reference.low, self.reference.high)

    def gaussian_nll_per_dim(self, rows: torch.Tensor,
                             context: Optional[tuple[torch.Tensor, ContextRules]] = None) -> float:
        """The reference Gaussian's mean NLL (nats/dim) of the flow's input ``rows`` (N, features), given
        their ``context`` (as :meth:`context_rows` gives it) for a conditional run."""
        assert self.reference is not None  # callers ask only a run that keeps one
        return self.reference.nll_per_dim(rows, None if context is None else context[1].design(context[0]))

    def export(self) -> dict[str, Any]:
        """The run as one file holds it (``lunet export``; :func:`~lunet.experiments.store.checkpoint.load_model`
        reads the model back, :meth:`from_export` the whole)."""
        extra = {"reference": self.reference.entries()} if self.reference is not None else {}
        return {"model_spec": self.settings.model, "run": RunRecord(VECTORS, self.settings, None).entries(),
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}, "best_model": None,
                "extra": extra, "exported": True}

    @classmethod
    def from_export(cls, path: str | Path, device: str = "cpu") -> "VectorRun":
        """A run on own data from a file :meth:`export` (or ``lunet export``) wrote."""
        model, ckpt = load_model(path)
        entries = ckpt.get("run")
        if not (isinstance(entries, dict) and entries.get("data") == VECTORS):
            raise ValueError(f"{path} holds no run on own data (exported from a run trained with --data)")
        try:
            settings = VectorRunSettings(**{k: v for k, v in entries.items()
                                            if k not in ("data", "data_file", "context_file")})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: its run record is damaged: {first_sentence(exc)}") from None
        return cls(settings, model.to(resolve_device(device)).eval(), _reference_of(ckpt, settings, path))


def load_vector_run(run_dir: str | Path | RunFolder, device: str = "cpu") -> VectorRun:
    """The settings, the best model on ``device`` and the reference of a run on own data."""
    run = as_folder(run_dir)
    settings = read_run_file(run)
    model, ckpt = load_model(run.checkpoint, which="best")
    return VectorRun(settings, model.to(resolve_device(device)).eval(), _reference_of(ckpt, settings, run.checkpoint))


def _reference_of(ckpt: dict[str, Any], settings: VectorRunSettings, path: str | Path) -> Optional[Reference]:
    """The reference a checkpoint or export ``ckpt`` (read from ``path``) keeps in its extra, checked."""
    extra = ckpt.get("extra")
    if not isinstance(extra, dict):
        extra = {}
    rules = settings.context_rules
    return Reference.from_entries(extra.get("reference"), settings.features, str(path),
                                  None if rules is None else rules.design_width)


def evaluate_vectors(run_dir: str | Path | RunFolder, data: Vectors, device: str = "cpu", batch_size: int = 4096,
                     name: str = "data", keep_rows: bool = False, context: Optional[Vectors] = None,
                     context_name: str = "context") -> dict[str, Any]:
    """Test likelihood of ``data`` (N, D) under a run's best model: mean NLL in nats per
    dimension and per vector, their spread over the rows, and the run's Gaussian baseline on
    the same rows; ``name`` names the data in errors. ``keep_rows``: also ``"log_prob"``, each
    row's ``log p(x)`` in nats, (N,) float64. A run of ``p(x | c)`` takes the rows' contexts
    ``context`` (N, context width), named ``context_name`` in errors, and scores ``log p(x | c)``."""
    loaded = load_vector_run(run_dir, device)
    features = loaded.settings.features
    rows = loaded.model_rows(data, name)
    given = loaded.context_rows(context, rows.shape[0], context_name, name)
    lp = loaded.rows_log_prob(rows, batch_size, given)
    result: dict[str, Any] = {
        "nll_nats_per_dim": float(-lp.mean() / features),
        "nll_nats_per_vector": float(-lp.mean()),
        "nll_nats_per_vector_std": float(lp.std()) if lp.numel() > 1 else 0.0,
        "num_vectors": int(lp.shape[0]),
        "features": features,
    }
    if loaded.reference is not None:
        result["gaussian_nll_nats_per_dim"] = loaded.gaussian_nll_per_dim(rows, given)
        result["baseline"] = loaded.reference.name
        result["comparison"] = comparison_line(result["nll_nats_per_dim"], result["gaussian_nll_nats_per_dim"],
                                               "test", loaded.reference.name)
    if keep_rows:
        result["log_prob"] = lp
    return result


def sample_vectors(run_dir: str | Path | RunFolder, num_samples: int, temperature: float = 1.0, seed: int = 0,
                   device: str = "cpu", context: Optional[Vectors] = None,
                   context_name: str = "context") -> torch.Tensor:
    """``num_samples`` draws (num_samples, D) from a run's best model (:meth:`VectorRun.sample`): latents from
    N(0, T² I), float64 on the CPU, as rows of the data (integer columns whole numbers, dropped
    columns their value); rows × width at most ``MAX_SAMPLE_VALUES`` (another ``seed`` draws more).
    A run of ``p(x | c)`` draws ``num_samples`` rows under each row of ``context`` (M, context
    width): (M · num_samples, D), context by context."""
    check_temperature(temperature)
    run = as_folder(run_dir)
    contexts = context.shape[0] if isinstance(context, (torch.Tensor, np.ndarray)) else 1
    check_sample_count(num_samples, read_run_file(run).features, contexts)  # before the checkpoint is read
    return load_vector_run(run, device).sample(num_samples, temperature, seed, context, context_name)


def check_sample_count(num_samples: int, features: int, contexts: int = 1) -> None:
    """``SettingError`` when ``num_samples`` samples of width ``features`` (under each of ``contexts`` context
    rows) exceed what one call draws."""
    total = num_samples * contexts * features
    if total > MAX_SAMPLE_VALUES:
        under = "" if contexts == 1 else f" under each of {contexts:,} contexts,"
        raise SettingError("{num_samples} {given:,} samples" + under + " of width {features}" + ("," if under else "")
                           + " are {total:,} numbers, more than the {cap:,} one call draws; give {num_samples} at most "
                           "{most:,} (and another {seed} for more)", given=num_samples, features=features, total=total,
                           cap=MAX_SAMPLE_VALUES, most=MAX_SAMPLE_VALUES // (features * contexts))
