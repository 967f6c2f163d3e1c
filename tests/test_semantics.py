"""The torch semantics: each kernel against an independent computation, functor laws, autograd, dtypes, errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from compinterp.errors import BoxError, InputError
from compinterp.semantics import Interpreter, Plan, TorchFunctor, codegen, compile_plan, init_params
from compinterp.syntax import (
    Add,
    Attention,
    Bilinear,
    Box,
    Copy,
    Diagram,
    Elementwise,
    Embed,
    Gated,
    Id,
    JumpReLU,
    Kind,
    Linear,
    Mul,
    Norm,
    Opaque,
    Space,
    Swap,
    TopK,
    Unembed,
    residual,
)

X, Y, Z = Space("x", 3), Space("y", 2), Space("z", 4)
F64 = torch.float64


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    """A reproducible standard normal tensor."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def fresh(box: Kind, seed: int = 0, dtype: torch.dtype = F64) -> dict[str, torch.Tensor]:
    """Random parameters for ``box`` (normal, so that no role is trivially zero or one)."""
    shapes = box.param_shapes().items()
    return {role: randn(*shape, seed=seed + i, dtype=dtype) for i, (role, shape) in enumerate(shapes)}


def outputs(result: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A plan's result as a tuple, whatever the number of output wires."""
    return result if isinstance(result, tuple) else (result,)


def close(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], **tolerances: float) -> None:
    """Same number of outputs, each close to its expected value."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tolerances)


# --- hand-written semantics, written with named einsum axes, independent of compinterp.semantics ----

def by_hand(fn: str, x: torch.Tensor) -> torch.Tensor:
    """The pointwise functions, from their formulas."""
    formulas: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "identity": lambda t: t,
        "relu": lambda t: torch.where(t > 0, t, torch.zeros_like(t)),
        "gelu": lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2))),
        "gelu_tanh": lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3))),
        "silu": lambda t: t / (1 + torch.exp(-t)),
        "sigmoid": lambda t: 1 / (1 + torch.exp(-t)),
        "tanh": lambda t: (torch.exp(t) - torch.exp(-t)) / (torch.exp(t) + torch.exp(-t)),
        "square": lambda t: t * t,
        "exp": torch.exp,
        "neg": lambda t: -t,
        "softplus": lambda t: torch.log(1 + torch.exp(t)),
    }
    return formulas[fn](x)


def pad(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``[b | W]``: the affine map ``W x + b`` as a linear map on ``[1, x]``."""
    return weight if bias is None else torch.cat([bias[:, None], weight], dim=1)


def with_one(x: torch.Tensor, bias: bool) -> torch.Tensor:
    """``[1, x]`` when there is a bias, else ``x``."""
    return torch.cat([torch.ones_like(x[..., :1]), x], dim=-1) if bias else x


def interaction(p: Mapping[str, torch.Tensor], bias: bool) -> torch.Tensor:
    """The bilinear layer's interaction tensor ``B[c, i, j] = sum_h D[c, h] L[h, i] R[h, j]`` (on ``[1, x]``)."""
    L, R = pad(p["L"], p.get("l") if bias else None), pad(p["R"], p.get("r") if bias else None)
    return torch.einsum("ch,hi,hj->cij", p["D"], L, R)


