"""Compositions of invertible transforms: ``Sequential`` and ``Inverse``.

Every transform here, like :class:`~lunet.LULinear`, :class:`~lunet.LeakySoftplus`,
:class:`~lunet.Standardize` and :class:`~lunet.LUNet`, keeps the contract of
:mod:`lunet.base`: ``forward(x) -> (y, log|det dy/dx|)`` and ``inverse(y) -> (x,
log|det dx/dy|)``, inputs ``(..., features)`` with any leading dimensions and
log-dets of shape ``x.shape[:-1]``. Any module that keeps this contract,
a coupling layer of your own for instance, composes with them.
"""

from __future__ import annotations

import itertools
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from lunet.base import Transform, compose_forward, compose_inverse
from lunet.fast.affine import SPLIT_BELOW_ROWS, SPLIT_MIN_BYTES
from lunet.frozen import FrozenLUNet
from lunet.frozen_sequential import FrozenSequential

__all__ = ["Composition", "Sequential", "Inverse"]


class Composition(Transform):
    """A transform made of parts run in order (``transforms``, given by a subclass): ``forward``
    checks its input once and runs the parts' row hooks, adding their log-dets; ``inverse``
    runs their inverses in reverse order. Iterating over it gives the parts."""

    @property
    def transforms(self) -> Sequence[nn.Module] | nn.ModuleList:
        raise NotImplementedError

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int) -> nn.Module:
        return self.transforms[index]

    @property
    def features(self) -> Optional[int]:
        """The width of the first part, if it states one."""
        return getattr(self.transforms[0], "features", None)

    def reference(self) -> Optional[torch.Tensor]:
        """The first floating parameter or buffer of the parts."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t for t in tensors if t.is_floating_point()), None)

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, D) -> ``y`` (B, D'), the sum of the parts' ``log|det|`` (B,)."""
        return compose_forward(self.transforms, x)

    def inverse_rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` -> ``x``, the parts' inverses in reverse order, and the sum of their ``log|det|`` (B,)."""
        return compose_inverse(self.transforms, y)

    def frozen(
        self, split_below_rows: int = SPLIT_BELOW_ROWS, split_min_bytes: int = SPLIT_MIN_BYTES
    ) -> FrozenLUNet | FrozenSequential:
        """A frozen copy for fast inference: runs of LU layers and activations folded as
        :meth:`lunet.LUNet.frozen` folds them, other parts copied (see
        :class:`~lunet.frozen_sequential.FrozenSequential`); the tuning as for :meth:`lunet.LUNet.frozen`."""
        return FrozenSequential(self.transforms, None, split_below_rows=split_below_rows,
                                split_min_bytes=split_min_bytes)


class Sequential(Composition):
    """``t_n ∘ ... ∘ t_1``: ``forward`` runs the transforms in order and adds their log-dets,
    ``inverse`` runs their inverses in reverse order.

    Example::

        flow = Sequential(LULinear(4), LeakySoftplus(), LULinear(4))
        z, logdet = flow(torch.randn(10, 4))     # (10, 4), (10,)
        x, inverse_logdet = flow.inverse(z)      # inverse_logdet == -logdet
    """

    def __init__(self, *transforms: nn.Module) -> None:
        super().__init__()
        if not transforms:
            raise ValueError("Sequential needs at least one transform")
        self.parts = nn.ModuleList(transforms)

    @property
    def transforms(self) -> nn.ModuleList:
        return self.parts


class Inverse(Transform):
    """``t^{-1}`` as a transform: its ``forward`` is ``t.inverse`` and its ``inverse`` is ``t``.
    Shares ``t``'s parameters."""

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        self.transform = transform

    @property
    def features(self) -> Optional[int]:
        return getattr(self.transform, "features", None)

    def reference(self) -> Optional[torch.Tensor]:
        return self.transform.reference() if isinstance(self.transform, Transform) else None

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return compose_inverse([self.transform], x)

    def inverse_rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return compose_forward([self.transform], y)
