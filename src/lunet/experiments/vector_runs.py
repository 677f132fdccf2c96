"""Runs on users' own feature vectors: training, test likelihood and sampling.

A run folder holds ``run.json`` (``"data": "vectors"``, the width, the model
spec, the validation split) beside the usual checkpoint, metrics and curves.
The flow's input standardisation is fitted to the training rows and its
Jacobian is part of every likelihood, so figures are those of the raw data,
in nats per dimension.

With contexts (one row of them per data row) the run models ``p(x | c)`` with a
:class:`~lunet.ConditionalLUNet`; ``run.json`` records how the contexts are read
(:class:`~lunet.experiments.contexts.ContextRules`) and the file they came from.
The training rows carry their contexts as extra columns, so the training loop
sees one tensor of rows, and :func:`log_prob_fn` splits them off.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lunet.checks import check_batch, check_temperature
from lunet.experiments.checkpoint import first_sentence, load_model
from lunet.experiments.columns import ColumnRules
from lunet.experiments.contexts import ContextRules, check_rows
from lunet.experiments.distributed import Group, current
from lunet.experiments.models import build_model
from lunet.experiments.resources import check_model_memory
from lunet.experiments.run_record import VECTORS, RunRecord, VectorRunSettings, read_run, write_run
from lunet.experiments.rundir import RunFolder, as_folder, write_text_atomic
from lunet.experiments.settings import (
    MAX_SAMPLE_VALUES,
    SettingError,
    TrainConfig,
    conditional_vector_spec,
    vector_lunet_spec,
    vector_train_config,
)
from lunet.experiments.step_runner import check_shared_config
from lunet.experiments.train import Trainer, resolve_device
from lunet.experiments.vector_report import Reference, comparison_line, sample_report
from lunet.experiments.vectors import check_fits_dtype, check_width
from lunet.latent import finite_temperature, flow_placement

Vectors = Union[torch.Tensor, np.ndarray, Dataset, DataLoader]
# Rows a training needs to learn from: a spread (the standardisation's) takes two. The Gaussian
# start needs more rows than features (the covariance of fewer is singular).
MIN_TRAIN_ROWS = 2
SAMPLE_CHUNK_ROWS = 65_536
SPLIT_SEED = 0  # the validation rows are drawn with this seed, whatever the training seed


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


def split_rows(data: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)``: a fixed random ``val_fraction`` of the rows (at least one, at most N − 1)
    for validation, drawn with :data:`SPLIT_SEED` so that every call and every resume agrees."""
    n = data.shape[0]
    num_val = _num_val(n, val_fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return data[order[: n - num_val]], data[order[n - num_val :]]


def _num_val(n: int, val_fraction: float) -> int:
    return min(n - 1, max(1, math.ceil(val_fraction * n)))


def _check_enough_rows(name: str, train: torch.Tensor, val: torch.Tensor, data_init: str,
                       val_fraction: Optional[float]) -> None:
    """``ValueError`` giving the minimum when ``train`` has too few rows to learn from."""
    features = train.shape[1]
    if data_init == "gaussian":
        need, why = features + 1, f"the Gaussian start needs more rows than the {features} features"
    else:
        need, why = MIN_TRAIN_ROWS, "one row has no spread"
    have = train.shape[0]
    if have >= need:
        return
    if val_fraction is None:  # validated on rows given apart
        raise ValueError(f"{name} has {have} row{'' if have == 1 else 's'}; training needs at least {need} ({why})")
    first = max(need + 1, math.floor(need / (1 - val_fraction)) - 2)  # just below the answer, whatever the share
    total = next(n for n in itertools.count(first) if n - _num_val(n, val_fraction) >= need)
    raise ValueError(
        f"{name} has {have + val.shape[0]} row{'' if have + val.shape[0] == 1 else 's'}: {have} to train on and "
        f"{val.shape[0]} to validate; training needs at least {need} to train on ({why}) and one to validate, "
        f"so at least {total} rows with a validation share of {val_fraction:g}"
    )


def log_prob_fn(model: nn.Module, batch: torch.Tensor, noise: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None, context: Optional[ContextRules] = None) -> torch.Tensor:
    """``log p(x)`` in nats per row, ``batch`` (B, D) moved to the model's dtype and device; with
    ``noise`` (B, D) U[0, 1) draws and ``mask`` (D,) the columns to dequantise, ``log p(x + noise · mask)``.
    With ``context``, the rules of a conditional run, ``batch`` (B, D + width) carries each row's
    context after its D features, and the result is ``log p(x | c)`` (noise of either width is
    taken for the first D columns)."""
    dtype, device = flow_placement(model)
    c = None
    if context is not None:
        width = model.features
        batch, c = batch[:, :width], context.to_model(batch[:, width:], dtype, device)
        noise = None if noise is None else noise[:, :width]
    batch = batch.to(device=device, dtype=dtype)
    if noise is not None and mask is not None:
        batch = batch + noise.to(batch) * mask.to(batch)
    return model.log_prob(batch) if c is None else model.log_prob(batch, c)


def _check_spread(name: str, train: torch.Tensor, rules: ColumnRules) -> None:
    """``SettingError`` naming the columns that hold one value over the training rows (and are not
    dequantised, which gives them a spread): no density has a spread to fit there."""
    constant = (train == train[0]).all(dim=0) if train.shape[0] else torch.zeros(train.shape[1], dtype=torch.bool)
    mask = rules.noise_mask()
    if mask is not None:
        constant &= ~mask.bool()
    if bool(constant.any()):
        kept = rules.kept
        shown = ", ".join(rules.column_name(kept[j]) for j in constant.nonzero().flatten().tolist()[:8])
        raise SettingError("{name}: column(s) {shown} hold one value in every training row, so no density has a "
                           "spread to fit there; give {drop_constant} to drop them (samples then give them their "
                           "value back), or drop them from the data", name=name, shown=shown)


def default_data_init(num_rows: int, features: int) -> str:
    """The start of a run on ``num_rows`` training rows of width ``features``: their full-covariance
    Gaussian when there are at least twice as many rows as features (the flow then starts where
    the baseline is, and validation keeps it unless training improves on it), else their
    standardisation (a covariance of so few rows is too poorly known to start from)."""
    return "gaussian" if num_rows >= 2 * features else "standardize"


def train_vectors(
    data: Vectors,
    out: str | Path,
    config: Union[TrainConfig, Mapping[str, Any], None] = None,
    model_spec: Optional[dict[str, Any]] = None,
    val_data: Optional[Vectors] = None,
    val_fraction: Optional[float] = None,
    data_init: Optional[str] = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    data_file: Optional[str] = None,
    group: Optional[Group] = None,
    drop_constant: bool = False,
    dequantize: str = "auto",
    names: Optional[list[str]] = None,
    context: Optional[Vectors] = None,
    val_context: Optional[Vectors] = None,
    context_kind: str = "auto",
    context_file: Optional[str] = None,
    context_names: Optional[list[str]] = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a flow on feature vectors ``data`` (N, D) by maximum likelihood; returns the
    model with its best validation weights and a summary.

    ``data``: a tensor, numpy array, ``Dataset`` or ``DataLoader`` of vectors (gathered
    into memory once). ``val_data`` validates, else a fixed random ``val_fraction`` of
    the rows does. ``config``: a :class:`TrainConfig`, or the fields to change in the
    defaults chosen from the number of training rows
    (:func:`~lunet.experiments.settings.vector_train_config`). ``model_spec``: a spec for
    :func:`~lunet.experiments.models.build_model`, or the entries to change (no ``"name"``) in
    :func:`~lunet.experiments.settings.vector_lunet_spec`'s, the default. ``val_fraction``
    defaults to 0.1, or to the run's own when it resumes. ``data_init``:
    start from the training rows' full-covariance Gaussian, their standardisation, or
    neither (default: :func:`default_data_init`). ``out`` receives ``run.json``,
    ``checkpoint.pt`` (atomic, every validation), ``metrics.jsonl`` and ``curves.png``,
    and at the end ``summary.json`` and ``samples.png`` (the data beside the model's
    samples); ``resume`` continues the run there. Every run also fits the
    full-covariance Gaussian to its training rows and reports it beside the flow. Under
    ``torchrun`` the processes share the model (see :mod:`lunet.experiments.distributed`).
    The columns (:class:`~lunet.experiments.columns.ColumnRules`, recorded in ``run.json``):
    ``drop_constant`` drops those constant over the training rows; ``dequantize="auto"``
    dequantises those of whole numbers; ``names`` (a CSV's header) heads sample CSVs.

    ``context`` (N, width), one row per row of ``data`` (the same kinds of input), makes the run
    one of ``p(x | c)``: a :class:`~lunet.ConditionalLUNet` of
    :func:`~lunet.experiments.settings.conditional_vector_spec`, beside the conditional Gaussian
    (linear in the context). ``context_kind`` says how the contexts are read (``"auto"``,
    ``"labels"``, ``"vectors"``: :class:`~lunet.experiments.contexts.ContextRules`); ``val_context``
    goes with ``val_data``; ``context_file`` and ``context_names`` name the file and its columns in
    messages and ``run.json``.
    """
    data = as_vectors(data, min_rows=1)  # too few rows are refused below, with the minimum
    run = as_folder(out)
    if data_file is not None and not isinstance(data_file, str):
        raise ValueError(f"data_file must be a path or null, got {data_file!r}")
    name = data_file or "data"
    context_name = context_file or "context"
    if context is None and (val_context is not None or context_file is not None):
        raise ValueError("val_context and context_file describe the contexts of a conditional run: give context too")
    if context is not None:
        context = as_vectors(context, context_name, min_rows=1)
        check_rows(context, data, context_name, name)
        if val_data is not None and val_context is None:
            raise ValueError("val_data of a conditional run needs its contexts: give val_context too")
    if val_fraction is None:
        stored = read_run_file(run).val_fraction if resume and run.run_file.is_file() else None
        val_fraction = stored if stored is not None else 0.1
    contexts = None  # (train, val) contexts of a conditional run
    if val_data is None:
        train, val = split_rows(data, val_fraction)
        if context is not None:
            contexts = split_rows(context, val_fraction)  # the same rows: the split depends on N alone
    else:
        train, val = data, as_vectors(val_data, "val_data")
        if val.shape[1] != train.shape[1]:
            raise ValueError(f"val_data has {val.shape[1]} features per row but data has {train.shape[1]}")
        if context is not None:
            contexts = (context, as_vectors(val_context, "val_context"))
            check_rows(contexts[1], val, "val_context", "val_data")
    if names is not None and len(names) != data.shape[1]:
        raise ValueError(f"names lists {len(names)} column names for {data.shape[1]} columns")
    rules = ColumnRules.choose(train, drop_constant, dequantize, names)
    train, val = rules.to_model(train), rules.to_model(val)
    context_rules = None
    if contexts is not None:
        if context_names is not None and len(context_names) != context.shape[1]:
            raise ValueError(f"context_names lists {len(context_names)} names for {context.shape[1]} columns")
        context_rules = ContextRules.choose(contexts[0], context_kind, context_names, context_name)
        context_rules.check(contexts[1], context_name if val_data is None else "val_context")
    if not isinstance(config, TrainConfig):
        config = vector_train_config(train.shape[0], **dict(config or {}))
    if model_spec is None or "name" not in model_spec:  # the entries to change in the defaults
        if context_rules is None:
            model_spec = vector_lunet_spec(train.shape[1], **(model_spec or {}))
        else:
            model_spec = conditional_vector_spec(train.shape[1], context_rules.features, context_rules.num_classes,
                                                 **(model_spec or {}))
    spec = model_spec
    data_init = data_init or default_data_init(train.shape[0], train.shape[1])
    settings = VectorRunSettings(train.shape[1], spec, val_fraction if val_data is None else None, data_init,
                                 rules.entries(), None if context_rules is None else context_rules.entries())
    _check_enough_rows(name, train, val, data_init, settings.val_fraction)
    _check_spread(name, train, rules)
    check_fits_dtype(data, config.torch_dtype, name)
    if val_data is not None:
        check_fits_dtype(val, config.torch_dtype, "val_data")
    if context_rules is not None and context_rules.kind == "vectors":
        check_fits_dtype(context, config.torch_dtype, context_name)
    group = current() if group is None else group
    resolve_device(config.device)
    check_model_memory(spec, config.torch_dtype, training=True, device=config.device)
    check_shared_config(config, group)  # before --overwrite clears anything
    with group.entered_on_main(run.locked()):
        group.on_main(lambda: _prepare_run(run, settings, overwrite, resume))
        torch.manual_seed(config.seed)
        # in the run's precision before the start is fitted: a float32 spread of data in the
        # range of float64 alone would be infinite
        model = build_model(spec).to(config.torch_dtype)
        # the start and the baseline see the integer columns dequantised once, from fixed draws
        fit_rows = rules.dequantized(train, torch.Generator().manual_seed(SPLIT_SEED + 1))
        _start(model, data_init, fit_rows, contexts, context_rules)
        designs = (None, None) if contexts is None else tuple(context_rules.design(c) for c in contexts)
        reference = Reference.fit(train, fit_rows, designs[0])
        gaussian_val = reference.nll_per_dim(rules.dequantized(val), designs[1])
        mask = rules.noise_mask()
        # a conditional run's rows carry their contexts as extra columns, which log_prob_fn splits off
        rows = (train, val) if contexts is None else tuple(torch.cat(pair, 1) for pair in zip((train, val), contexts))
        trainer = Trainer(model, spec, config, *rows, functools.partial(log_prob_fn, mask=mask, context=context_rules),
                          features=train.shape[1], out_dir=run, progress=progress, group=group,
                          extra={"data": VECTORS, "reference": reference.entries()}, dequantize=mask is not None)
        trainer.log.fields["gaussian_val_nats_per_dim"] = gaussian_val
        if resume:
            trainer.resume()
        if group.is_main:  # every check has passed: the folder now holds this run
            write_run(run, RunRecord(VECTORS, settings, data_file, context_file if contexts is not None else None))
        for line in rules.describe() + ([context_rules.describe()] if context_rules is not None else []):
            trainer.log.note(line)
        trainer.log.note(f"{reference.name} of the training rows: validation NLL {gaussian_val:.4f} "
                         f"nats/dim; the flow starts from {DATA_INIT_WORDS[data_init]}")
        trainer.fit()
        if trainer.state.best_state is not None:
            model.load_state_dict(trainer.state.best_state)
        model.eval()
        val_nll = -trainer.state.best_val / train.shape[1]
        summary = {
            "epochs": trainer.state.epoch,
            "best_epoch": trainer.state.best_epoch,
            "stopped_early": trainer.stopped_early,
            "train_seconds": trainer.state.train_seconds,
            "val_nll_nats_per_dim": val_nll,
            "gaussian_val_nll_nats_per_dim": gaussian_val,
            "baseline": reference.name,
            "comparison": comparison_line(val_nll, gaussian_val, "validation", reference.name),
            "data_init": data_init,
            "columns": rules.describe(),
            "context": None if context_rules is None else context_rules.describe(),
            "num_train": int(train.shape[0]),
            "num_val": int(val.shape[0]),
            "features": int(train.shape[1]),
        }
        if group.is_main:
            given = None if contexts is None else (contexts[0], context_rules)
            summary["samples"] = _report_samples(run, model, train, reference, rules, given)
            write_text_atomic(run.summary, json.dumps(summary, indent=2) + "\n")
    return model, summary


@torch.no_grad()
def _start(model: nn.Module, data_init: str, fit_rows: torch.Tensor,
           contexts: Optional[tuple[torch.Tensor, torch.Tensor]], context_rules: Optional[ContextRules]) -> None:
    """Set the flow's start from the training rows ``fit_rows`` (dequantised once) as ``data_init`` says;
    a conditional flow of vector contexts also standardises its contexts, whatever the start."""
    vectors = contexts[0] if context_rules is not None and context_rules.kind == "vectors" else None
    given = () if vectors is None else (vectors,)
    if data_init == "gaussian":
        model.init_gaussian(fit_rows, *given)
    elif data_init == "standardize":
        model.standardize(fit_rows, *given)
    elif vectors is not None:
        model.context_standardize.fit(vectors.to(flow_placement(model)[0]))


@torch.no_grad()
def _inverse_in_chunks(model: nn.Module, z: torch.Tensor, context: Optional[tuple[torch.Tensor, ContextRules]] = None
                       ) -> torch.Tensor:
    """``model``'s inverse of latents ``z`` (N, features) in its dtype, float64 on the CPU; a chunk that
    holds a non-finite latent is passed through as it is, for the caller to find. ``context``: the
    contexts of the rows (N, width) float64 and their rules, for a conditional flow."""
    dtype, device = flow_placement(model)

    def inverse(chunk: torch.Tensor, index: int) -> torch.Tensor:
        if context is None:
            return model.inverse(chunk.to(device))[0]
        rows = context[0][index * SAMPLE_CHUNK_ROWS : (index + 1) * SAMPLE_CHUNK_ROWS]
        return model.inverse(chunk.to(device), context[1].to_model(rows, dtype, device))[0]

    # in chunks: a pass over all the rows at once holds several copies of them per block
    return torch.cat([inverse(chunk, i).double().cpu() if bool(torch.isfinite(chunk).all()) else chunk.double()
                      for i, chunk in enumerate(z.split(SAMPLE_CHUNK_ROWS))])


# how a run's start is named on the console
DATA_INIT_WORDS = {"gaussian": "that Gaussian", "standardize": "the standardised identity",
                   "none": "random weights"}
# samples drawn at the end of a run, to report and picture them
REPORT_SAMPLES = 10_000


@torch.no_grad()
def _report_samples(run: RunFolder, model: nn.Module, train: torch.Tensor, reference: Reference,
                    rules: ColumnRules, context: Optional[tuple[torch.Tensor, ContextRules]] = None) -> dict[str, Any]:
    """Draw :data:`REPORT_SAMPLES` samples at T = 1 from the trained ``model`` (as :func:`sample_vectors`
    gives them), report how many leave the range of the training rows ``train`` (the flow's columns),
    and picture them beside the data in ``samples.png``. A conditional flow draws them under the
    training contexts ``context`` (N, width) and their rules, taken in turn."""
    z = torch.randn(REPORT_SAMPLES, model.features, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if context is not None:
        context = (context[0][torch.arange(REPORT_SAMPLES) % context[0].shape[0]], context[1])
    samples = _inverse_in_chunks(model, z.to(flow_placement(model)[0]), context)
    samples = rules.to_model(rules.to_data(samples))  # integer columns whole, as sampling gives them
    report = sample_report(samples, reference.low, reference.high)
    finite = torch.isfinite(samples).all(dim=1)
    from lunet.experiments.plots import plot_samples_beside_data

    names = [rules.names[j] for j in rules.kept] if rules.names else None
    plot_samples_beside_data(train, samples[finite], run.path / "samples.png", names=names)
    return report


def _prepare_run(run: RunFolder, settings: VectorRunSettings, overwrite: bool, resume: bool) -> None:
    run.begin(resume, overwrite, [run.checkpoint])
    if resume:
        stored = read_run_file(run)
        mine = (settings.features, settings.model, settings.columns, settings.context)
        if (stored.features, stored.model, stored.columns, stored.context) != mine:
            raise SettingError("{path} describes another run (width {features}, model {model}, columns {columns}, "
                               "context {context}); resume with the run's own data and options or choose another "
                               "{out}", path=run.run_file, features=stored.features, model=stored.model,
                               columns=stored.columns, context=stored.context)


def read_run_file(run_dir: str | Path | RunFolder) -> VectorRunSettings:
    """The settings of the run on own data in ``run_dir``; ``ValueError`` naming ``run.json`` when it
    is something else."""
    return read_run(as_folder(run_dir), (VECTORS,)).settings


@dataclass
class VectorRun:
    """A trained run on own data: its settings, its best model (eval mode) and its
    :class:`~lunet.experiments.vector_report.Reference` (None for a run made without one).
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
    def sample(self, num: int, temperature: float = 1.0, seed: int = 0,
               context: Optional[Vectors] = None, context_name: str = "context") -> torch.Tensor:
        """``num`` draws (num, width) float64 on the CPU, latents from N(0, T² I) drawn from ``seed``, as
        rows of the data; rows × width at most ``MAX_SAMPLE_VALUES``. A draw that overflows inside the flow
        is refused, naming a temperature at which the same draws stay finite.

        A run of ``p(x | c)`` takes contexts (M, context width) and draws ``num`` rows under each:
        (M · num, width), the ``num`` draws of context row ``i`` at rows ``i · num`` to ``(i + 1) · num - 1``."""
        check_temperature(temperature)
        features, model = self.settings.features, self.model
        given = self.context_rows(context, None, context_name)
        check_sample_count(num, features, 1 if given is None else given[0].shape[0])
        if given is not None:
            given = (given[0].repeat_interleave(num, dim=0), given[1])
        total = num if given is None else given[0].shape[0]
        dtype = flow_placement(model)[0]
        gen = torch.Generator().manual_seed(seed)
        draws = torch.randn(total, features, generator=gen, dtype=torch.float64)
        z = (temperature * draws).to(dtype)
        overflowed = ~torch.isfinite(z).all(dim=1)  # draws beyond the dtype's range: no pass can take them
        samples = _inverse_in_chunks(model, z, given)
        overflowed |= ~torch.isfinite(samples).all(dim=1)
        if bool(overflowed.any()):
            few = draws[overflowed][:64]
            flow = model
            if given is not None:  # the flow under the overflowing rows' contexts
                c = given[1].to_model(given[0][overflowed][:64], dtype, flow_placement(model)[1])
                flow = types.SimpleNamespace(dtype=dtype, device=flow_placement(model)[1],
                                             inverse=lambda z: model.inverse(z, c))
            finite = finite_temperature(flow, lambda t: t * few, temperature)
            where = (f"on the same draws it stays finite at {{temperature}} {finite:.3g}" if finite is not None
                     else "it is not finite on them at any temperature")
            raise SettingError("samples at {temperature} {given:g} overflow {dtype} inside the flow ({bad:,} of "
                               "{num:,} rows hold NaN or infinite values); " + where + ": give a lower {temperature}",
                               given=temperature, dtype=str(dtype).removeprefix("torch."), bad=int(overflowed.sum()),
                               num=total)
        return self.columns.to_data(samples)

    def sample_report(self, samples: torch.Tensor) -> Optional[dict[str, Any]]:
        """How far ``samples`` (N, width), as :meth:`sample` gives them, reach beyond the training rows'
        range (:func:`~lunet.experiments.vector_report.sample_report`); None without a reference."""
        if self.reference is None:
            return None
        return sample_report(self.columns.to_model(samples), self.reference.low, self.reference.high)

    def gaussian_nll_per_dim(self, rows: torch.Tensor,
                             context: Optional[tuple[torch.Tensor, ContextRules]] = None) -> float:
        """The reference Gaussian's mean NLL (nats/dim) of the flow's input ``rows`` (N, features), given
        their ``context`` (as :meth:`context_rows` gives it) for a conditional run."""
        return self.reference.nll_per_dim(rows, None if context is None else context[1].design(context[0]))

    def export(self) -> dict[str, Any]:
        """The run as one file holds it (``lunet export``; :func:`~lunet.experiments.checkpoint.load_model`
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
    extra = ckpt.get("extra") if isinstance(ckpt.get("extra"), dict) else {}
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


def sample_vectors(run_dir: str | Path | RunFolder, num: int, temperature: float = 1.0, seed: int = 0,
                   device: str = "cpu", context: Optional[Vectors] = None,
                   context_name: str = "context") -> torch.Tensor:
    """``num`` draws (num, D) from a run's best model (:meth:`VectorRun.sample`): latents from
    N(0, T² I), float64 on the CPU, as rows of the data (integer columns whole numbers, dropped
    columns their value); rows × width at most ``MAX_SAMPLE_VALUES`` (another ``seed`` draws more).
    A run of ``p(x | c)`` draws ``num`` rows under each row of ``context`` (M, context width):
    (M · num, D), context by context."""
    check_temperature(temperature)
    run = as_folder(run_dir)
    contexts = context.shape[0] if isinstance(context, (torch.Tensor, np.ndarray)) else 1
    check_sample_count(num, read_run_file(run).features, contexts)  # before the checkpoint is read
    return load_vector_run(run, device).sample(num, temperature, seed, context, context_name)


def check_sample_count(num: int, features: int, contexts: int = 1) -> None:
    """``SettingError`` when ``num`` samples of width ``features`` (under each of ``contexts`` context
    rows) exceed what one call draws."""
    total = num * contexts * features
    if total > MAX_SAMPLE_VALUES:
        under = "" if contexts == 1 else f" under each of {contexts:,} contexts,"
        raise SettingError("{num} {given:,} samples" + under + " of width {features}" + ("," if under else "")
                           + " are {total:,} numbers, more than the {cap:,} one call draws; give {num} at most "
                           "{most:,} (and another {seed} for more)", given=num, features=features, total=total,
                           cap=MAX_SAMPLE_VALUES, most=MAX_SAMPLE_VALUES // (features * contexts))