def attention_by_hand(p: Mapping[str, torch.Tensor], x: torch.Tensor, heads: int, causal: bool,
                      bias: bool) -> torch.Tensor:
    """Multi-head attention with explicit axes: ``b``atch, ``s``/``t`` positions, ``h``eads, ``e`` head dims."""
    def project(w: str, b: str) -> torch.Tensor:
        y = torch.einsum("od,...sd->...so", p[w], x) + (p[b] if bias else 0)
        return y.reshape(*y.shape[:-1], heads, -1)

    q, k, v = project("Wq", "bq"), project("Wk", "bk"), project("Wv", "bv")
    scores = torch.einsum("...she,...the->...hst", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = x.shape[-2]
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    mixed = torch.einsum("...hst,...the->...she", scores.softmax(-1), v)
    return torch.einsum("dk,...sk->...sd", p["Wo"], mixed.flatten(-2)) + (p["bo"] if bias else 0)


def topk_by_hand(x: torch.Tensor, k: int, absolute: bool) -> torch.Tensor:
    """Row by row: keep the entries whose rank (by value, or by magnitude) is below ``k``, then a ReLU unless
    ``absolute``."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(rows)
    for r, row in enumerate(rows):
        key = row.abs() if absolute else row
        for i in range(row.shape[0]):
            if int((key > key[i]).sum()) < k:
                out[r, i] = row[i] if absolute else max(row[i].item(), 0.0)
    return out.reshape(x.shape)


def box_by_hand(box: Box, p: Any, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """What ``box`` computes, written out independently of the library's kernels."""
    kind, data = box.kind, box.data
    if isinstance(box, Swap):
        return [xs[1], xs[0]]
    if kind == "Embed":
        x = xs[0]
        return [p["W"][x] if not x.is_floating_point() else torch.einsum("...v,vd->...d", x, p["W"])]
    if kind in ("Linear", "Unembed"):
        return [torch.einsum("oi,...i->...o", p["W"], xs[0]) + (p["b"] if data["bias"] else 0)]
    if kind == "Bilinear":
        x = with_one(xs[0], data["bias"])
        quadratic = torch.einsum("cij,...i,...j->...c", interaction(p, data["bias"]), x, x)
        return [quadratic + (p["d"] if data["bias"] else 0)]
    if kind == "Gated":
        bias = data["bias"]
        x = with_one(xs[0], bias)
        left = torch.einsum("hi,...i->...h", pad(p["L"], p.get("l") if bias else None), x)
        right = torch.einsum("hi,...i->...h", pad(p["R"], p.get("r") if bias else None), x)
        down = torch.einsum("oh,...h->...o", p["D"], by_hand(data["activation"], left) * right)
        return [down + (p["d"] if bias else 0)]
    if kind == "Norm":
        x = xs[0]
        eps = torch.finfo(x.dtype).eps if data["eps"] is None else data["eps"]
        if data["norm"] == "rms":
            y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
        else:
            centred = x - x.mean(-1, keepdim=True)
            y = centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps)
        return [y * (p["weight"] if data["affine"] else 1) + (p["bias"] if data["bias"] else 0)]
    if kind == "Elementwise":
        return [by_hand(data["fn"], x) for x in xs]
    if kind == "TopK":
        return [topk_by_hand(xs[0], data["k"], data["absolute"])]
    if kind == "JumpReLU":
        return [torch.where(xs[0] > p["theta"], xs[0], torch.zeros_like(xs[0]))]
    if kind == "Copy":
        return [xs[0]] * data["n"]
    if kind == "Add":
        return [sum(xs[1:], xs[0])]
    if kind == "Mul":
        return [math.prod(xs[1:], start=xs[0])]
    if kind == "Attention":
        return [attention_by_hand(p, xs[0], data["heads"], data["causal"], data["bias"])]
    if kind == "Opaque":
        out = p(*xs)
        return list(out) if isinstance(out, tuple) else [out]
    raise AssertionError(f"no hand-written semantics for {box!r}")


