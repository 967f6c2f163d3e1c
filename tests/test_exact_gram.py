"""The Frobenius inner product of one-stage networks in closed form (units' Gram matrices) equals the Wick
engine's and the materialised tensors'."""

from __future__ import annotations

import math

import pytest
import torch

from compinterp.faithfulness.exact import frobenius_inner
from compinterp.faithfulness.exact.chain import squares, wick
from compinterp.errors import InputError
from compinterp.faithfulness.exact.closed_form import bilinear_units, gram_frobenius
from compinterp.model import Model
from compinterp.semantics.tensor import tensor_semantics
from compinterp.syntax import Bilinear, Gated, Linear, Space, chain, residual

X, Y = Space("x", 5), Space("y", 3)


def engine(f: Model, g: Model) -> torch.Tensor:
    F, G = tensor_semantics(f, torch.float64), tensor_semantics(g, torch.float64)
    depth = max(F.depth, G.depth)
    return wick([squares(F.lift(depth)), squares(G.lift(depth))], "frobenius") / math.factorial(2 ** depth)


@pytest.mark.parametrize("bias", [False, True])
def test_gram_form_equals_the_engine_and_the_tensors(bias: bool) -> None:
    a = Model(chain(residual(Bilinear("b", X, X, hidden=4, bias=bias)), Linear("o", X, Y, bias=True)), seed=0)
    b = Model(Bilinear("c", X, Y, hidden=6, bias=bias), seed=1)
    lin = Model(Linear("l", X, Y, bias=True), seed=2)
    for f, g in ((a, b), (a, a), (b, lin)):
        F, G = tensor_semantics(f, torch.float64), tensor_semantics(g, torch.float64)
        closed = gram_frobenius(F, G)
        assert closed is not None and torch.allclose(closed, engine(f, g), rtol=1e-10, atol=1e-12)
        assert torch.allclose(frobenius_inner(f, g), closed)
    Tb = tensor_semantics(b, torch.float64).tensor()
    Tb = (Tb + Tb.transpose(1, 2)) / 2
    assert torch.allclose(frobenius_inner(b, b), Tb.square().sum((1, 2)), rtol=1e-10)


def test_linear_and_deeper_networks_go_to_the_engine() -> None:
    lin = Model(Linear("l", X, Y, bias=True), seed=2)
    F = tensor_semantics(lin, torch.float64)
    assert gram_frobenius(F, F) is None
    assert torch.allclose(frobenius_inner(lin, lin), engine(lin, lin))
    deep = Model(chain(Bilinear("p", X, X, hidden=3), Bilinear("q", X, Y, hidden=3)), seed=0)
    D = tensor_semantics(deep, torch.float64)
    assert gram_frobenius(D, D) is None


def test_single_bilinear_layers_skip_the_tensor_semantics() -> None:
    """Two bias-free Bilinear models read straight from their weights (no constant unit, no padding)
    give the padded networks' Gram form and the engine's value; anything else takes the general path."""
    f = Model(Bilinear("f", X, Y, hidden=4), seed=0)
    g = Model(Bilinear("g", X, Y, hidden=7), seed=1)
    for a, b in ((f, g), (f, f), (g, f)):
        assert bilinear_units(a) is not None and bilinear_units(b) is not None
        F, G = tensor_semantics(a, torch.float64), tensor_semantics(b, torch.float64)
        assert torch.allclose(frobenius_inner(a, b), gram_frobenius(F, G), rtol=1e-13, atol=0)
        assert torch.allclose(frobenius_inner(a, b), engine(a, b), rtol=1e-10, atol=1e-12)
    others = (Model(Bilinear("b", X, Y, hidden=4, bias=True), seed=0), Model(Gated("s", X, Y, hidden=4), seed=0),
              Model(residual(Bilinear("r", X, X, hidden=4)), seed=0), tensor_semantics(f))
    assert all(bilinear_units(m) is None for m in others)
    with pytest.raises(InputError, match="same input and output spaces"):
        frobenius_inner(f, Model(Bilinear("h", Space("x", 4), Y, hidden=4), seed=0))
