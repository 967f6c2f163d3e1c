"""The tensor semantics: every polynomial diagram as a chain of padded Hadamard stages.

The network contracted on an input must equal the torch semantics (``Model(...)(x)``) on
that input, its dense coefficient tensor must give the same polynomial, the sympy form
must evaluate to the same numbers, and non-polynomial boxes must be refused by name.
"""

from __future__ import annotations

import pytest
import sympy
import torch
from hypothesis import given
from hypothesis import strategies as st

from compinterp.errors import InputError, ParameterError
from compinterp.model import Model
from compinterp.semantics.symbolic import symbolic
from compinterp.semantics.tensor import NotPolynomialError, PolyNet, TensorFunctor, tensor_semantics, \
    why_not_polynomial
from compinterp.syntax import (Add, Attention, Bilinear, Copy, Elementwise, Embed, Gated, Id, Linear, Mul, Norm,
                               Opaque, Space, Swap, TopK, Unembed, chain, residual)

F64 = torch.float64
X, H, Y, T = Space("x", 3), Space("h", 4), Space("y", 2), Space("tok", 6)


def stacked(width: Space = X) -> object:
    """Two residual bilinear layers with biases."""
    return residual(Bilinear("b1", width, width, hidden=4, bias=True)) >> residual(
        Bilinear("b2", width, width, hidden=3, bias=True))


DIAGRAMS = {
    "linear": Linear("l", X, Y, bias=True),
    "bilinear": Bilinear("b", X, Y, hidden=5, bias=True),
    "stacked+unembed": stacked() >> Unembed("u", X, Y, bias=True),
    "mul3": Copy(X, 3) >> (Linear("a", X, H) @ Linear("b", X, H) @ Linear("c", X, H, bias=True)) >> Mul(H, 3),
    "square-neg": Linear("a", X, H, bias=True) >> Elementwise("square", H) >> Elementwise("neg", H)
    >> Elementwise("identity", H) >> Linear("c", H, Y),
    "mixed-degree-add": (Copy(X) @ Id(Y)) >> (Bilinear("b", X, Y, hidden=3) @ Linear("l", X, Y) @ Id(Y)) >> Add(Y, 3),
    "swap-discard": Swap(X, Y) >> (Id(Y) @ Copy(X, 0)),
    "two-outputs": Copy(X) >> (Bilinear("b", X, X, hidden=2) @ Linear("l", X, Y, bias=True)),
    "mul1-add1": Mul(X, 1) >> Add(X, 1) >> Linear("l", X, Y),
}


def inputs(space: Space, batch: int = 7, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, w.dim, generator=gen, dtype=F64) for w in space.wires]


def as_tuple(y: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return y if isinstance(y, tuple) else (y,)


@pytest.mark.parametrize("name", DIAGRAMS)
def test_network_equals_torch_semantics(name: str) -> None:
    model = Model(DIAGRAMS[name], seed=3).double()
    net = tensor_semantics(model)
    xs = inputs(model.dom)
    with torch.no_grad():
        want = as_tuple(model(*xs))
    got = as_tuple(net(*xs))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["bilinear", "stacked+unembed", "mul3", "mixed-degree-add", "linear"])
def test_dense_tensor_is_the_same_polynomial(name: str) -> None:
    model = Model(DIAGRAMS[name], seed=4).double()
    net = tensor_semantics(model)
    xs = inputs(model.dom, batch=5)
    T = net.tensor()
    assert T.shape == (sum(model.cod.dims), *[net.in_dim + 1] * net.degree)
    value = T.unsqueeze(0).expand(5, *T.shape)
    padded = torch.cat([torch.ones(5, 1, dtype=F64), *xs], dim=1)
    for _ in range(net.degree):
        value = torch.einsum("b...i,bi->b...", value, padded)
    with torch.no_grad():
        want = torch.cat(as_tuple(model(*xs)), dim=-1)
    torch.testing.assert_close(value, want, rtol=1e-12, atol=1e-12)