def run_by_hand(diagram: Diagram, params: Mapping[str, Any], *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Evaluate ``diagram`` layer by layer with :func:`box_by_hand`: a second, independent interpreter."""
    values = list(xs)
    for left, box, _ in diagram.inside:
        i, n = len(left), len(box.dom)
        values[i:i + n] = box_by_hand(box, params.get(box.name), values[i:i + n])
    return tuple(values)


def run(diagram: Diagram, params: Mapping[str, Any], *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The compiled semantics, as a tuple of outputs."""
    return outputs(compile_plan(diagram)(params, *xs))


# --- kernels against independent computations ----------------------------------------------------

@pytest.mark.parametrize("bias", [False, True])
def test_linear_and_unembed(bias: bool) -> None:
    for box in (Linear("f", X, Z, bias=bias), Unembed("head", X, Z, bias=bias)):
        p, x = fresh(box), randn(5, 3, seed=9)
        (y,) = run(box, {box.name: p}, x)
        expected = torch.einsum("oi,bi->bo", p["W"], x) + (p["b"] if bias else 0)
        torch.testing.assert_close(y, expected)
        assert y.shape == (5, 4)


@pytest.mark.parametrize("bias", [False, True])
def test_bilinear_is_the_quadratic_form_of_its_interaction_tensor(bias: bool) -> None:
    """``y_c = x^T B_c x`` with ``B = einsum("out hid, hid in1, hid in2 -> out in1 in2", D, L, R)``
    (axes c, h, i, j); with biases, ``x`` becomes ``[1, x]`` and ``L``, ``R`` gain the bias column."""
    box = Bilinear("mlp", Z, X, hidden=6, bias=bias)
    p, x = fresh(box), randn(2, 7, 4, seed=9)
    (y,) = run(box, {"mlp": p}, x)
    L, R = p["L"], p["R"]
    if bias:
        x = torch.cat([torch.ones(2, 7, 1, dtype=F64), x], -1)
        L, R = torch.cat([p["l"][:, None], L], 1), torch.cat([p["r"][:, None], R], 1)
    B = torch.einsum("ch,hi,hj->cij", p["D"], L, R)
    expected = torch.einsum("cij,bsi,bsj->bsc", B, x, x) + (p["d"] if bias else 0)
    torch.testing.assert_close(y, expected)


def test_bilinear_output_depends_only_on_the_symmetric_part() -> None:
    box = Bilinear("mlp", Z, X, hidden=6)
    p, x = fresh(box), randn(10, 4, seed=3)
    B = torch.einsum("ch,hi,hj->cij", p["D"], p["L"], p["R"])
    sym = (B + B.transpose(1, 2)) / 2
    (y,) = run(box, {"mlp": p}, x)
    torch.testing.assert_close(y, torch.einsum("bi,cij,bj->bc", x, sym, x))


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize("bias", [False, True])
def test_gated(activation: str, bias: bool) -> None:
    box = Gated("glu", Z, X, hidden=5, activation=activation, bias=bias)
    p, x = fresh(box), randn(3, 4, seed=9)
    (y,) = run(box, {"glu": p}, x)
    hidden = by_hand(activation, torch.einsum("hi,bi->bh", p["L"], x) + (p["l"] if bias else 0))
    gate = torch.einsum("hi,bi->bh", p["R"], x) + (p["r"] if bias else 0)
    torch.testing.assert_close(y, torch.einsum("oh,bh->bo", p["D"], hidden * gate) + (p["d"] if bias else 0))


def test_gated_with_identity_activation_equals_bilinear() -> None:
    gated = Gated("m", Z, X, hidden=5, activation="identity", bias=True)
    bilinear = Bilinear("m", Z, X, hidden=5, bias=True)
    p, x = fresh(bilinear), randn(3, 4, seed=1)
    torch.testing.assert_close(run(gated, {"m": p}, x), run(bilinear, {"m": p}, x))


@pytest.mark.parametrize(("eps", "affine", "bias"), [(1e-5, True, True), (1e-2, True, False), (1e-5, False, False)])
def test_layer_norm_matches_nn_layer_norm(eps: float, affine: bool, bias: bool) -> None:
    box = Norm("ln", Z, norm="layer", eps=eps, affine=affine, bias=bias)
    p, x = fresh(box), 3 * randn(2, 5, 4, seed=9) + 1
    reference = nn.LayerNorm(4, eps=eps, elementwise_affine=affine, bias=bias, dtype=F64)
    with torch.no_grad():
        if affine:
            reference.weight.copy_(p["weight"])
        if bias:
            reference.bias.copy_(p["bias"])
    (y,) = run(box, {"ln": p}, x)
    torch.testing.assert_close(y, reference(x))
    torch.testing.assert_close(y, box_by_hand(box, p, [x])[0])


@pytest.mark.parametrize(("eps", "affine"), [(1e-5, True), (None, True), (0.5, False)])
def test_rms_norm_matches_nn_rms_norm(eps: float | None, affine: bool) -> None:
    box = Norm("rms", Z, norm="rms", eps=eps, affine=affine)
    p, x = fresh(box), 3 * randn(2, 5, 4, seed=9)
    reference = nn.RMSNorm(4, eps=eps, elementwise_affine=affine, dtype=F64)
    if affine:
        with torch.no_grad():
            reference.weight.copy_(p["weight"])
    (y,) = run(box, {"rms": p}, x)
    torch.testing.assert_close(y, reference(x))
    torch.testing.assert_close(y, box_by_hand(box, p, [x])[0])


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_nn_multihead_attention(causal: bool, bias: bool) -> None:
    box = Attention("attn", Space("resid", 8), heads=2, causal=causal, bias=bias)
    p, x = fresh(box), randn(3, 6, 8, seed=9)
    reference = nn.MultiheadAttention(8, 2, bias=bias, batch_first=True, dtype=F64)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([p["Wq"], p["Wk"], p["Wv"]]))
        reference.out_proj.weight.copy_(p["Wo"])
        if bias:
            reference.in_proj_bias.copy_(torch.cat([p["bq"], p["bk"], p["bv"]]))
            reference.out_proj.bias.copy_(p["bo"])
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1) if causal else None
    expected, _ = reference(x, x, x, attn_mask=mask, need_weights=False)
    (y,) = run(box, {"attn": p}, x)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(y, attention_by_hand(p, x, 2, causal, bias))


def test_attention_with_free_head_dim_and_extra_batch_axes() -> None:
    box = Attention("attn", Z, heads=3, head_dim=5, bias=True)
    p, x = fresh(box), randn(2, 3, 6, 4, seed=9)
    (y,) = run(box, {"attn": p}, x)
    assert y.shape == (2, 3, 6, 4)
    torch.testing.assert_close(y, attention_by_hand(p, x, 3, True, True))


def test_causal_attention_ignores_the_future() -> None:
    box = Attention("attn", Z, heads=2)
    p, x = fresh(box), randn(2, 6, 4, seed=9)
    changed = x.clone()
    changed[:, 4:] = randn(2, 2, 4, seed=10)
    (y,), (y_changed,) = run(box, {"attn": p}, x), run(box, {"attn": p}, changed)
    torch.testing.assert_close(y[:, :4], y_changed[:, :4])
    assert not torch.allclose(y[:, 4:], y_changed[:, 4:])


