"""The symbolic form of a small polynomial diagram: one sympy expression per output, to read and print.

The expressions follow the tensor semantics stage by stage (:mod:`compinterp.semantics.tensor`):
each hidden unit is a product of two affine forms of the previous stage, so a bilinear
layer reads as a sum of weighted products and a symmetric one (``L = R``) as weighted squares.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear
>>> V = torch.tensor([[1.0, -0.5], [0.25, 2.0]])
>>> model = Model(Bilinear("eig", Space("x", 2), Space("y", 1), hidden=2),
...               {"eig": {"L": V, "R": V, "D": torch.tensor([[0.82, -1.5]])}})
>>> print(symbolic(model))
y_0 = -1.5*(0.25*x0 + 2.0*x1)**2 + 0.82*(x0 - 0.5*x1)**2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy
import torch

from compinterp.errors import InputError
from compinterp.semantics.tensor import tensor_semantics
from compinterp.syntax import Space


@dataclass(frozen=True)
class Formula:
    """The outputs of a diagram as sympy expressions in its input coordinates.

    ``inputs`` are the symbols of all input wires, in order (``x0, x1, ...``; a token wire's
    symbols are its one-hot coordinates); ``outputs`` maps ``label_i`` to the expression of
    output coordinate ``i``.
    """

    inputs: tuple[sympy.Symbol, ...]
    outputs: dict[str, sympy.Expr]

    def __str__(self) -> str:
        return "\n".join(f"{name} = {expr}" for name, expr in self.outputs.items())


def _names(space: Space, sep: str) -> list[str]:
    """Coordinate names of a space: ``x0, x1`` (or ``x_0`` for outputs); wires sharing a label get its index."""
    labels = [w.label for w in space.wires]
    names = []
    for k, wire in enumerate(space.wires):
        stem = wire.label if labels.count(wire.label) == 1 else f"{wire.label}_{k}"
        glue = "_" if sep or stem[-1].isdigit() else ""
        names.extend(f"{stem}{glue}{i}" for i in range(wire.dim))
    return names


def symbolic(model: Any, *, digits: int | None = 3, threshold: float = 0.0, max_terms: int = 20_000) -> Formula:
    """The sympy form of a polynomial model (or :class:`~compinterp.semantics.tensor.PolyNet`).

    Coefficients are rounded to ``digits`` significant digits (``None``: kept exactly) and
    those of absolute value at most ``threshold`` are dropped. Diagrams with more than
    ``max_terms`` nonzero coefficients are refused: the form is for reading small diagrams.
    """
    net = tensor_semantics(model)
    size = sum(int((L != 0).sum() + (R != 0).sum()) for L, R in net.stages) + int((net.out != 0).sum())
    if size > max_terms:
        raise InputError(f"{net.dom} -> {net.cod} has {size} nonzero coefficients, more than max_terms={max_terms}: "
                         "the symbolic form is for small diagrams (raise max_terms to insist)")
    inputs = tuple(sympy.Symbol(name) for name in _names(net.dom, ""))

    def number(c: float) -> sympy.Expr:
        if c in (1.0, -1.0):
            return sympy.Integer(int(c))
        return sympy.Float(c, digits) if digits is not None else sympy.Float(c, precision=53)

    def affine(row: torch.Tensor, state: list[sympy.Expr]) -> sympy.Expr:
        cols = torch.nonzero(row.abs() > threshold).flatten().tolist()
        return sympy.Add(*(number(row[j].item()) * state[j] for j in cols))

    state: list[sympy.Expr] = [sympy.Integer(1), *inputs]
    for L, R in net.stages:
        state = [affine(L[u], state) * affine(R[u], state) for u in range(L.shape[0])]
    outputs = {name: affine(net.out[c], state) for c, name in enumerate(_names(net.cod, "_"))}
    return Formula(inputs, outputs)
