"""Sites: what an intervention acts on, a wire seen through an isomorphism ``A = S + C``.

A :class:`Site` names a register of a model's plan (a box's output by its step label,
``"attn1"``, ``"add#3"``; an input by its wire label; a wire alias ``"resid_4"``, see
:attr:`compinterp.semantics.Plan.names`) and optionally narrows it to positions on the
sequence axis, to heads of an attention box (its per-head outputs before the output
projection, ``(..., T, H, d_head)``) and to a subspace of the last axis (an orthonormal
basis ``Q : k x d`` or an orthogonal projection ``P = Q^T Q``, or a :class:`Rotation`'s first ``k``
coordinates). An edit on a site
changes only the part ``S``: ``v' = v + P_S(t - v)`` for a target ``t``, where ``P_S`` keeps
the chosen positions and heads and projects onto ``span(Q)``.

>>> import torch
>>> site = Site("resid_2", positions=[1], subspace=torch.tensor([[1.0, 0.0]]))
>>> v, t = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
>>> site.select(t - v).tolist()
[[[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from compinterp.errors import InputError
from compinterp.semantics import Plan

Positions = int | slice | Sequence[int] | torch.Tensor | None
"""Sequence positions: an index, a slice, indices, or a boolean mask over ``T`` (or ``batch x T``)."""


class Rotation(nn.Module):
    """A learned orthogonal ``R : d x d`` (torch's orthogonal parametrisation); its first ``k`` rows
    span the subspace a :class:`Site` reads (distributed alignment search).

    >>> rotation = Rotation(4, 2, seed=0)
    >>> Q = rotation.basis
    >>> Q.shape, torch.allclose(Q @ Q.T, torch.eye(2), atol=1e-5)
    (torch.Size([2, 4]), True)
    """

    def __init__(self, dim: int, k: int, *, seed: int = 0) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dim:
            raise InputError(f"a rotation of dimension {dim} keeps k from 1 to {dim} coordinates, got {k!r}")
        self.k = k
        generator = torch.Generator().manual_seed(seed)
        layer = nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0])
        self.layer = orthogonal(layer)

    @property
    def basis(self) -> torch.Tensor:
        """The subspace's orthonormal basis, ``k x d`` (differentiable in the rotation)."""
        return self.layer.weight[: self.k]


@dataclass(frozen=True, eq=False)
class Site:
    """A register (by name), optionally narrowed to ``positions``, ``heads`` and a ``subspace``.

    Args:
        wire: a name in the model's ``plan.names``; with ``heads``, an attention box's output.
        positions: sequence positions (axis ``-2`` of a wire, ``-3`` of per-head outputs).
        heads: head indices of the attention box ``wire``; the site is then its per-head outputs.
        subspace: an orthonormal ``k x d`` basis (rows), a ``d x d`` orthogonal projection, or a
            :class:`Rotation`.
    """

    wire: str
    positions: Positions = None
    heads: int | Sequence[int] | None = None
    subspace: torch.Tensor | Rotation | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.wire, str):
            raise InputError(f"a site names a wire or box by a string, got {type(self.wire).__name__}")
        if isinstance(self.subspace, torch.Tensor):
            object.__setattr__(self, "subspace", _orthonormal(self.wire, self.subspace))
        elif self.subspace is not None and not isinstance(self.subspace, Rotation):
            raise InputError(f"site {self.wire}: a subspace is a k x d tensor or a Rotation, "
                             f"got {type(self.subspace).__name__}")
        axes = _axes(self.subspace) if self.positions is None and self.heads is None else None
        object.__setattr__(self, "_axes", axes)

    def __repr__(self) -> str:
        parts = [repr(self.wire)]
        if self.positions is not None:
            parts.append(f"positions={_short(self.positions)}")
        if self.heads is not None:
            parts.append(f"heads={self.heads}")
        if self.subspace is not None:
            parts.append(f"subspace={_basis(self.subspace).shape[0]}-d")
        return f"Site({', '.join(parts)})"

    @property
    def whole(self) -> bool:
        """Whether the site is its whole register (no positions, heads or subspace)."""
        return self.positions is None and self.heads is None and self.subspace is None

    @property
    def basis(self) -> torch.Tensor | None:
        """The subspace's orthonormal basis ``k x d``, if any."""
        return None if self.subspace is None else _basis(self.subspace)

    def select(self, delta: torch.Tensor) -> torch.Tensor:
        """``P_S(delta)``: ``delta`` kept at the site's positions and heads, projected on its subspace."""
        if self.subspace is not None:
            Q = _basis(self.subspace).to(delta)
            if Q.shape[1] != delta.shape[-1]:
                raise InputError(f"site {self.wire}: the subspace has dimension {Q.shape[1]} but the value's last "
                                 f"axis is {delta.shape[-1]} (shape {tuple(delta.shape)})")
            delta = (delta @ Q.T) @ Q
        elif self.whole:
            return delta
        mask = self.mask(delta)
        return delta if mask is None else delta * mask

    def patched(self, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``value + P_S(target - value)``: ``value`` with the site's part taken from ``target``.

        A site whose subspace is spanned by coordinate axes (a neuron, a set of neurons), at every
        position and head, keeps whole coordinates: there this copies the target's entries on those
        axes into ``value`` (``index_copy``; what ``value + P_S(target - value)`` gives up to
        rounding), without computing the projection."""
        axes = self._copied(value, target)
        if axes is not None:
            return value.index_copy(-1, axes, target.index_select(-1, axes))
        return value + self.select(target - value)

    def patched_(self, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """:meth:`patched`, written into ``value`` itself where the site keeps whole coordinates (``index_copy_``:
        no new tensor); for a caller that owns ``value`` (no other reference to it, no gradient through it)."""
        axes = self._copied(value, target)
        if axes is not None:
            return value.index_copy_(-1, axes, target.index_select(-1, axes))
        return value + self.select(target - value)

    def _copied(self, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """The coordinate axes whose entries a patch of ``value`` copies from ``target`` (on ``value``'s device),
        when the site keeps whole coordinates at every position and head and the two match; else ``None``."""
        axes = self._axes
        if axes is None or target.shape != value.shape or target.dtype != value.dtype \
                or self.subspace.shape[1] != value.shape[-1]:
            return None
        if axes.device != value.device:
            axes = axes.to(value.device)
            object.__setattr__(self, "_axes", axes)
        return axes

    def mask(self, value: torch.Tensor) -> torch.Tensor | None:
        """The 0/1 mask of the site's positions and heads, broadcastable to ``value`` (``None``: all)."""
        mask = None
        head_axis = value.dim() - 2 if self.heads is not None else None
        if self.heads is not None:
            mask = _along(value, head_axis, _index_mask(self.heads, value.shape[head_axis], f"site {self.wire}", "head"))
        if self.positions is not None:
            axis = value.dim() - (3 if self.heads is not None else 2)
            if axis < 1:
                raise InputError(f"site {self.wire}: positions need a sequence axis, but the value has shape "
                                 f"{tuple(value.shape)} (batch, features)")
            pos = self.positions
            if isinstance(pos, torch.Tensor) and pos.dtype == torch.bool and pos.dim() == 2:
                if tuple(pos.shape) != tuple(value.shape[:2]):
                    raise InputError(f"site {self.wire}: a batch x positions mask has shape {tuple(pos.shape)}, "
                                     f"the value's batch and positions are {tuple(value.shape[:2])}")
                extra = value.dim() - 2
                m = pos.to(value.device, value.dtype).reshape(*pos.shape, *([1] * extra))
            else:
                m = _along(value, axis, _index_mask(pos, value.shape[axis], f"site {self.wire}", "position"))
            mask = m if mask is None else mask * m
        return mask

    def check(self, plan: Plan) -> int:
        """The register this site names in ``plan``; raises naming the site when it does not fit."""
        heads = plan.heads
        if self.wire not in plan.names:
            known = ", ".join(list(plan.names)[:12]) + (", ..." if len(plan.names) > 12 else "")
            raise InputError(f"no wire or box named {self.wire!r} in the model; names: {known}")
        r = plan.names[self.wire]
        if self.heads is not None and r not in heads:
            raise InputError(f"site {self.wire}: heads need an attention box's output; {self.wire!r} is "
                             f"{plan.wires[r].name}, made by no box with heads")
        if self.heads is not None:
            _index_mask(self.heads, heads[r], f"site {self.wire}", "head")
        basis = self.basis
        if basis is not None and self.heads is None and basis.shape[1] != plan.wires[r].dim:
            raise InputError(f"site {self.wire}: the subspace has dimension {basis.shape[1]} but the wire is "
                             f"{plan.wires[r].name}")
        return r


def _orthonormal(wire: str, Q: torch.Tensor) -> torch.Tensor:
    """A subspace given by orthonormal rows (kept as they are) or by an orthogonal projection
    ``P = P^T = P^2`` (its range's basis), else an error naming the site."""
    if Q.dim() != 2 or not Q.is_floating_point():
        raise InputError(f"site {wire}: a subspace is a floating k x d basis or a d x d projection, "
                         f"got shape {tuple(Q.shape)}")
    eye = torch.eye(len(Q), dtype=Q.dtype, device=Q.device)
    if torch.allclose(Q @ Q.T, eye, atol=1e-4):
        return Q
    if Q.shape[0] == Q.shape[1] and torch.allclose(Q, Q.T, atol=1e-5) and torch.allclose(Q @ Q, Q, atol=1e-4):
        values, vectors = torch.linalg.eigh(Q)
        return vectors[:, values > 0.5].T.contiguous()
    raise InputError(f"site {wire}: the subspace is neither orthonormal rows nor an orthogonal projection; "
                     "orthonormalise its rows first (torch.linalg.qr(Q.T).Q.T)")


def _axes(subspace: torch.Tensor | Rotation | None) -> torch.Tensor | None:
    """For a basis of signed coordinate vectors (each row one entry +-1, the rest 0), the indices of
    its coordinate axes; else ``None``."""
    if not isinstance(subspace, torch.Tensor):
        return None
    nonzero = subspace != 0
    if not (nonzero.sum(1) == 1).all() or not (subspace[nonzero].abs() == 1).all():
        return None
    return nonzero.any(0).nonzero()[:, 0]


def _basis(subspace: torch.Tensor | Rotation) -> torch.Tensor:
    return subspace.basis if isinstance(subspace, Rotation) else subspace


def _index_mask(index: Any, n: int, where: str, what: str) -> torch.Tensor:
    """A 0/1 vector of length ``n`` from an index, a slice, indices or a boolean mask."""
    if isinstance(index, torch.Tensor) and index.dtype == torch.bool:
        if tuple(index.shape) != (n,):
            raise InputError(f"{where}: a {what} mask has shape {tuple(index.shape)}, expected ({n},)")
        return index.float()
    mask = torch.zeros(n)
    if isinstance(index, slice):
        mask[index] = 1.0
        return mask
    items = [index] if isinstance(index, int) else list(index.tolist() if isinstance(index, torch.Tensor) else index)
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise InputError(f"{where}: {what} {i!r} is out of range: there are {n} {what}s")
        mask[i] = 1.0
    return mask


def _along(value: torch.Tensor, axis: int, vector: torch.Tensor) -> torch.Tensor:
    """``vector`` shaped to broadcast along ``axis`` of ``value``."""
    shape = [1] * value.dim()
    shape[axis] = -1
    return vector.to(value.device, value.dtype).reshape(shape)


def _short(positions: Any) -> str:
    if isinstance(positions, torch.Tensor):
        return f"mask{tuple(positions.shape)}"
    return repr(positions)