def test_embed_on_ids_and_on_one_hot_rows() -> None:
    box = Embed("emb", Space("tok", 7), Z)
    p = fresh(box)
    ids = torch.tensor([[0, 3, 6], [6, 1, 1]])
    (from_ids,) = run(box, {"emb": p}, ids)
    (from_rows,) = run(box, {"emb": p}, F.one_hot(ids, 7).to(F64))
    expected = torch.stack([torch.stack([p["W"][int(i)] for i in row]) for row in ids])
    torch.testing.assert_close(from_ids, expected)
    torch.testing.assert_close(from_rows, expected)
    soft = torch.softmax(randn(5, 7, seed=2), -1)
    torch.testing.assert_close(run(box, {"emb": p}, soft)[0], torch.einsum("bv,vd->bd", soft, p["W"]))


@pytest.mark.parametrize("fn", ["identity", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "square", "exp",
                                "neg", "softplus"])
def test_elementwise_on_every_wire(fn: str) -> None:
    box = Elementwise(fn, X @ Z)
    x, z = randn(2, 3, seed=1), randn(2, 4, seed=2)
    a, b = run(box, {}, x, z)
    torch.testing.assert_close(a, by_hand(fn, x))
    torch.testing.assert_close(b, by_hand(fn, z))


@pytest.mark.parametrize("absolute", [False, True])
def test_topk_keeps_the_k_largest(absolute: bool) -> None:
    box = TopK("top", Z, 2, absolute=absolute)
    x = randn(3, 5, 4, seed=1)
    y = run(box, {}, x)[0]
    torch.testing.assert_close(y, topk_by_hand(x, 2, absolute))
    assert int((y != 0).sum(-1).max()) <= 2 and (absolute or bool((y >= 0).all()))


def test_spiders_swap_and_discard() -> None:
    a, b, c = randn(2, 3, seed=1), randn(2, 3, seed=2), randn(2, 3, seed=3)
    close(run(Copy(X, 3), {}, a), [a, a, a])
    assert run(Copy(X, 0), {}, a) == ()
    close(run(Copy(X, 1), {}, a), [a])
    close(run(Add(X, 3), {}, a, b, c), [a + b + c])
    close(run(Add(X, 1), {}, a), [a])
    close(run(Mul(X, 3), {}, a, b, c), [a * b * c])
    close(run(Mul(X, 1), {}, a), [a])
    z = randn(2, 4, seed=4)
    close(run(Swap(X, Z), {}, a, z), [z, a])
    close(run(Diagram.swap(X @ X, Z), {}, a, b, z), [z, a, b])
    close(run(Copy(X, 0) @ Id(Z), {}, a, z), [z])
    close(run(Copy(X) >> Mul(X) >> (Copy(X) >> Add(X)), {}, a), [2 * a * a])


def test_residual_adds_the_input_back() -> None:
    box = Bilinear("mlp", Z, Z, hidden=3)
    p, x = fresh(box), randn(4, 4, seed=1)
    (y,) = run(residual(box), {"mlp": p}, x)
    torch.testing.assert_close(y, x + box_by_hand(box, p, [x])[0])


