"""Checkpoint files: atomic writes, safe loads, a checksum of their contents, model reconstruction.

A checkpoint is a dict of tensors, plain containers, numbers and strings. It
is read with ``torch.load(weights_only=True)``, so a file that holds any other
Python object is refused before anything in it runs. Every checkpoint carries
a SHA-256 of its contents; a file whose contents no longer match (a flipped
byte on disk) is reported as corrupt instead of being used. Nothing is unpacked
that would take far more memory than the file, no model is built whose spec
does not fit the stored weights or the machine's memory, and weights that are
not finite, or that no model of the spec holds (a scale of 0, a sign of 5: each
transform's :meth:`~lunet.base.Transform.check_state` says), are refused. A
training state is checked against the run that resumes it, entry by entry.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from lunet.base import Transform
from lunet.experiments.config.errors import first_sentence
from lunet.experiments.config.models import MODEL_NAMES, build_model, check_spec, short_repr, shortened
from lunet.experiments.config.resources import check_model_memory, model_elements
from lunet.experiments.files.atomic import write_atomic
from lunet.experiments.files.loads import load_weights_only

__all__ = ["FORMAT_VERSION", "COUNT_FIELDS", "BUILT_PER_STORED", "tensor_bytes", "checksum", "save_atomic",
           "save_checkpoint", "mark_diverged", "load_checkpoint", "check_training_state", "NOT_SETTINGS",
           "load_model"]

FORMAT_VERSION = 3
# Earlier formats were written by development versions only: they are refused by name.

# Spec entries that count repeated parts. Every part stores at least one tensor, so a count
# above the number of stored tensors cannot describe them (and building that many parts
# could take hours before any shape is compared).
COUNT_FIELDS = ("num_blocks", "num_res_blocks", "num_scales")

# A built model holds at most this many numbers per number one set of its weights stores (an
# LU-Net holds under 3: each stored LU matrix and two masks of its size); a spec claiming more
# describes other weights.
BUILT_PER_STORED = 4


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor's elements, in row-major order, on the CPU."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _digest(obj: Any, h: "hashlib._Hash") -> None:
    """Feed ``obj`` (tensors, containers, scalars, strings) into ``h`` in a fixed order."""
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(tensor_bytes(obj))
    elif isinstance(obj, dict):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _digest(obj[key], h)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _digest(item, h)
    else:
        h.update(f"S{obj!r}".encode())


def checksum(contents: dict[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's contents, its ``"checksum"`` entry left out."""
    h = hashlib.sha256()
    _digest({k: v for k, v in contents.items() if k != "checksum"}, h)
    return h.hexdigest()


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` with :func:`write_atomic`."""
    write_atomic(path, lambda f: torch.save(obj, f))


def save_checkpoint(contents: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a checkpoint atomically with its format version and checksum."""
    contents = {**contents, "format": FORMAT_VERSION}
    contents["checksum"] = checksum(contents)
    save_atomic(contents, path)


def mark_diverged(path: str | os.PathLike, what: str) -> Optional[str]:
    """Record in the checkpoint at ``path`` that a divergence (``what``) followed it; returns its
    epoch, None when there is no checkpoint, ``"?"`` when it cannot be read or rewritten (it then
    stays as it is)."""
    if not Path(path).is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
        ckpt["diverged"] = what
        save_checkpoint(ckpt, path)
        return str(ckpt["epoch"])
    except (ValueError, OSError):
        return "?"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify a checkpoint written by lunet; ``ValueError`` naming the problem when it is not one.

    No code in the file runs: only tensors, plain containers, numbers and strings are read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    ckpt = load_weights_only(path, "lunet checkpoint", "lunet checkpoints never hold one")
    if not isinstance(ckpt, dict) or "model_spec" not in ckpt:
        raise ValueError(f"{path} is not a lunet checkpoint (format {FORMAT_VERSION})")
    version = ckpt.get("format")
    # exactly an int: True and 1.0 compare equal to 1, the format whose checksum is not checked
    if type(version) is int and 0 < version < FORMAT_VERSION:
        raise ValueError(f"{path} was written by an earlier development version of lunet (format {version}); "
                         f"this version reads format {FORMAT_VERSION}: train the run again")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ValueError(f"{path} is not a lunet checkpoint (format {FORMAT_VERSION}): its format entry is "
                         f"{short_repr(version)}, not {FORMAT_VERSION}")
    if ckpt.get("checksum") != checksum(ckpt):
        raise ValueError(
            f"checkpoint {path} is corrupt: its contents do not match the checksum written with them "
            f"(the file changed on disk after it was saved)"
        )
    _check_weights(path, ckpt)
    return ckpt


def _model_states(path: Path, ckpt: dict[str, Any]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """The sets of weights a checkpoint holds, each named by its entry, after checking each is a
    dict of names to tensors."""
    states: list[tuple[str, Any]] = [(key, ckpt[key]) for key in ("model", "best_model", "average_model")
                                     if ckpt.get(key) is not None]
    class_models = ckpt.get("class_models")
    if class_models is not None:
        if not isinstance(class_models, list):
            raise ValueError(f"checkpoint {path} is damaged: its class_models entry is a "
                             f"{type(class_models).__name__}, not a list of weights")
        states += [(f"class_models[{i}]", state) for i, state in enumerate(class_models)]
    if not states:
        raise ValueError(f"checkpoint {path} holds no model weights")
    for where, state in states:
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise ValueError(f"checkpoint {path} is damaged: its {where} entry is not a set of named tensors")
    return states


def _check_weights(path: Path, ckpt: dict[str, Any]) -> None:
    """``ValueError`` naming ``path`` unless its model spec describes the weights it stores (each
    count of parts and the number of values, so that no model far larger than the file is ever
    built), every weight is finite and each transform of the model takes its own weights."""
    spec = ckpt["model_spec"]
    # the classifier that `lunet agreement` caches is the one other model a checkpoint holds
    of_a_flow = not isinstance(spec, dict) or spec.get("name") in MODEL_NAMES
    states = _model_states(path, ckpt)
    for where, state in states:
        if of_a_flow:
            _check_spec_fits(path, spec, state)
        for name, tensor in state.items():
            if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
                count = sum(int((~torch.isfinite(t)).sum()) for t in state.values()
                            if t.is_floating_point() or t.is_complex())
                raise ValueError(
                    f"checkpoint {path} holds {count:,} NaN or infinite weight{'s' if count > 1 else ''} (the first "
                    f"in {where} {name}); its densities and samples would be NaN, so it is refused"
                )
    if of_a_flow:
        _check_roles(path, _shapes_only(path, spec), states)


def _shapes_only(path: Path, spec: dict[str, Any]) -> nn.Module:
    """The model of ``spec`` built on PyTorch's "meta" device (its settings and shapes, no memory);
    ``ValueError`` naming ``path`` when the spec holds a setting the model refuses."""
    try:
        with torch.device("meta"):
            return build_model(spec)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} holds a model spec this version cannot build: "
                         f"{shortened(str(exc))}") from None


def _check_roles(path: Path, model: nn.Module, states: list[tuple[str, dict[str, torch.Tensor]]]) -> None:
    """``ValueError`` naming ``path`` and the entry when a transform of ``model`` refuses its part of
    a stored set of weights (:meth:`~lunet.base.Transform.check_state`)."""
    parts = [(f"{name}." if name else "", part) for name, part in model.named_modules() if isinstance(part, Transform)]
    for where, state in states:
        for prefix, part in parts:
            try:
                part.check_state(state, prefix)
            except ValueError as exc:
                raise ValueError(f"checkpoint {path} holds weights that no model of its kind has: {where} "
                                 f"{shortened(str(exc))}; it was damaged or crafted, so it is refused") from None


def _check_spec_fits(path: Path, spec: Any, state: dict[str, torch.Tensor]) -> None:
    """``ValueError`` unless ``spec`` is a model spec whose counts of parts and number of values the
    stored ``state`` can hold, found without building the model."""
    _check_spec_form(path, spec)
    counts = [key for key in COUNT_FIELDS if isinstance(spec.get(key), int) and spec[key] > len(state)]
    if counts:
        mismatch = f"its {counts[0]} is {spec[counts[0]]:,}, but the file stores {len(state):,} tensors"
    else:
        try:
            built = model_elements(spec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint {path} holds a model spec this version cannot build: "
                             f"{first_sentence(exc)}") from None
        stored = sum(t.numel() for t in state.values())
        if built <= BUILT_PER_STORED * stored:
            return
        mismatch = f"that model holds {built:,} values, the file stores {stored:,}"
    raise ValueError(f"checkpoint {path} does not match its model spec {short_repr(spec)}: {mismatch}")


def _check_spec_form(path: str | os.PathLike, spec: Any) -> None:
    """``ValueError`` naming ``path`` unless ``spec`` has the form of a model spec (:func:`check_spec`)."""
    try:
        check_spec(spec)
    except ValueError as exc:
        raise ValueError(f"checkpoint {path} holds a model spec this version cannot build: {exc}") from None


def _is_count(value: Any) -> bool:
    """Whether ``value`` is a non-negative int (``True`` is an int to Python, not to a checkpoint)."""
    return type(value) is int and value >= 0


def _is_number(value: Any, finite: bool = True) -> bool:
    """Whether ``value`` is a real number (not a boolean), finite unless told otherwise."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (not finite or math.isfinite(value))


def check_training_state(path: str | os.PathLike, ckpt: dict[str, Any], parameters: Mapping[str, torch.Tensor],
                         optimizer: Optional[torch.optim.Optimizer] = None,
                         generators: Optional[Mapping[str, Optional[torch.Generator]]] = None,
                         steps_per_epoch: Optional[int] = None) -> None:
    """``ValueError`` naming ``path`` unless ``ckpt`` (from :func:`load_checkpoint`) holds all that
    resuming a training needs, each entry of the type and shape training writes: the record of the
    data and the settings (which a resumed run is compared against), the epoch, the best and
    starting validation scores, and an optimiser state for exactly ``parameters``, the model's
    (``named_parameters()`` as a dict).

    Given the run that resumes it, each number is checked against its role there too: the
    optimiser's settings are ``optimizer``'s (its weight decay the stored record's), each
    generator state named in ``generators`` is one that generator takes, and the schedule has
    taken ``steps_per_epoch`` steps in each epoch trained, but those a time budget cut short
    (``skipped_steps``)."""

    def damaged(what: str) -> ValueError:
        return ValueError(f"{path} cannot be resumed: {what}; it was damaged, or not written by `lunet train`")

    data = ckpt.get("data")
    if not (isinstance(data, dict) and set(data) == {"train", "val"}
            and all(isinstance(v, str) for v in data.values())):
        raise damaged(f"its record of the training data is {short_repr(data)}")
    if not isinstance(ckpt.get("train_config"), dict):
        raise damaged(f"its training settings are {short_repr(ckpt.get('train_config'))}")
    if not _is_count(ckpt.get("epoch")):
        raise damaged(f"its epoch is {short_repr(ckpt.get('epoch'))}, not a count of epochs")
    if not _is_number(ckpt.get("best_val_log_prob")):
        raise damaged(f"its best validation log-likelihood is {short_repr(ckpt.get('best_val_log_prob'))}, "
                      f"not a finite number")
    best_epoch = ckpt.get("best_epoch")
    if best_epoch is not None and not (_is_count(best_epoch) and best_epoch <= ckpt["epoch"]):
        raise damaged(f"its best epoch is {short_repr(best_epoch)}, not a count of the epochs it trained")
    start = ckpt.get("start_val_log_prob")
    if start is not None and not _is_number(start, finite=False):
        raise damaged(f"its starting validation log-likelihood is {short_repr(start)}, not a number")
    seconds = ckpt.get("train_seconds", 0.0)
    if not (_is_number(seconds) and seconds >= 0):
        raise damaged(f"its training time is {short_repr(seconds)}, not a number of seconds")
    if ckpt.get("best_model") is None:
        raise damaged("it holds no best weights")
    schedule = ckpt.get("schedule")
    if not (isinstance(schedule, dict) and _is_count(schedule.get("steps"))):
        raise damaged("its learning-rate schedule has no count of steps")
    steps = schedule["steps"]
    skipped = ckpt.get("skipped_steps", 0)
    if not _is_count(skipped):
        raise damaged(f"its count of steps a time budget left out is {short_repr(skipped)}, not a count")
    if steps_per_epoch is not None and steps != ckpt["epoch"] * steps_per_epoch - skipped:
        epochs = ckpt["epoch"]
        left = f" less the {skipped:,} a time budget left out" if skipped else ""
        raise damaged(f"its learning-rate schedule has taken {steps:,} steps, but {epochs:,} epoch"
                      f"{'' if epochs == 1 else 's'} of {steps_per_epoch:,} steps{left} make "
                      f"{epochs * steps_per_epoch - skipped:,}")
    generator = ckpt.get("generator")
    if not (isinstance(generator, torch.Tensor) and generator.dtype == torch.uint8):
        raise damaged("it holds no state of the random generator")
    for key, taker in (generators or {}).items():
        if taker is not None and ckpt.get(key) is not None:
            _check_generator_state(key, ckpt[key], taker, damaged)
    _check_optimizer_state(ckpt.get("optimizer"), parameters, damaged, steps)
    if optimizer is not None:
        _check_optimizer_settings(ckpt["optimizer"], optimizer, ckpt["train_config"], damaged)


def _check_generator_state(key: str, state: Any, taker: torch.Generator, damaged: Callable[[str], ValueError]) -> None:
    """``state`` must be one that ``taker`` (a generator of the resumed run) takes: tried on a new
    generator of its device, so that nothing of the run changes before every check has passed."""
    expected = taker.get_state().numel()
    if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.dim() == 1):
        held = (f"a {str(state.dtype).removeprefix('torch.')} tensor of shape {tuple(state.shape)}"
                if isinstance(state, torch.Tensor) else short_repr(state))
        raise damaged(f"its {key} entry is {held}, not the state of a random generator")
    if state.numel() != expected:
        raise damaged(f"its state of the random generator ({key}) has {state.numel():,} bytes, not the "
                      f"{expected:,} of a generator on {taker.device}")
    try:
        torch.Generator(device=taker.device).set_state(state)
    except RuntimeError as exc:
        raise damaged(f"its state of the random generator ({key}) is refused by the generator "
                      f"({first_sentence(exc)})") from None

# A parameter group's entries that are no setting of how the optimiser steps: its parameters, the
# learning rate (the schedule sets it), the weight decay (the record of the settings holds it) and
# how its kernel runs.
NOT_SETTINGS = ("params", "lr", "initial_lr", "weight_decay", "foreach", "fused", "capturable", "differentiable")


def _check_optimizer_settings(stored: dict[str, Any], optimizer: torch.optim.Optimizer, config: dict[str, Any],
                              damaged: Callable[[str], ValueError]) -> None:
    """The stored parameter groups must hold ``optimizer``'s settings (Adam's betas, eps, amsgrad and
    maximize, as every lunet run builds it, or another optimiser's own) and the recorded weight decay:
    loading them would otherwise change how the resumed run steps (``maximize`` would climb the loss)."""
    expected = {key: value for key, value in optimizer.param_groups[0].items() if key not in NOT_SETTINGS}
    if "weight_decay" in optimizer.param_groups[0]:
        expected["weight_decay"] = config.get("weight_decay")
    for group in stored["param_groups"]:
        for key, value in expected.items():
            held = group.get(key)
            if (tuple(held) if isinstance(held, (list, tuple)) else held) != value:
                raise damaged(f"its optimiser's {key} is {short_repr(held)}, not the run's {value!r}")


def _check_optimizer_state(optimizer: Any, parameters: Mapping[str, torch.Tensor],
                           damaged: Callable[[str], ValueError], steps: int) -> None:
    """The optimiser state must cover each of ``parameters`` once, in order, with finite
    statistics of each parameter's own shape (a wrong shape would broadcast or fail steps later):
    step counts whole and at most the schedule's ``steps``, second moments not negative."""
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in optimizer["param_groups"])):
        raise damaged("its optimiser state is not a state dict")
    indices = [i for group in optimizer["param_groups"] for i in group["params"]]
    if indices != list(range(len(parameters))):
        raise damaged(f"its optimiser state is for {len(indices)} parameters, the model has {len(parameters)}")
    names = list(parameters)
    for index, stats in optimizer["state"].items():
        if not (_is_count(index) and index < len(names) and isinstance(stats, dict)):
            raise damaged(f"its optimiser state has an entry {short_repr(index)} for no parameter")
        param = names[index]
        shape = tuple(parameters[param].shape)
        for name, value in stats.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise damaged(f"its optimiser's {short_repr(name)} for {param} is {short_repr(value)}, "
                              "not a tensor of numbers")
            expected = () if name == "step" else shape
            if tuple(value.shape) != expected:
                raise damaged(f"its optimiser's {short_repr(name)} for {param} has shape {tuple(value.shape)}, "
                              f"not {expected}")
            if not bool(torch.isfinite(value).all()):
                raise damaged(f"its optimiser's {short_repr(name)} for {param} holds NaN or infinite values")
            if name == "step" and not (0 <= float(value) <= steps and float(value).is_integer()):
                raise damaged(f"its optimiser's step count for {param} is {float(value):g}, not a count of the "
                              f"{steps:,} steps its schedule has taken")
            if name in ("exp_avg_sq", "max_exp_avg_sq") and bool((value < 0).any()):
                raise damaged(f"its optimiser's {name} for {param} holds negative values (a mean of squares)")


def load_model(path: str | os.PathLike, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Model and checkpoint dict from a checkpoint file or a ``lunet export`` file; ``which`` =
    "best" or "last" weights (an exported file holds the best only). An export of a per-class
    run gives a :class:`~lunet.ClassConditionalFlow`, one flow per class."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    ckpt = load_checkpoint(path)
    if ckpt.get("class_models") is not None:
        from lunet.flow import ClassConditionalFlow

        flows = [_model_from_state(path, ckpt["model_spec"], state) for state in ckpt["class_models"]]
        return ClassConditionalFlow(flows), ckpt
    state = ckpt["best_model"] if which == "best" and ckpt.get("best_model") is not None else ckpt["model"]
    return _model_from_state(path, ckpt["model_spec"], state), ckpt


def _model_from_state(path: str | os.PathLike, spec: dict[str, Any], state: dict[str, Any]) -> nn.Module:
    """The model of ``spec`` with the weights ``state`` (in float64 if they all are); ``ValueError``
    naming ``path`` if they do not fit."""
    # the run's precision: load_state_dict would cast float64 weights into the float32 model quietly
    floating = [t.dtype for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    dtype = torch.float64 if floating and all(d == torch.float64 for d in floating) else torch.float32
    _check_spec_form(path, spec)  # a checkpoint of another kind of model (the cached classifier's) names none
    check_model_memory(spec, dtype, training=False, subject=f"the model in {path}")  # spec checked on loading
    try:
        model = build_model(spec)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} holds a model spec this version cannot build: "
                         f"{shortened(str(exc))}") from None
    if dtype == torch.float64:
        model = model.to(dtype)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:  # ValueError: a flow that checks the state itself
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ValueError(f"checkpoint {path} does not match its model spec {short_repr(spec)}: "
                         f"{shortened(detail)}") from None
    return model
