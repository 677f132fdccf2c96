"""Training a run on users' own feature vectors (:func:`train_vectors`); the trained run is
:mod:`~lunet.experiments.runs.vector_run`'s.

A run folder holds ``run.json`` (``"data": "vectors"``, the width, the model
spec, the validation split) beside the usual checkpoint, metrics and curves.
The flow's input standardisation is fitted to the training rows and its
Jacobian is part of every likelihood, so figures are those of the raw data,
in nats per dimension.

With contexts (one row of them per data row) the run models ``p(x | c)`` with a
:class:`~lunet.ConditionalLUNet`; ``run.json`` records how the contexts are read
(:class:`~lunet.experiments.data.contexts.ContextRules`) and the file they came from.
The training rows carry their contexts as extra columns, so the training loop
sees one tensor of rows, and :func:`log_prob_fn` splits them off.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from lunet.conditional import ConditionalLUNet
from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.models import build_model
from lunet.experiments.config.presets import VECTORS, conditional_vector_spec, vector_lunet_spec
from lunet.experiments.config.resources import check_model_memory
from lunet.experiments.config.training import TrainConfig, vector_train_config
from lunet.experiments.data.columns import ColumnRules
from lunet.experiments.data.contexts import ContextRules, check_rows
from lunet.experiments.data.rows import check_fits_dtype
from lunet.experiments.files.atomic import write_text_atomic
from lunet.experiments.runs.vector_report import Reference, comparison_line, sample_report
from lunet.experiments.runs.vector_run import Vectors, as_vectors, inverse_in_chunks, log_prob_fn, read_run_file
from lunet.experiments.store.folder import RunFolder, as_folder
from lunet.experiments.store.record import RunRecord, VectorRunSettings, write_run
from lunet.experiments.training.distributed import Group, current
from lunet.experiments.training.step import Objective, check_shared_config
from lunet.experiments.training.trainer import Trainer, resolve_device
from lunet.flow import LUNet
from lunet.latent import flow_placement

__all__ = ["MIN_TRAIN_ROWS", "SPLIT_SEED", "split_rows", "default_data_init", "train_vectors", "DATA_INIT_WORDS",
           "REPORT_SAMPLES"]


# Rows a training needs to learn from: a spread (the standardisation's) takes two. The Gaussian
# start needs more rows than features (the covariance of fewer is singular).
MIN_TRAIN_ROWS = 2
SPLIT_SEED = 0  # the validation rows are drawn with this seed, whatever the training seed


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
    run_dir: str | Path | RunFolder,
    config: Union[TrainConfig, Mapping[str, Any], None] = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    model_spec: Optional[dict[str, Any]] = None,
    val_data: Optional[Vectors] = None,
    val_fraction: Optional[float] = None,
    data_init: Optional[str] = None,
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
    (:func:`~lunet.experiments.config.training.vector_train_config`). ``model_spec``: a spec for
    :func:`~lunet.experiments.config.models.build_model`, or the entries to change (no ``"name"``) in
    :func:`~lunet.experiments.config.presets.vector_lunet_spec`'s, the default. ``val_fraction``
    defaults to 0.1, or to the run's own when it resumes. ``data_init``:
    start from the training rows' full-covariance Gaussian, their standardisation, or
    neither (default: :func:`default_data_init`). ``run_dir`` receives ``run.json``,
    ``checkpoint.pt`` (atomic, every validation), ``metrics.jsonl`` and ``curves.png``,
    and at the end ``summary.json`` and ``samples.png`` (the data beside the model's
    samples); ``resume`` continues the run there. Every run also fits the
    full-covariance Gaussian to its training rows and reports it beside the flow. Under
    ``torchrun`` the processes share the model (see :mod:`lunet.experiments.training.distributed`).
    The columns (:class:`~lunet.experiments.data.columns.ColumnRules`, recorded in ``run.json``):
    ``drop_constant`` drops those constant over the training rows; ``dequantize="auto"``
    dequantises those of whole numbers; ``names`` (a CSV's header) heads sample CSVs.

    ``context`` (N, width), one row per row of ``data`` (the same kinds of input), makes the run
    one of ``p(x | c)``: a :class:`~lunet.ConditionalLUNet` of
    :func:`~lunet.experiments.config.presets.conditional_vector_spec`, beside the conditional Gaussian
    (linear in the context). ``context_kind`` says how the contexts are read (``"auto"``,
    ``"labels"``, ``"vectors"``: :class:`~lunet.experiments.data.contexts.ContextRules`); ``val_context``
    goes with ``val_data``; ``context_file`` and ``context_names`` name the file and its columns in
    messages and ``run.json``.
    """
    data = as_vectors(data, min_rows=1)  # too few rows are refused below, with the minimum
    run = as_folder(run_dir)
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
    # a resumed run keeps the validation share and the depth it began with
    began = read_run_file(run) if resume and run.run_file.is_file() else None
    if val_fraction is None:
        stored = None if began is None else began.val_fraction
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
            assert val_context is not None  # refused above when missing
            contexts = (context, as_vectors(val_context, "val_context"))
            check_rows(contexts[1], val, "val_context", "val_data")
    if names is not None and len(names) != data.shape[1]:
        raise ValueError(f"names lists {len(names)} column names for {data.shape[1]} columns")
    rules = ColumnRules.choose(train, drop_constant, dequantize, names)
    train, val = rules.to_model(train), rules.to_model(val)
    context_rules = None
    if contexts is not None:
        assert context is not None  # the contexts are its rows
        if context_names is not None and len(context_names) != context.shape[1]:
            raise ValueError(f"context_names lists {len(context_names)} names for {context.shape[1]} columns")
        context_rules = ContextRules.choose(contexts[0], context_kind, context_names, context_name)
        context_rules.check(contexts[1], context_name if val_data is None else "val_context")
    if not isinstance(config, TrainConfig):
        config = vector_train_config(train.shape[0], **dict(config or {}))
    if model_spec is None or "name" not in model_spec:  # the entries to change in the defaults
        if began is not None and "num_blocks" in began.model:  # chosen from the rows (by this rule or an earlier one)
            model_spec = {"num_blocks": began.model["num_blocks"], **(model_spec or {})}
        if context_rules is None:
            given_rows = train.shape[0] + (val.shape[0] if val_data is None else 0)
            model_spec = vector_lunet_spec(train.shape[1], rows=given_rows, **(model_spec or {}))
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
        assert context is not None  # the rules were chosen from it
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
        assert isinstance(model, (LUNet, ConditionalLUNet))  # what a spec of the data's width builds
        designs: tuple[Optional[torch.Tensor], Optional[torch.Tensor]] = (None, None)
        given = None  # the training contexts and their rules
        if contexts is not None:
            assert context_rules is not None  # chosen from the contexts
            designs = (context_rules.design(contexts[0]), context_rules.design(contexts[1]))
            given = (contexts[0], context_rules)
        # the start and the baseline see the integer columns dequantised once, from fixed draws
        fit_rows = rules.dequantized(train, torch.Generator().manual_seed(SPLIT_SEED + 1))
        _start(model, data_init, fit_rows, given)
        reference = Reference.fit(train, fit_rows, designs[0])
        gaussian_val = reference.nll_per_dim(rules.dequantized(val), designs[1])
        mask = rules.noise_mask()
        # a conditional run's rows carry their contexts as extra columns, which log_prob_fn splits off
        rows = (train, val) if contexts is None else (torch.cat([train, contexts[0]], 1),
                                                      torch.cat([val, contexts[1]], 1))
        objective = Objective(functools.partial(log_prob_fn, mask=mask, context=context_rules), features=train.shape[1],
                              dequantize=mask is not None)
        trainer = Trainer(model, spec, config, rows, objective, run, progress=progress, group=group,
                          extra={"data": VECTORS, "reference": reference.entries()})
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
        assert trainer.state.best_val is not None  # fit() keeps a finite best validation or raises
        val_nll = -trainer.state.best_val / train.shape[1]
        summary: dict[str, Any] = {
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
            summary["samples"] = _report_samples(run, model, train, reference, rules, given)
            write_text_atomic(run.summary, json.dumps(summary, indent=2) + "\n")
    return model, summary


@torch.no_grad()
def _start(model: Union[LUNet, ConditionalLUNet], data_init: str, fit_rows: torch.Tensor,
           given: Optional[tuple[torch.Tensor, ContextRules]]) -> None:
    """Set the flow's start from the training rows ``fit_rows`` (dequantised once) as ``data_init`` says;
    a conditional flow of vector contexts (``given``: the training contexts and their rules) also
    standardises its contexts, whatever the start."""
    if given is None or given[1].kind != "vectors":
        if data_init == "gaussian":
            model.init_gaussian(fit_rows)
        elif data_init == "standardize":
            model.standardize(fit_rows)
        return
    vectors = given[0]
    assert isinstance(model, ConditionalLUNet)  # the flow of a run with contexts
    if data_init == "gaussian":
        model.init_gaussian(fit_rows, vectors)
    elif data_init == "standardize":
        model.standardize(fit_rows, vectors)
    else:
        model.context_standardize.fit(vectors.to(flow_placement(model)[0]))


# how a run's start is named on the console
DATA_INIT_WORDS = {"gaussian": "that Gaussian", "standardize": "the standardised identity",
                   "none": "random weights"}


# samples drawn at the end of a run, to report and picture them
REPORT_SAMPLES = 10_000


@torch.no_grad()
def _report_samples(run: RunFolder, model: Union[LUNet, ConditionalLUNet], train: torch.Tensor, reference: Reference,
                    rules: ColumnRules, context: Optional[tuple[torch.Tensor, ContextRules]] = None) -> dict[str, Any]:
    """Draw :data:`REPORT_SAMPLES` samples at T = 1 from the trained ``model`` (as :func:`sample_vectors`
    gives them), report how many leave the range of the training rows ``train`` (the flow's columns),
    and picture them beside the data in ``samples.png``. A conditional flow draws them under the
    training contexts ``context`` (N, width) and their rules, taken in turn."""
    z = torch.randn(REPORT_SAMPLES, model.features, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if context is not None:
        context = (context[0][torch.arange(REPORT_SAMPLES) % context[0].shape[0]], context[1])
    samples = inverse_in_chunks(model, z.to(flow_placement(model)[0]), context)
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