def test_opaque_calls_its_module_with_every_input_and_splits_its_outputs() -> None:
    class Split(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return y * 2, x.sum(-1, keepdim=True).expand(*x.shape[:-1], 4)

    x, y = randn(5, 3, seed=1), randn(5, 2, seed=2)
    a, b = run(Opaque("split", X @ Y, Y @ Z), {"split": Split()}, x, y)
    torch.testing.assert_close(a, 2 * y)
    torch.testing.assert_close(b, x.sum(-1, keepdim=True).expand(5, 4))


def test_structure_costs_no_kernel_calls() -> None:
    f, g = Linear("f", X, X), Linear("g", X, X)
    diagram = Copy(X, 3) >> (f @ Swap(X, X)) >> (Id(X) @ Copy(X, 0) @ g) >> Swap(X, X) >> Add(X, 2) >> Id(X)
    plan = compile_plan(diagram)
    assert [step.box.name for step in plan.steps] == ["f", "g", "add"]
    pf, pg, a = fresh(f, seed=1), fresh(g, seed=2), randn(3, seed=3)
    close(outputs(plan({"f": pf, "g": pg}, a)), [pf["W"] @ a + pg["W"] @ a])


def test_identity_returns_its_inputs_unchanged() -> None:
    a, z = randn(2, 3, seed=1), randn(2, 4, seed=2)
    out = run(Id(X @ Z), {}, a, z)
    assert out[0] is a and out[1] is z


# --- functor laws, by hypothesis over random well-typed diagrams ------------------------------------

class Mix(nn.Module):
    """An opaque two-wire to one-wire module: a linear map of the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(randn(4, 5, seed=50)), nn.Parameter(randn(4, seed=51))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.cat([x, y], -1), self.weight, self.bias)


POOL: tuple[Box, ...] = (
    Linear("lin_xy", X, Y, bias=True),
    Linear("lin_yx", Y, X),
    Unembed("unemb", Z, X),
    Bilinear("bil_x", X, X, hidden=4),
    Bilinear("bil_zy", Z, Y, hidden=3, bias=True),
    Gated("glu_yz", Y, Z, hidden=3, activation="gelu"),
    Norm("rms_x", X),
    Norm("ln_z", Z, norm="layer"),
    Elementwise("tanh", X),
    Elementwise("square", Y @ Z, name="sq_yz"),
    TopK("top_z", Z, 2),
    JumpReLU("jump_y", Y),
    Attention("attn_z", Z, heads=2),
    Opaque("mix", X @ Y, Z),
)
PARAMS: dict[str, Any] = {box.name: init_params(box, torch.Generator().manual_seed(i), F64)
                          for i, box in enumerate(POOL) if box.param_shapes()} | {"mix": Mix()}
PARAMS["jump_y"] = {"theta": torch.tensor([0.3, -0.2], dtype=F64)}     # thresholds of either sign, not the zeros
"""One parameter store shared by every random diagram: box name -> parameters (or module)."""
MAX_WIRES = 5


def one_layer_moves(wires: tuple[Space, ...]) -> list[tuple[int, Box]]:
    """Every single-box layer that fits on ``wires`` (offset, box): a pool box, a spider, or a swap of neighbours."""
    n, moves = len(wires), []
    for offset, wire in enumerate(wires):
        here = [box for box in POOL if tuple(box.dom) == wires[offset:offset + len(box.dom)]]
        here += [Copy(wire, k) for k in range(4)]
        here += [spider(wire, k) for k in range(1, 4) if wires[offset:offset + k] == (wire,) * k
                 for spider in (Add, Mul)]
        here += [Swap(wire, wires[offset + 1])] if offset + 1 < n else []
        moves += [(offset, box) for box in here if n - len(box.dom) + len(box.cod) <= MAX_WIRES]
    return moves


@st.composite
def diagrams(draw: st.DrawFn, dom: Space, depth: int = 2) -> Diagram:
    """A random diagram from ``dom``: a few layers, or a sequential or parallel composite of random diagrams."""
    how = draw(st.sampled_from(["layers", "then", "tensor"] if depth else ["layers"]))
    if how == "then":
        first = draw(diagrams(dom, depth - 1))
        return first >> draw(diagrams(first.cod, depth - 1))
    if how == "tensor" and len(dom) >= 2:
        k = draw(st.integers(1, len(dom) - 1))
        return draw(diagrams(dom[:k], depth - 1)) @ draw(diagrams(dom[k:], depth - 1))
    layers: list[Diagram] = []
    wires = tuple(dom)
    for _ in range(draw(st.integers(0, 3))):
        moves = one_layer_moves(wires)
        if not moves:
            break
        offset, box = draw(st.sampled_from(moves))
        layers.append(Id(Space().tensor(*wires[:offset])) @ box @ Id(Space().tensor(*wires[offset + len(box.dom):])))
        wires = wires[:offset] + tuple(box.cod) + wires[offset + len(box.dom):]
    return Id(dom).then(*layers)


spaces = st.lists(st.sampled_from([X, Y, Z]), min_size=1, max_size=3).map(lambda ws: Space().tensor(*ws))


def inputs(space: Space, seed: int) -> tuple[torch.Tensor, ...]:
    """Batched inputs ``(batch 2, sequence 3, dim)`` for each wire of ``space``."""
    return tuple(randn(2, 3, dim, seed=seed + i) for i, dim in enumerate(space.dims))


@given(data=st.data(), dom=spaces, seed=st.integers(0, 1000))
def test_functor_preserves_sequential_composition(data: st.DataObject, dom: Space, seed: int) -> None:
    f = data.draw(diagrams(dom), label="f")
    g = data.draw(diagrams(f.cod), label="g")
    xs = inputs(dom, seed)
    close(run(f >> g, PARAMS, *xs), run(g, PARAMS, *run(f, PARAMS, *xs)))


@given(data=st.data(), left=spaces, right=spaces, seed=st.integers(0, 1000))
def test_functor_preserves_parallel_composition(data: st.DataObject, left: Space, right: Space, seed: int) -> None:
    f, g = data.draw(diagrams(left), label="f"), data.draw(diagrams(right), label="g")
    xs, ys = inputs(left, seed), inputs(right, seed + 10)
    close(run(f @ g, PARAMS, *xs, *ys), run(f, PARAMS, *xs) + run(g, PARAMS, *ys))


@given(data=st.data(), dom=spaces, seed=st.integers(0, 1000))
def test_functor_preserves_identities(data: st.DataObject, dom: Space, seed: int) -> None:
    f = data.draw(diagrams(dom), label="f")
    xs = inputs(dom, seed)
    ys = run(f, PARAMS, *xs)
    close(run(Id(dom), PARAMS, *xs), xs)
    close(run(Id(dom) >> f, PARAMS, *xs), ys)
    close(run(f >> Id(f.cod), PARAMS, *xs), ys)
    close(run(Id(Space()) @ f @ Id(Space()), PARAMS, *xs), ys)


@given(data=st.data(), left=spaces, right=spaces, seed=st.integers(0, 1000))
def test_interchange_and_swap_naturality(data: st.DataObject, left: Space, right: Space, seed: int) -> None:
    f, g = data.draw(diagrams(left, 1), label="f"), data.draw(diagrams(right, 1), label="g")
    h, k = data.draw(diagrams(f.cod, 1), label="h"), data.draw(diagrams(g.cod, 1), label="k")
    xs, ys = inputs(left, seed), inputs(right, seed + 10)
    close(run((f @ g) >> (h @ k), PARAMS, *xs, *ys), run((f >> h) @ (g >> k), PARAMS, *xs, *ys))
    swapped = run(g, PARAMS, *ys) + run(f, PARAMS, *xs)
    close(run(Diagram.swap(left, right) >> (g @ f), PARAMS, *xs, *ys), swapped)
    close(run((f @ g) >> Diagram.swap(f.cod, g.cod), PARAMS, *xs, *ys), swapped)


@given(data=st.data(), dom=spaces, seed=st.integers(0, 1000))
def test_compiled_plan_agrees_with_a_hand_written_interpreter(data: st.DataObject, dom: Space, seed: int) -> None:
    diagram = data.draw(diagrams(dom), label="diagram")
    xs = inputs(dom, seed)
    close(run(diagram, PARAMS, *xs), run_by_hand(diagram, PARAMS, *xs))


# --- generated code against the interpreter's loop -------------------------------------------------

class Watching(Interpreter):
    """Runs compiled or as the loop (``compiled``), with hooks on ``watched`` and ``cut`` registers
    that change the values (so a hook run twice, or skipped, or out of order shows) and record the order."""

    def __init__(self, plan: Plan, params: Mapping[str, Any], compiled: bool, watched: set[int] = frozenset(),
                 cut: set[int] = frozenset()) -> None:
        super().__init__(plan, params)
        self.compiled, self.watched, self.cut = compiled, frozenset(watched), frozenset(cut)
        self.calls: list[tuple[str, int]] = []

    def written(self, r: int, value: torch.Tensor) -> torch.Tensor:
        self.calls.append(("written", r))
        return value * 0.5 + r if value.is_floating_point() else value

    def heads_written(self, r: int, z: torch.Tensor) -> torch.Tensor:
        self.calls.append(("heads", r))
        return z * 0.25


def same_results(a: Sequence[Any], b: Sequence[Any]) -> None:
    """Equal to the last bit (or both ``None``): the same kernels on the same values in the same order."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))


@given(data=st.data(), dom=spaces, seed=st.integers(0, 1000))
def test_generated_code_runs_as_the_interpreter_loop(data: st.DataObject, dom: Space, seed: int) -> None:
    plan = compile_plan(data.draw(diagrams(dom), label="diagram"))
    registers = range(plan.registers)
    subset = st.sets(st.sampled_from(registers)) if plan.registers else st.just(set())
    given_ = data.draw(subset, label="given")
    watched = data.draw(subset, label="watched")
    cut = data.draw(st.sets(st.sampled_from(sorted(plan.heads))) if plan.heads else st.just(set()), label="cut")
    until = data.draw(st.one_of(st.none(), st.integers(0, len(plan.steps))), label="until")
    returns = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(registers))) if plan.registers else st.none(),
                        label="returns")
    xs = inputs(dom, seed)
    initial = {r: randn(2, 3, plan.wires[r].dim, seed=seed + 100 + r) for r in given_} or None
    runs = [Watching(plan, PARAMS, compiled, watched, cut) for compiled in (True, False)]
    same_results(*[i.run(*xs, initial=initial, until=until, returns=returns) for i in runs])
    assert runs[0].calls == runs[1].calls
    prepared = Watching(plan, PARAMS, True, watched, cut).prepared(frozenset(given_), until, returns)
    same_results(prepared(xs, initial), runs[1].run(*xs, initial=initial, until=until, returns=returns))


