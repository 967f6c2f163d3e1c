"""The closed form for one-stage (quadratic) networks against the general Wick engine.

``exact_compare`` and ``gaussian_inner`` pick, for networks of at most one Hadamard stage,
whichever of the two exact paths costs fewer multiply-adds; both must give the same numbers
(to rounding), and deeper networks must always take the engine.
"""

from __future__ import annotations

import pytest
import torch

from compinterp.faithfulness.exact import closed_form
from compinterp.faithfulness.exact import measures as exact_measures
from compinterp.faithfulness.exact import ExactError, exact_compare, gaussian_inner
from compinterp.model import Model
from compinterp.semantics.tensor import tensor_semantics
from compinterp.syntax import Bilinear, Linear, Space, Unembed, residual

F64 = torch.float64
X, H, Y = Space("x", 3), Space("h", 4), Space("y", 2)
PAIRS = [(0, 0), (0, 1), (1, 1)]


def one_layer(seed: int) -> Model:
    return Model(Bilinear("mlp", X, Y, hidden=5, bias=True), seed=seed).double()


def wrapped(seed: int) -> Model:
    """A linear embedding, a bilinear layer with biases and an unembedding: still one Hadamard stage."""
    return Model(Linear("emb", X, H, bias=True) >> Bilinear("mlp", H, H, hidden=6, bias=True)
                 >> Unembed("u", H, Y, bias=True), seed=seed).double()


def residual_layer(seed: int) -> Model:
    """A residual bilinear layer read out linearly (the skip rides through the stage as ``(M s) * 1``)."""
    return Model(residual(Bilinear("mlp", X, X, hidden=4, bias=True)) >> Unembed("u", X, Y, bias=True),
                 seed=seed).double()


def linear(seed: int) -> Model:
    """No Hadamard stage at all."""
    return Model(Linear("l", X, Y, bias=True), seed=seed).double()


def eigen_like(seed: int) -> Model:
    """Symmetric units (``L = R``), each output reading only its own few, and one output reading none."""
    gen = torch.Generator().manual_seed(seed)
    V = torch.randn(6, 3, generator=gen, dtype=F64)
    D = torch.zeros(2, 6, dtype=F64)
    D[0, :2] = torch.randn(2, generator=gen, dtype=F64)
    return Model(Bilinear("mlp", X, Y, hidden=6), {"mlp": {"L": V, "R": V, "D": D}}).double()


def silent(seed: int) -> Model:
    """A bilinear layer that no output reads."""
    gen = torch.Generator().manual_seed(seed)
    L, R = (torch.randn(4, 3, generator=gen, dtype=F64) for _ in range(2))
    return Model(Bilinear("mlp", X, Y, hidden=4), {"mlp": {"L": L, "R": R, "D": torch.zeros(2, 4, dtype=F64)}})


def measures() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    root = torch.randn(3, 3, generator=gen, dtype=F64)
    return [{}, {"mean": torch.randn(3, generator=gen, dtype=F64), "cov": root @ root.T},
            {"cov": torch.tensor([0.5, 2.0, 1.5], dtype=F64)}]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


@pytest.mark.parametrize("measure", measures(), ids=["standard", "mean-cov", "variances"])
@pytest.mark.parametrize("make_f, make_g", [(one_layer, one_layer), (wrapped, wrapped), (one_layer, wrapped),
                                            (residual_layer, one_layer), (linear, one_layer), (linear, linear),
                                            (one_layer, eigen_like), (eigen_like, eigen_like), (one_layer, silent)])
@pytest.mark.parametrize("batch", [closed_form._BATCH, 1], ids=["batched", "one-output-at-a-time"])
def test_closed_form_equals_the_wick_engine(make_f, make_g, measure, batch, monkeypatch) -> None:
    monkeypatch.setattr(closed_form, "_BATCH", batch)
    for seed in range(3):
        nets = [tensor_semantics(make_f(2 * seed)), tensor_semantics(make_g(2 * seed + 1))]
        closed, mean_closed = exact_measures.gaussian_moments(nets, PAIRS, closed=True, **measure)
        wick, mean_wick = exact_measures.gaussian_moments(nets, PAIRS, closed=False, **measure)
        for a, b in zip(closed, wick):
            close(a, b)
        close(mean_closed, mean_wick)