def test_residual_stack_is_two_stages_of_padded_units() -> None:
    net = tensor_semantics(Model(stacked() >> Unembed("u", X, Y), seed=0))
    # s_1 = [1, 4 hidden units, 3 skip units], s_2 = [1, 3 hidden units, 3 skip units (of b1's output)]
    assert (net.depth, net.degree, net.widths) == (2, 4, (4, 8, 7))
    L, R = net.stages[0]
    torch.testing.assert_close(L[0], R[0])  # the constant unit 1 * 1
    assert L[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert R[5:, 0].tolist() == [1.0] * 3 and R[5:, 1:].abs().sum() == 0  # skips ride as (x) * 1


def test_embed_takes_token_ids_or_one_hot_rows() -> None:
    model = Model(Embed("emb", T, X) >> stacked() >> Unembed("u", X, Y, bias=True), seed=1).double()
    net = tensor_semantics(model)
    assert net.tokens == (True,)
    ids = torch.tensor([0, 5, 2, 2, 3])
    with torch.no_grad():
        want = model(ids)
    torch.testing.assert_close(net(ids), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net(torch.nn.functional.one_hot(ids, 6).double()), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(InputError, match=r"^input 0 \(tok:6\) holds token ids outside 0\.\.5$"):
        net(torch.tensor([1, 6]))


def test_lift_and_substitute_keep_the_polynomial() -> None:
    model = Model(DIAGRAMS["bilinear"], seed=2).double()
    net = tensor_semantics(model)
    x = inputs(X, batch=6)[0]
    lifted = net.lift(3)
    assert (lifted.depth, lifted.degree) == (3, 8)
    torch.testing.assert_close(lifted(x), net(x), rtol=1e-12, atol=1e-12)
    gen = torch.Generator().manual_seed(1)
    C = torch.eye(4, dtype=F64)
    C[1:, :] = torch.randn(3, 4, generator=gen, dtype=F64)  # x = C[1:, 0] + C[1:, 1:] z
    z = inputs(X, batch=6, seed=5)[0]
    moved = net(C[1:, 0] + z @ C[1:, 1:].T)
    torch.testing.assert_close(net.substitute(C)(z), moved, rtol=1e-12, atol=1e-12)


@st.composite
def polynomial_chains(draw: st.DrawFn) -> tuple[object, int]:
    """A random chain of polynomial blocks on one wire, and a seed for its weights."""
    blocks = []
    for k in range(draw(st.integers(1, 4))):
        choice = draw(st.sampled_from(["linear", "bilinear", "residual", "square", "product", "neg"]))
        bias = draw(st.booleans())
        blocks.append({
            "linear": lambda: Linear(f"l{k}", X, X, bias=bias),
            "bilinear": lambda: Bilinear(f"b{k}", X, X, hidden=draw(st.integers(1, 4)), bias=bias),
            "residual": lambda: residual(Bilinear(f"r{k}", X, X, hidden=2, bias=bias)),
            "square": lambda: Elementwise("square", X, name=f"sq{k}"),
            "product": lambda: Copy(X) >> (Linear(f"p{k}", X, X, bias=bias) @ Id(X)) >> Mul(X),
            "neg": lambda: Elementwise("neg", X, name=f"n{k}"),
        }[choice]())
    return chain(*blocks), draw(st.integers(0, 1000))


@given(polynomial_chains())
def test_random_polynomial_chains_match_torch(case: tuple[object, int]) -> None:
    diagram, seed = case
    model = Model(diagram, seed=seed).double()
    x = inputs(X, batch=4, seed=seed)[0]
    with torch.no_grad():
        want = model(x)
    got = tensor_semantics(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * (1 + want.abs().max().item()))


NOT_POLYNOMIAL = {
    "Opaque": (Opaque("mystery", X, X, module=torch.nn.Identity()),
               "box 'mystery' (Opaque x:3 -> x:3) is not polynomial: an opaque torch module has no known "
               "polynomial form"),
    "Norm": (Norm("ln", X), "box 'ln' (Norm x:3 -> x:3) is not polynomial: a normalisation divides by a norm of "
                            "its input"),
    "Attention": (Attention("attn", X, heads=1),
                  "box 'attn' (Attention x:3 -> x:3) is not polynomial: softmax attention is not a polynomial"),
    "Gated": (Gated("glu", X, X, hidden=2), "box 'glu' (Gated x:3 -> x:3) is not polynomial: its gate applies silu"),
    "TopK": (TopK("top", X, 2), "box 'top' (TopK x:3 -> x:3) is not polynomial: keeping the k largest features is "
                                "not a polynomial"),
    "Elementwise": (Elementwise("relu", X, name="act"),
                    "box 'act' (Elementwise x:3 -> x:3) is not polynomial: relu is not a polynomial (only identity, "
                    "neg and square are)"),
}


@pytest.mark.parametrize("kind", NOT_POLYNOMIAL)
def test_non_polynomial_boxes_are_refused_by_name(kind: str) -> None:
    box, reason = NOT_POLYNOMIAL[kind]
    diagram = Linear("first", X, X) >> box >> Linear("last", X, X)
    assert why_not_polynomial(diagram) == reason
    model = Model(diagram, seed=0)
    assert why_not_polynomial(model) == reason
    with pytest.raises(NotPolynomialError) as err:
        tensor_semantics(model)
    assert str(err.value) == f"no tensor semantics for diagram [first, {box.name}, last] (x:3 -> x:3): {reason}"


def test_polynomial_diagrams_have_no_reason() -> None:
    for diagram in DIAGRAMS.values():
        assert why_not_polynomial(diagram) is None


def test_bad_inputs_and_parameters_are_named() -> None:
    net = tensor_semantics(Model(DIAGRAMS["mixed-degree-add"], seed=0))
    with pytest.raises(InputError, match=r"^expected 2 inputs \(x:3 @ y:2\), got 1$"):
        net(torch.zeros(3))
    with pytest.raises(InputError, match=r"^input 1 is wire y:2 but has shape \(4, 3\): its last dimension must be 2$"):
        net(torch.zeros(4, 3), torch.zeros(4, 3))
    with pytest.raises(ParameterError, match=r"^no parameters for box 'b' \(b \(x:3 -> y:2\)\)$"):
        TensorFunctor()(Bilinear("b", X, Y, hidden=2), {})
    with pytest.raises(ParameterError, match=r"parameter 'D' is missing or not of shape \(2, 2\)$"):
        TensorFunctor()(Bilinear("b", X, Y, hidden=2), {"b": {"L": torch.zeros(2, 3), "R": torch.zeros(2, 3)}})
    with pytest.raises(InputError, match=r"^tensor semantics need a compinterp Model or PolyNet, got str$"):
        tensor_semantics("model")
    big = tensor_semantics(Model(residual(Bilinear("b", Space("x", 1000), Space("x", 1000), hidden=2)), seed=0))
    with pytest.raises(InputError, match=r"would hold 1002001000 numbers; use the tensor network instead$"):
        big.tensor()


def test_polynet_is_a_value_that_moves() -> None:
    net = tensor_semantics(Model(DIAGRAMS["bilinear"], seed=0))
    assert isinstance(net, PolyNet) and repr(net) == "<PolyNet x:3 -> y:2: 1 stage, widths (4, 6), degree 2>"
    single = net.to(torch.float32)
    assert single.out.dtype == torch.float32 and single.stages[0][0].dtype == torch.float32


def test_symbolic_form_evaluates_to_the_model() -> None:
    model = Model(Embed("emb", T, X) >> stacked() >> Unembed("u", X, Y, bias=True), seed=2).double()
    form = symbolic(model, digits=None)
    assert [s.name for s in form.inputs] == [f"tok{i}" for i in range(6)]
    assert list(form.outputs) == ["y_0", "y_1"]
    with torch.no_grad():
        want = model(torch.arange(6))
    for token in range(6):
        point = {s: int(i == token) for i, s in enumerate(form.inputs)}
        got = [float(form.outputs[name].subs(point)) for name in ("y_0", "y_1")]
        torch.testing.assert_close(torch.tensor(got, dtype=F64), want[token], rtol=1e-12, atol=1e-12)


def test_symbolic_form_of_several_wires() -> None:
    model = Model(DIAGRAMS["mixed-degree-add"], seed=1).double()
    form = symbolic(model, digits=None)
    assert [s.name for s in form.inputs] == ["x0", "x1", "x2", "y0", "y1"]
    xs = inputs(model.dom, batch=1, seed=9)
    point = dict(zip(form.inputs, torch.cat(xs, dim=1)[0].tolist()))
    with torch.no_grad():
        want = model(*xs)[0]
    got = torch.tensor([float(form.outputs[n].subs(point)) for n in ("y_0", "y_1")], dtype=F64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert sympy.Poly(form.outputs["y_0"], *form.inputs).total_degree() == 2
    rounded = str(symbolic(model, digits=2))
    assert rounded.startswith("y_0 = ") and "\ny_1 = " in rounded


def test_symbolic_form_refuses_big_diagrams() -> None:
    model = Model(Bilinear("b", Space("x", 64), Space("y", 8), hidden=64), seed=0)
    with pytest.raises(InputError, match=r"^x:64 -> y:8 has 8706 nonzero coefficients, more than max_terms=8000: "):
        symbolic(model, max_terms=8000)