def test_a_run_is_generated_once_per_signature_and_kept_out_of_pickles() -> None:
    import pickle
    plan, params = compile_plan(SMALL), small_params(F64)
    x = randn(2, 3, 4, seed=1)
    plan(params, x)
    plan(params, 2 * x)
    Interpreter(plan, params).run(x, until=2)
    assert len(plan._code) == 2
    source, _ = codegen.python_code(plan, (frozenset(), None, frozenset(), frozenset(), None))
    assert [f"t = {t}  # {label}:" in source for t, label in enumerate(plan.labels)] == [True] * len(plan.steps)
    assert "for " not in source and "_linear(" in source  # straight-line code, one-call kernels written out
    back = pickle.loads(pickle.dumps(plan))
    assert back._code == {} and torch.equal(back(params, x), plan(params, x))


def test_an_interpreter_that_overrides_a_step_runs_the_loop() -> None:
    plan, params = compile_plan(SMALL), small_params(F64)
    seen: list[str] = []

    class Names(Interpreter):
        def run_step(self, t: int, step: Any, args: list[Any]) -> tuple[Any, ...]:
            seen.append(step.box.name)
            return super().run_step(t, step, args)

    assert Interpreter.compiled and not Names.compiled
    x = randn(2, 3, 4, seed=1)
    same_results(Names(plan, params).run(x), Interpreter(plan, params).run(x))
    assert seen == [step.box.name for step in plan.steps]


