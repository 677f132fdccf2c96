"""The transform contract, and the base class that checks inputs once, at the boundary.

Every lunet transform is an ``nn.Module`` that maps the data side to the latent side:
``forward(x) -> (y, log|det dy/dx|)`` and ``inverse(y) -> (x, log|det dx/dy|)``, with
inputs ``(..., features)`` (any leading dimensions) and log-dets of shape ``x.shape[:-1]``.
Any module that keeps this contract, a coupling layer of your own for instance, composes
with lunet's.

:class:`Transform` gives the contract's two public methods from two hooks on rows: a
subclass implements :meth:`~Transform.forward_rows` and :meth:`~Transform.inverse_rows`
on ``(B, features)`` tensors that have been checked already (shape, dtype, device and, unless
switched off, finite values), and states its width in ``features`` (None: any width).
Compositions (:class:`lunet.Sequential`, :class:`lunet.LUNet`) check their input once and
call their parts' row hooks, so a pass through many parts checks nothing twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Protocol, cast

import torch
from torch import nn

from lunet.checks import check_features

__all__ = ["Transform", "Invertible", "check_module_state", "per_row", "compose_forward", "compose_inverse"]


class Transform(nn.Module):
    """Base of lunet's invertible transforms: ``forward``/``inverse`` check the input
    ``(..., features)`` once, flatten it to rows and call the row hooks.

    Subclasses implement:

    - ``forward_rows(x)``: ``x`` (B, features) -> ``y`` (B, features'), ``log|det dy/dx|`` (B,),
      or a 0-dim tensor where it is the same for every row (a linear map's, for instance);
    - ``inverse_rows(y)``: the inverse, ``x`` (B, features) and ``log|det dx/dy|`` as above;

    and set ``features`` (the width of both sides; None for any width, or for a transform that
    changes it). :meth:`reference` names the
    tensor whose dtype and device inputs must have (by default none is required), and
    :meth:`check_state` refuses stored weights that no trained transform of its kind holds.
    """

    if TYPE_CHECKING:
        # read-only here: a transform of one width stores it (``features: int``), a composition
        # derives it from its parts
        @property
        def features(self) -> Optional[int]: ...
    else:
        features = None

    def reference(self) -> Optional[torch.Tensor]:
        """A tensor of the transform (a weight or buffer) whose dtype and device every input must
        share, or None where any floating input will do."""
        return None

    def check_state(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """``ValueError`` naming the entry when ``state`` (weights as ``state_dict()`` names them,
        this transform's own after ``prefix``) holds a finite value outside its role (a scale
        of 0, a sign of 5); by default every finite value is one. Checked before such weights
        are loaded from a file, whose densities would otherwise be quietly wrong."""

    def check_input(self, x: torch.Tensor, name: str = "input") -> torch.Tensor:
        """``x`` checked against the contract (see :func:`lunet.checks.check_features`) as rows (B, features)."""
        check_features(x, self.features, name, like=self.reference())
        return x.reshape(-1, x.shape[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (..., features) -> ``y`` (..., features'), ``log|det dy/dx|`` (...)."""
        rows = self.check_input(x)
        y, logdet = self.forward_rows(rows)
        return y.reshape(*x.shape[:-1], y.shape[-1]), per_row(logdet, rows).reshape(x.shape[:-1])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (..., features') -> ``x`` (..., features), ``log|det dx/dy|`` (...)."""
        rows = self.check_input(y)
        x, logdet = self.inverse_rows(rows)
        return x.reshape(*y.shape[:-1], x.shape[-1]), per_row(logdet, rows).reshape(y.shape[:-1])

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} implements no forward_rows")

    def inverse_rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} implements no inverse_rows")


def check_module_state(
    module: nn.Module, state: Mapping[str, Any], prefix: str = "", strict: bool = True, what: str = ""
) -> None:
    """``ValueError`` in one line naming the entry when ``state`` (weights as ``state_dict()`` names
    them, ``module``'s own after ``prefix``) is not a set ``module`` takes: with ``strict``, an entry
    missing or one it has no place for; an entry that is no tensor, has another shape, is not
    floating where the module's is, or holds NaN or infinite values; or a value that no trained
    transform holds (each :class:`Transform` part's :meth:`~Transform.check_state`). ``what`` describes
    the module in the messages. It reads shapes alone, so a module on the "meta" device checks as well."""
    own = module.state_dict(keep_vars=True)
    given = {key[len(prefix):]: value for key, value in state.items()
             if isinstance(key, str) and key.startswith(prefix)}
    if strict:
        missing = [key for key in own if key not in given]
        unexpected = [key for key in given if key not in own]
        for keys, verb, has in ((missing, "lacks", "has"), (unexpected, "holds", "has not")):
            if keys:
                shown = ", ".join(prefix + key for key in keys[:3]) + (", ..." if len(keys) > 3 else "")
                raise ValueError(f"the state {verb} {shown}, which this flow ({what}) {has}; "
                                 f"it was saved from another flow")
    for key, value in given.items():
        mine = own.get(key)
        if mine is None:
            continue
        name = prefix + key
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"the state's {name} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(mine.shape):
            raise ValueError(f"the state's {name} has shape {tuple(value.shape)}, this flow's "
                             f"{tuple(mine.shape)} ({what}); it was saved from another flow")
        if value.is_floating_point() != mine.is_floating_point():
            raise ValueError(f"the state's {name} holds {value.dtype} values, this flow's {mine.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            count = int((~torch.isfinite(value)).sum())
            raise ValueError(f"the state's {name} holds {count:,} NaN or infinite value{'s' if count > 1 else ''}; "
                             f"its densities and samples would be NaN")
    for name, part in module.named_modules():
        if isinstance(part, Transform):
            part.check_state(state, f"{prefix}{name}.")


class Invertible(Protocol):
    """A part of the contract that is no :class:`Transform`: ``part(x)`` and ``part.inverse(y)``."""

    def __call__(self, x: torch.Tensor, /) -> tuple[torch.Tensor, torch.Tensor]: ...

    def inverse(self, y: torch.Tensor, /) -> tuple[torch.Tensor, torch.Tensor]: ...


def per_row(logdet: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A row hook's ``logdet``, (B,) or 0-dim, as (B,) for the B rows of ``rows``."""
    return logdet.expand(rows.shape[0]) if logdet.dim() == 0 else logdet


def _check_width(part: nn.Module, x: torch.Tensor) -> None:
    width = getattr(part, "features", None)
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"{type(part).__name__} takes {width} features, got {x.shape[-1]} from the part before it")


def compose_forward(parts: Iterable[nn.Module], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``parts`` in order on the rows ``x`` (B, D): each :class:`Transform` through its row hook
    (after a check of the width alone), any other module of the contract through its ``forward``.
    Returns the output and the sum of the log-dets (B,)."""
    rows = x.shape[0]
    logdet = constant = None
    for part in parts:
        if isinstance(part, Transform):
            _check_width(part, x)
            x, ld = part.forward_rows(x)
        else:
            x, ld = part(x)
        logdet, constant = _add(logdet, constant, ld)
    return x, _total(logdet, constant, rows)


def compose_inverse(parts: Iterable[nn.Module], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the inverses of ``parts`` in reverse order on the rows ``y``, as :func:`compose_forward`
    runs them forward; returns the input and the sum of the log-dets (B,)."""
    rows = y.shape[0]
    logdet = constant = None
    for part in reversed(list(parts)):
        if isinstance(part, Transform):
            _check_width(part, y)
            y, ld = part.inverse_rows(y)
        else:
            # a module of the contract; nn.Module declares no inverse
            y, ld = cast(Invertible, part).inverse(y)
        logdet, constant = _add(logdet, constant, ld)
    return y, _total(logdet, constant, rows)


def _add(
    logdet: Optional[torch.Tensor], constant: Optional[torch.Tensor], ld: torch.Tensor
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    # Log-dets the same for every row are summed as scalars and spread over the batch once, at
    # the end: one (B,) addition and its backward per pass instead of one per linear part.
    # Out of place: a part may return an expanded view.
    if ld.dim() == 0:
        return logdet, ld if constant is None else constant + ld
    return (ld if logdet is None else logdet + ld), constant


def _total(logdet: Optional[torch.Tensor], constant: Optional[torch.Tensor], rows: int) -> torch.Tensor:
    if logdet is None:
        assert constant is not None  # every composition has a part
        return constant.expand(rows)
    return logdet if constant is None else logdet + constant
