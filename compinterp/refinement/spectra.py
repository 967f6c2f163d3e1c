"""The bilinear toolkit: a Bilinear box's eigenvalues and eigenvectors, per output, and ways to choose them.

Output ``c`` of a Bilinear box is the quadratic form ``y_c = x^T B_sym[c] x^ + d_c`` on the padded
input ``x^ = (1, x)`` (``x`` itself without biases), with ``B_sym[c]`` the symmetrised interaction
matrix (``docs/refinement.md``). Its eigendecomposition ``B_sym[c] = sum_m lambda_cm v_cm v_cm^T``
writes the output as a sum of squares, ``y_c = sum_m lambda_cm (v_cm . x^)^2 + d_c``: each
eigenvector a direction of the input (an image, for pixels), each eigenvalue how much, and with
which sign, its square counts. ``fold=("embed", "unembed")`` first folds neighbouring linear maps
into the box, so the eigenvectors live in the model's input space and the outputs are logits.

Components can be chosen per output by ``|lambda|`` (the Frobenius-optimal truncation), by their mean
activation ``|lambda| E(v . x^)^2`` on data (what they contribute on the inputs that occur), or in
pairs, the ``k`` most positive and the ``k`` most negative eigenvalues; :meth:`Spectrum.truncate`
turns a choice into a model (an eigen-layer, as the ``eigen`` pass builds), and :meth:`Spectrum.draw`
draws the chosen eigenvectors as images.

>>> import torch
>>> import compinterp as ci
>>> model = ci.Model(ci.Bilinear("mlp", ci.Space("x", 4), ci.Space("y", 2), hidden=6), seed=0)
>>> spec = ci.spectrum(model, "mlp")
>>> spec.values.shape, spec.vectors.shape                   # (outputs, components), (outputs, components, inputs)
(torch.Size([2, 4]), torch.Size([2, 4, 4]))
>>> keep = spec.select(2)                                   # the top 2 by |lambda| in each output
>>> small = spec.truncate(keep)
>>> small.boxes["mlp_eig"].data["hidden"]
4
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from compinterp.drawing.images import draw_eigenvectors
from compinterp.errors import BoxError, InputError
from compinterp.model import Model
from compinterp.refinement.passes._common import Factors, find_box
from compinterp.refinement.passes.eigen import Spectrum as _Groups
from compinterp.refinement.passes.eigen import _eigh, _folded, layer
from compinterp.refinement.passes.eigen import spectrum as _spectrum
from compinterp.syntax import Bilinear

ORDERS = ("magnitude", "activation", "paired")
"""How :meth:`Spectrum.select` ranks components: ``|lambda|``, mean activation on data, or k positive + k negative."""


@dataclass(frozen=True)
class Spectrum:
    """The eigendecomposition of a Bilinear box's output quadratic forms.

    ``values[c, m]`` are the eigenvalues of output (or output direction) ``c``, largest ``|lambda|``
    first; ``vectors[c, m]`` the unit eigenvectors over the box's (or, folded, the model's) inputs
    and ``offsets[c, m]`` their constant coordinate (zero without biases), so that
    ``y_c = sum_m values[c, m] (vectors[c, m] . x + offsets[c, m])^2 + bias[c]``. ``directions[:, c]``
    is the output direction of group ``c`` (the identity's columns per output).
    """

    model: Model
    box: str
    fold: tuple[str, ...]
    basis: str
    values: torch.Tensor
    vectors: torch.Tensor
    offsets: torch.Tensor
    directions: torch.Tensor
    groups: _Groups

    def activations(self, inputs: torch.Tensor) -> torch.Tensor:
        """``values[c, m] (vectors[c, m] . x + offsets[c, m])^2`` for each input row: ``(batch, outputs, components)``,
        the terms whose sum (over ``m``, turned back by ``directions``) is the box's output without its bias."""
        x = torch.as_tensor(inputs, dtype=self.values.dtype, device=self.values.device)
        if x.dim() != 2 or x.shape[1] != self.vectors.shape[2]:
            raise InputError(f"spectrum of box '{self.box}': inputs must have shape (batch, {self.vectors.shape[2]}), "
                             f"got {tuple(x.shape)}")
        return self.values * (torch.einsum("bi,cmi->bcm", x, self.vectors) + self.offsets).square()

    def select(self, k: int, by: str = "magnitude", data: torch.Tensor | None = None) -> torch.Tensor:
        """The mask ``keep[c, m]`` of ``k`` components per output (``2 k`` when ``by="paired"``): the largest
        ``|lambda|`` (``"magnitude"``), the largest mean ``|activation|`` on ``data`` (``"activation"``), or
        the ``k`` most positive and ``k`` most negative eigenvalues (``"paired"``)."""
        order = self._ranked(k, by, data)
        keep = torch.zeros(self.values.shape, dtype=torch.bool, device=self.values.device)
        if by == "paired":                      # at most k of each sign
            up = torch.zeros_like(keep).scatter_(1, order[:, :k], True)
            down = torch.zeros_like(keep).scatter_(1, order[:, k:], True)
            return (up & (self.values > 0)) | (down & (self.values < 0))
        return keep.scatter_(1, order, True)

    def top(self, k: int, by: str = "magnitude", data: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``k`` components of each output in the order ``by`` ranks them (``"paired"``: the ``k`` most
        positive eigenvalues, then the ``k`` most negative): their eigenvalues ``(outputs, k)`` (``2 k`` paired) and
        eigenvectors ``(outputs, k, inputs)``."""
        order = self._ranked(k, by, data)
        return self.values.gather(1, order), self.vectors.gather(1, order[..., None].expand(-1, -1, self.vectors.shape[2]))

    def _ranked(self, k: int, by: str, data: torch.Tensor | None) -> torch.Tensor:
        """The indices of the ``k`` components of each output that ``by`` ranks first, best first (``"paired"``: the
        ``k`` largest eigenvalues, then the ``k`` smallest); ``(outputs, k)`` or ``(outputs, 2 k)``."""
        n = self.values.shape[1]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise InputError(f"spectrum of box '{self.box}': k={k!r} must be an integer from 1 to {n}")
        if by not in ORDERS:
            raise InputError(f"spectrum of box '{self.box}': by={by!r} is not one of {', '.join(ORDERS)}")
        if by == "activation" and data is None:
            raise InputError(f"spectrum of box '{self.box}': by='activation' needs data (inputs to the box)")
        if by == "paired":
            return torch.cat([self.values.argsort(dim=1, descending=True, stable=True)[:, :k],
                              self.values.argsort(dim=1, stable=True)[:, :k]], 1)
        score = self.values.abs() if by == "magnitude" else self.activations(data).mean(0).abs()
        return score.argsort(dim=1, descending=True, stable=True)[:, :k]

    def draw(self, path: str | os.PathLike[str], k: int = 4, by: str = "magnitude", data: torch.Tensor | None = None, *,
             side: int | None = None, names: Sequence[str] | None = None) -> Path:
        """The :meth:`top` ``k`` eigenvectors of each output as ``side x side`` images (default: the square root of
        the input dimension, e.g. 8 for the digits' pixels once folded), one row per output, to PNG or SVG."""
        d = self.vectors.shape[2]
        side = side if side is not None else math.isqrt(d)
        if isinstance(side, bool) or not isinstance(side, int) or side * side != d:
            raise InputError(f"spectrum of box '{self.box}': its eigenvectors have {d} coordinates, which are not "
                             f"{side}x{side} images; give side= (or fold the embedding: fold=('embed', ...))")
        values, vectors = self.top(k, by, data)
        return draw_eigenvectors(values, vectors, path, side=side, names=names)

    def truncate(self, keep: torch.Tensor) -> Model:
        """The model with the box rewritten into the eigen-layer of the components ``keep[c, m]``."""
        if keep.shape != self.values.shape or keep.dtype != torch.bool:
            raise InputError(f"spectrum of box '{self.box}': keep must be a boolean mask of shape "
                             f"{tuple(self.values.shape)}, got {keep.dtype} {tuple(keep.shape)}")
        if not keep.any():
            raise InputError(f"spectrum of box '{self.box}': keep selects no component")
        return layer(self.model, self.box, self.fold, self.groups, keep.to(self.values.device))


def spectrum(model: Model, box: str, *, fold: Sequence[str] = (), basis: str = "per_output") -> Spectrum:
    """The eigenvalues and eigenvectors of Bilinear box ``box``'s output quadratic forms (see the module
    docstring), per output (``basis="per_output"``) or per output direction of an SVD of the outputs
    (``"per_direction"``, most important first), with ``fold`` (e.g. ``("embed", "unembed")``) folded in first."""
    find_box(model, box, (Bilinear,), "spectrum")
    if basis not in ("per_output", "per_direction"):
        raise BoxError(f"spectrum: basis={basis!r} for box '{box}' must be per_output or per_direction")
    _, target, p = _folded(model, box, tuple(fold))
    groups = _spectrum(Factors.of(target, p), basis)
    values, V = _eigh(groups.factors, groups.directions)
    vectors = V.mT                                              # (groups, components, padded inputs)
    offsets = vectors[:, :, 0] if groups.factors.biased else torch.zeros_like(values)
    vectors = vectors[:, :, 1:] if groups.factors.biased else vectors
    return Spectrum(model, box, tuple(fold), basis, values, vectors, offsets, groups.directions, groups)
