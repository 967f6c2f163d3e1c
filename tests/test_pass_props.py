"""Every rewrite pass, on random small models: the output type-checks, keeps the spaces, runs, shares
no tensor with the input, leaves the input alone, and equals the input at a lossless setting."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes import CP, ODT, Eigen, Fuse, LowRank, Prune, default_passes
from compinterp.syntax import (
    Bilinear,
    Gated,
    Linear,
    Space,
    Unembed,
    chain,
    diagram_from_json,
    diagram_to_json,
    residual,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


@st.composite
def models(draw: st.DrawFn) -> Model:
    """A small model: optional Linear embedding, a Bilinear (or Gated) layer in a residual stream or not,
    optionally a second layer after it (a chain), an optional read-out; random widths and biases."""

    width = st.integers(1, 5)
    n = draw(st.integers(2, 5))
    x = Space("x", n)
    parts = []
    if draw(st.booleans()):
        parts.append(Linear("embed", Space("inp", draw(width)), x, bias=draw(st.booleans())))
    kind = Gated if draw(st.integers(0, 4)) == 0 else Bilinear
    if draw(st.booleans()):
        parts.append(residual(kind("mlp", x, x, hidden=draw(width), bias=draw(st.booleans()))))
        out = x
    else:
        out = Space("z", draw(width))
        parts.append(kind("mlp", x, out, hidden=draw(width), bias=draw(st.booleans())))
        if draw(st.booleans()):
            nxt = Space("w", draw(width))
            parts.append(Bilinear("mlp2", out, nxt, hidden=draw(width), bias=draw(st.booleans())))
            out = nxt
    if draw(st.booleans()):
        parts.append(Unembed("unembed", out, Space("y", draw(width)), bias=draw(st.booleans())))
    return Model(chain(*parts), seed=draw(st.integers(0, 10_000)), dtype=F64)


PASSES = [Eigen(), Eigen(mode="per_direction", fold="auto"), Eigen(mode="threshold"), LowRank(), Prune(),
          Fuse(), ODT(), CP(steps=5)]


def _snapshot(model: Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _valid(model: Model, refined: Model, rewrite: Rewrite) -> None:
    """The refined model is a well-typed, runnable, fresh model with the same spaces."""
    assert isinstance(refined, Model), rewrite
    assert diagram_from_json(diagram_to_json(refined.diagram)) == refined.diagram, rewrite
    assert refined.dom == model.dom and refined.cod == model.cod, rewrite
    inputs = torch.randn(3, model.dom.dim, dtype=F64)
    out = refined(inputs)
    assert out.shape == (3, model.cod.dim) and torch.isfinite(out).all(), rewrite
    mine = {p.data_ptr() for p in model.parameters()}
    assert not mine & {p.data_ptr() for p in refined.parameters()}, f"{rewrite} aliases the input's tensors"


def _pick(rewrites: list[Rewrite]) -> list[Rewrite]:
    """The mildest and the harshest setting of each box (all settings would be slow for cp)."""
    by_box: dict[str, list[Rewrite]] = {}
    for r in rewrites:
        by_box.setdefault(r.box, []).append(r)
    return [r for rs in by_box.values() for r in (rs if len(rs) <= 2 else [rs[0], rs[-1]])]


def _size(rewrite: Rewrite) -> float | None:
    """How much a setting keeps (larger is milder), or ``None`` for a pass without settings."""
    s = rewrite.settings
    if "threshold" in s:
        return -s["threshold"]
    return next((s[k] for k in ("k", "rank", "keep") if k in s), None)


@given(models())
def test_every_setting_type_checks_and_runs(model: Model) -> None:
    before = _snapshot(model)
    for p in PASSES:
        for rewrite in _pick(list(p.candidates(model))):
            assert rewrite.pass_name == p.name
            _valid(model, p.apply(model, rewrite), rewrite)
    after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "a pass changed its input model"


@given(models())
def test_lossless_settings_are_exact(model: Model) -> None:
    inputs = torch.randn(8, model.dom.dim, dtype=F64)
    want = model(inputs)
    scale = want.abs().max().item() + 1.0
    for p in PASSES:
        for rewrite in p.lossless(model):
            refined = p.apply(model, rewrite)
            _valid(model, refined, rewrite)
            assert torch.allclose(refined(inputs), want, rtol=0, atol=1e-9 * scale), rewrite


@given(models())
def test_candidates_are_deterministic_and_mildest_first(model: Model) -> None:
    for p in PASSES:
        first, again = p.candidates(model), p.candidates(model)
        assert [r.to_json() for r in first] == [r.to_json() for r in again]
        for box in {r.box for r in first}:
            sizes = [_size(r) for r in first if r.box == box and _size(r) is not None]
            assert sizes == sorted(sizes, reverse=True), (p.name, box, sizes)


def test_float32_models_stay_float32_and_lossless_to_float_precision() -> None:
    x = Space("x", 6)
    model = Model(chain(Linear("embed", Space("inp", 5), x, bias=True),
                        residual(Bilinear("mlp", x, x, hidden=7, bias=True)),
                        Unembed("unembed", x, Space("y", 4), bias=True)), seed=3)
    inputs = torch.randn(16, 5)
    want = model(inputs)
    for p in default_passes():
        for rewrite in p.lossless(model):
            refined = p.apply(model, rewrite)
            assert {q.dtype for q in refined.parameters()} == {torch.float32}
            assert torch.allclose(refined(inputs), want, rtol=1e-4, atol=1e-5), rewrite


def test_default_passes_follow_the_protocol() -> None:
    passes = default_passes()
    assert {p.name for p in passes} == {"eigen", "lowrank", "cp", "prune", "fuse", "odt"}
    for p in passes:
        assert callable(p.candidates) and callable(p.apply) and callable(p.lossless)