def test_exact_compare_gives_the_same_numbers_on_either_path(monkeypatch) -> None:
    f, g = wrapped(0), wrapped(1)
    mean, cov = measures()[1]["mean"], measures()[1]["cov"]
    results = []
    for closed in (True, False):
        monkeypatch.setattr(exact_measures, "closed_form_pays", lambda nets, pairs, closed=closed: closed)
        results.append(exact_compare(f, g, mean=mean, cov=cov))
    a, b = results
    assert a.fvu == pytest.approx(b.fvu, rel=1e-9) and a.cosine == pytest.approx(b.cosine, rel=1e-12)
    assert a.per_output_fvu == pytest.approx(b.per_output_fvu, rel=1e-9)
    assert a.note == b.note == "nothing approximated (Isserlis/Wick moments in float64)"


def test_deeper_networks_use_the_wick_engine(monkeypatch) -> None:
    def refuse(net):
        raise AssertionError("the closed form was used for a two-stage network")

    monkeypatch.setattr(exact_measures, "quadratic", refuse)
    deep = [Model(residual(Bilinear("b1", X, X, hidden=4, bias=True)) >> residual(Bilinear("b2", X, X, hidden=3))
                  >> Unembed("u", X, Y, bias=True), seed=seed).double() for seed in (0, 1)]
    nets = [tensor_semantics(m) for m in deep]
    assert [net.depth for net in nets] == [2, 2]
    assert not closed_form.closed_form_pays(nets, PAIRS)
    assert not closed_form.closed_form_pays([nets[0], tensor_semantics(one_layer(0))], PAIRS)
    result = exact_compare(deep[0], deep[1])
    assert result.exact and 0 < result.fvu
    gaussian_inner(deep[0], one_layer(0))
    with pytest.raises(ExactError, match="at most one Hadamard stage"):
        exact_measures.gaussian_moments(nets, PAIRS, None, None, closed=True)


def test_the_cheaper_path_is_chosen(monkeypatch) -> None:
    """Wide hidden layers on few inputs and outputs favour the closed form (the benchmark's shape:
    the Gram form would multiply ``2h x 2h`` over the inputs); many outputs of a narrow layer on
    many inputs favour the engine; the closed form must fit in ``MAX_QUADRATIC`` numbers, or in no
    more than the engine's Gram matrix would take."""
    model = Model(Bilinear("mlp", Space("x", 256), Space("y", 10), hidden=1024), seed=0)
    rows = torch.randn(160, 256)
    D = torch.zeros(10, 160)
    for c in range(10):
        D[c, 16 * c:16 * (c + 1)] = torch.randn(16)
    top16 = Model(Bilinear("mlp", Space("x", 256), Space("y", 10), hidden=160),
                  {"mlp": {"L": rows, "R": rows, "D": D}})
    assert closed_form.closed_form_pays([tensor_semantics(model), tensor_semantics(top16)], PAIRS)
    narrow = [tensor_semantics(Model(Bilinear("mlp", Space("x", 64), Space("y", 40), hidden=4), seed=s))
              for s in (0, 1)]
    assert not closed_form.closed_form_pays(narrow, PAIRS)
    small, wide = (tensor_semantics(Model(Bilinear("mlp", Space("x", 4), Space("y", 2), hidden=h), seed=0))
                   for h in (6, 32))
    assert closed_form.closed_form_pays([small], [(0, 0)]) and closed_form.closed_form_pays([wide], [(0, 0)])
    monkeypatch.setattr(closed_form, "MAX_QUADRATIC", 2 * 5 * 5 - 1)
    assert not closed_form.closed_form_pays([small], [(0, 0)])  # 2 x 5 x 5 numbers, more than its 7 x 7 Gram
    assert closed_form.closed_form_pays([wide], [(0, 0)])  # still less than the 33 x 33 Gram it saves