@pytest.mark.parametrize("case", ["kernel", "parameters", "arity", "edit"])
def test_generated_code_raises_the_loops_errors(case: str) -> None:
    attn = Attention("attn", Z, heads=2)
    diagram, params, xs = Linear("f", X, Z) >> attn, {"f": fresh(Linear("f", X, Z)), "attn": fresh(attn)}, \
        (randn(2, 3, 3),)
    if case == "kernel":
        xs = (randn(3),)
    elif case == "parameters":
        del params["attn"]
    elif case == "arity":
        diagram, params = Box("mystery", X, Y), {}

    class Failing(Interpreter):
        watched = frozenset({1} if case == "edit" else ())

        def written(self, r: int, value: torch.Tensor) -> torch.Tensor:
            return value[..., :1] @ torch.ones(2, 2, dtype=F64)

    plan = TorchFunctor({"Box": lambda box: lambda p, x: x})(diagram)
    texts = []
    for compiled in (True, False):
        interpreter = Failing(plan, params)
        interpreter.compiled = compiled
        texts.append(message(InputError, lambda: interpreter.run(*xs)))
    assert texts[0] == texts[1]
    assert {"kernel": "failed on inputs of shape (4,)", "parameters": "no parameters for box 'attn'",
            "arity": "must return a tuple of 1", "edit": "box 'f'"}[case] in texts[0]


# --- autograd and dtypes ---------------------------------------------------------------------------

R4 = Space("r", 4)
SMALL = (Norm("ln0", R4, norm="layer") >> residual(Attention("attn", R4, heads=2, bias=True)) >> Norm("rms1", R4)
         >> residual(Bilinear("mlp", R4, R4, hidden=3, bias=True)) >> Linear("out", R4, Y, bias=True))
"""A small network with every differentiable kind that matters here: norms, attention, bilinear, linear."""


def small_params(dtype: torch.dtype) -> dict[str, dict[str, torch.Tensor]]:
    """Random parameters for :data:`SMALL`."""
    return {box.name: fresh(box, seed=10 * i, dtype=dtype)
            for i, (_, box) in enumerate(SMALL.walk()) if isinstance(box, Kind) and box.param_shapes()}


def test_gradcheck_through_bilinear_norm_and_attention() -> None:
    plan, params = compile_plan(SMALL), small_params(F64)
    roles = [(name, role) for name, p in params.items() for role in p]

    def f(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        p: dict[str, dict[str, torch.Tensor]] = {name: {} for name in params}
        for (name, role), value in zip(roles, values):
            p[name][role] = value
        return plan(p, x)

    x = randn(2, 3, 4, seed=99).requires_grad_()
    values = [params[name][role].clone().requires_grad_() for name, role in roles]
    assert torch.autograd.gradcheck(f, (x, *values), eps=1e-6, atol=1e-5)


def test_gradients_match_the_hand_written_interpreter() -> None:
    params, x = small_params(F64), randn(2, 3, 4, seed=99)
    leaves = {name: {role: v.clone().requires_grad_() for role, v in p.items()} for name, p in params.items()}
    compiled = run(SMALL, leaves, x)[0].square().sum()
    grads = torch.autograd.grad(compiled, [v for p in leaves.values() for v in p.values()])
    by_hand_ = run_by_hand(SMALL, leaves, x)[0].square().sum()
    expected = torch.autograd.grad(by_hand_, [v for p in leaves.values() for v in p.values()])
    close(grads, expected)


@pytest.mark.parametrize(("dtype", "tolerance"), [(F64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 0.1)])
def test_dtypes(dtype: torch.dtype, tolerance: float) -> None:
    params, x = small_params(F64), randn(2, 3, 4, seed=99)
    cast = {name: {role: v.to(dtype) for role, v in p.items()} for name, p in params.items()}
    (y,) = run(SMALL, cast, x.to(dtype))
    assert y.dtype == dtype
    (expected,) = run_by_hand(SMALL, params, x)
    torch.testing.assert_close(y.to(F64), expected, atol=tolerance * 2, rtol=tolerance)


# --- errors ----------------------------------------------------------------------------------------

def message(error: type[Exception], make: Callable[[], object]) -> str:
    """The one-line message of the ``error`` that ``make()`` raises."""
    with pytest.raises(error) as info:
        make()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_wrong_number_of_inputs() -> None:
    plan = compile_plan(Linear("f", X, Y) @ Id(Z))
    text = message(InputError, lambda: plan(PARAMS | {"f": fresh(Linear("f", X, Y))}, randn(3)))
    assert "expected 2 inputs" in text and "x:3 @ z:4" in text and "got 1" in text


@pytest.mark.parametrize("bad", [randn(2, 5), randn(3), torch.tensor(1.0, dtype=F64)])
def test_wrong_last_dimension_names_the_wire(bad: torch.Tensor) -> None:
    plan = compile_plan(Linear("f", X, Y) @ Id(Z))
    text = message(InputError, lambda: plan({"f": fresh(Linear("f", X, Y))}, randn(2, 3), bad))
    assert "input 1" in text and "z:4" in text and str(tuple(bad.shape)) in text and "must be 4" in text


def test_non_tensor_input_names_the_wire() -> None:
    text = message(InputError, lambda: compile_plan(Id(X))({}, [1.0, 2.0, 3.0]))
    assert "input 0" in text and "x:3" in text and "list" in text


def test_kernel_failure_names_the_box() -> None:
    box = Attention("attn", Z, heads=2)
    params = {"f": fresh(Linear("f", X, Z)), "attn": fresh(box)}
    text = message(InputError, lambda: compile_plan(Linear("f", X, Z) >> box)(params, randn(3)))
    assert "box 'attn'" in text and "Attention z:4 -> z:4" in text and "(4,)" in text


def test_dtype_mismatch_names_the_box() -> None:
    box = Linear("f", X, Y)
    text = message(InputError, lambda: compile_plan(box)({"f": fresh(box, dtype=torch.float32)}, randn(3)))
    assert "box 'f'" in text and "Linear x:3 -> y:2" in text


def test_out_of_range_token_names_the_box() -> None:
    box = Embed("emb", Space("tok", 5), Z)
    text = message(InputError, lambda: compile_plan(box)({"emb": fresh(box)}, torch.tensor([0, 5])))
    assert "box 'emb'" in text and "Embed tok:5 -> z:4" in text


class Halves(nn.Module):
    """Splits its input in two halves: two outputs, whatever the box declares."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., :2], x[..., 2:]


def test_opaque_module_with_the_wrong_arity_names_the_box() -> None:
    text = message(InputError, lambda: compile_plan(Opaque("blob", X @ Y, Z))({"blob": nn.Linear(3, 4)}, randn(3), randn(2)))
    assert "box 'blob'" in text


@pytest.mark.parametrize(("cod", "module"), [(Y @ Y @ Y, Halves()), (Y, Halves()), (Y, nn.Identity())])
def test_opaque_module_with_outputs_that_do_not_fit_names_the_box(cod: Space, module: nn.Module) -> None:
    text = message(InputError, lambda: compile_plan(Opaque("blob", Z, cod))({"blob": module}, randn(4)))
    assert "box 'blob'" in text


def test_missing_parameters_name_the_box() -> None:
    text = message(InputError, lambda: compile_plan(Linear("f", X, Y))({}, randn(3)))
    assert "no parameters for box 'f'" in text and "x:3 -> y:2" in text


def test_functor_errors() -> None:
    assert "adds no wires" in message(BoxError, lambda: compile_plan(Add(X, 0, name="zero")))
    assert "'zero'" in message(BoxError, lambda: compile_plan(Add(X, 0, name="zero")))
    text = message(BoxError, lambda: compile_plan(Box("mystery", X, Y)))
    assert "'mystery'" in text and "rule" in text
    assert "Diagram" in message(BoxError, lambda: compile_plan("f >> g"))  # type: ignore[arg-type]


def test_rules_add_and_override_kernels() -> None:
    def double(box: Box) -> Callable[..., tuple[torch.Tensor, ...]]:
        return lambda p, x: (2 * x[..., :box.cod.dim],)

    a = randn(2, 3, seed=1)
    functor = TorchFunctor({"Box": double, "Linear": double})
    close(outputs(functor(Box("mystery", X, Y) >> Linear("f", Y, Y))({"f": {}}, a)), [4 * a[..., :2]])


@pytest.mark.parametrize("kind", [Linear, Unembed])
def test_unembed_computes_like_linear(kind: type[Linear]) -> None:
    box = kind("f", Z, X, bias=True)
    p, x = fresh(box), randn(4, seed=1)
    torch.testing.assert_close(run(box, {"f": p}, x)[0], p["W"] @ x + p["b"])
