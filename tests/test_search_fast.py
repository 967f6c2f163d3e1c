"""The fast search: closed-form scores of eigen truncations equal the exact checks they replace, in every
mode, with and without biases, on the original and on a parent already rewritten, and so do those of CP's
eigen starts; CP's closed-form gradient equals autograd's; the error at which a fit gives up bounds the
checked error; the search that skips what cannot beat its parent or its siblings, or lets fits give up, finds the
same model; the quantisation width found by interpolation is the narrowest that keeps the bar."""

from __future__ import annotations

import math

import pytest
import torch

from compinterp.complexity import Reference
from compinterp.model import Model
from compinterp.faithfulness.exact.closed_form import form_inner
from compinterp.refinement.passes import CP, Eigen, LowRank, Prune
from compinterp.refinement.passes._common import Factors, sym_gram
from compinterp.refinement.passes.cp import Target, best_outputs, cp_loss
from compinterp.refinement.passes.eigen import layer
from compinterp.refinement.search import _groups, refine
from compinterp.syntax import Bilinear, Linear, Space, Unembed, chain, residual
from conftest import imported_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
X, Y = Space("x", 6), Space("y", 3)


def decaying(bias: bool, seed: int = 0) -> Model:
    """A Bilinear layer whose hidden units matter less and less."""
    model = Model(Bilinear("mlp", X, Y, hidden=12, bias=bias), seed=seed, dtype=F64)
    p = {k: v.detach().clone() for k, v in model.box_params("mlp").items()}
    p["D"] = p["D"] * 0.7 ** torch.arange(12.0, dtype=F64)
    return Model(model.diagram, {"mlp": p})


def closed_and_checked(reference: Reference, parent: Model, p: Eigen) -> list[tuple[float, float]]:
    """For every group of the pass on ``parent``: (closed-form, checked) faithfulness of each rewrite."""
    pairs = []
    for group in _groups(p.candidates(parent)):
        found = p.truncations(parent, group)
        assert found is not None, group[0]
        spec, keep = found
        closed = reference.truncated(reference.forms(parent), spec.values, spec.vectors, spec.directions, keep)
        pairs += [(c.faithfulness, reference.compare(p.apply(parent, r)).faithfulness)
                  for c, r in zip(closed, group, strict=True)]
    return pairs


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("mode", ["per_output", "per_direction", "threshold"])
def test_closed_form_scores_equal_the_checks_they_replace(bias: bool, mode: str) -> None:
    model = decaying(bias)
    reference = Reference(model, "exact")
    pairs = closed_and_checked(reference, model, Eigen(mode=mode))
    assert len(pairs) >= 3
    for closed, checked in pairs:
        assert closed == pytest.approx(checked, abs=1e-10)


def test_closed_form_scores_on_a_parent_that_differs_from_the_reference() -> None:
    model = decaying(True)
    reference = Reference(model, "exact")
    parent = Prune().apply(model, Prune().candidates(model)[1])             # a rewrite already made
    assert reference.compare(parent).faithfulness < 1 - 1e-6
    for closed, checked in closed_and_checked(reference, parent, Eigen(mode="threshold")):
        assert closed == pytest.approx(checked, abs=1e-10)


def test_folded_boxes_are_scored_in_closed_form_and_others_are_not() -> None:
    pixels, resid = Space("pixels", 5), Space("resid", 5)
    model = Model(chain(Linear("embed", pixels, resid), residual(Bilinear("mlp", resid, resid, hidden=6, bias=True)),
                        Unembed("unembed", resid, Y, bias=True)), seed=0, dtype=F64)
    reference = Reference(model, "exact")
    folded = Eigen(mode="threshold", fold="auto")
    for closed, checked in closed_and_checked(reference, model, folded):
        assert closed == pytest.approx(checked, abs=1e-10)
    inner = Eigen(mode="threshold")                                          # mlp reads resid, not the input
    assert inner.truncations(model, inner.candidates(model)) is None


def test_the_exact_reference_compares_one_stage_models_in_closed_form_like_the_engine() -> None:
    from compinterp.faithfulness.exact import exact_compare
    model, other = decaying(True), decaying(True, seed=1)
    fast, slow = Reference(model, "exact").compare(other), exact_compare(model, other)
    assert fast.fvu == pytest.approx(slow.fvu, rel=1e-10) and fast.cosine == pytest.approx(slow.cosine, rel=1e-10)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("ridge", [0.0, 0.05])
def test_cp_gradient_in_closed_form_equals_autograd(dense: bool, ridge: float) -> None:
    gen = torch.Generator().manual_seed(0)
    f = Factors(*(torch.randn(*shape, generator=gen, dtype=F64) for shape in ((9, 5), (9, 5), (3, 9))), None, False)
    U = torch.randn(4, 5, generator=gen, dtype=F64, requires_grad=True)
    W = torch.randn(4, 5, generator=gen, dtype=F64, requires_grad=True)
    aim = Target(f, dense=dense, ridge=ridge)
    if ridge:                                   # the penalised loss, A solved with the ridge (autograd through it)
        K, M = sym_gram(U, W, U, W), f.D @ sym_gram(f.L, f.R, U, W)
        A = torch.linalg.solve(K + aim.ridge * torch.eye(4, dtype=F64), M.T).T
        loss = cp_loss(f, U, W, A) + aim.ridge * (U.square().sum() + W.square().sum() + A.square().sum())
    else:
        loss = cp_loss(f, U, W, best_outputs(f, U, W))
    loss.backward()
    closed, grad, outputs, diagonal = aim.loss(torch.cat([U, W]).detach())
    gU, gW = grad.split(U.shape[0])
    assert closed == pytest.approx(loss.item(), rel=1e-10)
    assert torch.allclose(gU, U.grad, rtol=1e-7, atol=1e-8) and torch.allclose(gW, W.grad, rtol=1e-7, atol=1e-8)
    G = outputs.T @ outputs                     # the preconditioner: G_rr |W_r|^2 for U's rows, G_rr |U_r|^2 for W's
    rows = torch.cat([G.diagonal() * W.detach().square().sum(1), G.diagonal() * U.detach().square().sum(1)])
    assert torch.allclose(diagonal, rows, rtol=1e-12)


def test_the_search_checks_less_and_finds_as_short_a_model() -> None:
    model = decaying(True)
    result = refine(model, 0.99, data="exact", passes=[Eigen(mode="threshold"), LowRank(), Prune()], progress=False)
    assert result.faithfulness >= 0.99 and result.refined_bits < result.original_bits / 2
    assert result.checks < result.evaluated                                    # some scored in closed form
    assert Reference(model, "exact").compare(result.model).faithfulness == pytest.approx(result.faithfulness,
                                                                                         abs=1e-10)


def test_the_eigen_pass_recomputes_its_spectrum_when_weights_change_in_place() -> None:
    model = decaying(False)
    p = Eigen()
    rewrite = p.candidates(model)[0]
    before = p.apply(model, rewrite)(torch.eye(6, dtype=F64))
    with torch.no_grad():
        model.box_params("mlp")["D"].mul_(2)
    after = p.apply(model, rewrite)(torch.eye(6, dtype=F64))
    assert torch.allclose(after, 2 * before)


# ------------------------------------------------------------------------------------ cp in the search

def test_cp_starts_in_closed_form_equal_the_checks_of_the_start_models() -> None:
    """The closed-form score of each CP rank's eigen start (what vouches for a rank without a fit) equals the
    exact check of the eigen-layer that keeps the same components."""
    for bias in (False, True):
        model = decaying(bias)
        reference = Reference(model, "exact")
        p = CP()
        group = p.candidates(model)
        spec, keeps = p.starts(model, group)
        closed = reference.truncated(reference.forms(model), spec.values, spec.vectors, spec.directions, keeps)
        assert len(group) >= 5
        for rewrite, keep, metrics in zip(group, keeps, closed, strict=True):
            assert int(keep.sum()) == min(rewrite.settings["rank"], keep.numel())
            start = layer(model, "mlp", (), p.prepared(model, "mlp").spectrum, keep)
            assert metrics.faithfulness == pytest.approx(reference.compare(start).faithfulness, abs=1e-10)


def test_cp_starts_only_where_the_box_is_the_whole_map() -> None:
    inner = Model(chain(Linear("embed", X, X), Bilinear("mlp", X, Y, hidden=4)), seed=0, dtype=F64)
    assert CP().starts(inner, CP().candidates(inner)) is None


@pytest.mark.parametrize("bias", [False, True])
def test_the_error_a_cp_fit_gives_up_at_bounds_the_checked_error(bias: bool) -> None:
    """The search's ``give_up``: a fit's error ``||B_sym - C_sym||^2`` less its squared corners is at most half
    the exact mean square error of the model (so a fit over the bound cannot keep the bar)."""
    model = decaying(bias)
    reference = Reference(model, "exact")
    own = reference.own
    variance = (form_inner(own, own) - own[0] ** 2).clamp_min(0).sum().item()
    target = Factors.of(model.boxes["mlp"], {k: v.detach() for k, v in model.box_params("mlp").items()})
    aim = Target(target)
    for rank in (1, 2, 4, 6):
        fitted = CP(steps=20).apply(model, CP(steps=20).candidates(model)[-rank])
        f = Factors.of(fitted.boxes["mlp_cp"], {k: v.detach() for k, v in fitted.box_params("mlp_cp").items()})
        error = cp_loss(target, f.L, f.R, f.D, aim.norm).item()
        if bias:
            corners = target.D @ (target.L[:, 0] * target.R[:, 0]) - f.D @ (f.L[:, 0] * f.R[:, 0])
            error -= corners.square().sum().item()
        mse = reference.compare(fitted).fvu * variance
        assert 2 * error <= mse * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("bias", [False, True])
def test_no_cp_fit_comes_under_its_least_error(bias: bool) -> None:
    """``CP.least_errors``: the Eckart-Young bound on the inputs' unfolding is below every fit's error (less the squared
    corners), and grows as the rank falls."""
    model = decaying(bias)
    target = Factors.of(model.boxes["mlp"], {k: v.detach() for k, v in model.box_params("mlp").items()})
    p = CP(steps=30)
    group = p.candidates(model)
    least = p.least_errors(model, group)
    assert least == sorted(least) and least[-1] > 0
    for rewrite, bound in zip(group, least, strict=True):
        fitted = p.apply(model, rewrite)
        f = Factors.of(fitted.boxes["mlp_cp"], {k: v.detach() for k, v in fitted.box_params("mlp_cp").items()})
        error = cp_loss(target, f.L, f.R, f.D).item()
        if bias:
            corners = target.D @ (target.L[:, 0] * target.R[:, 0]) - f.D @ (f.L[:, 0] * f.R[:, 0])
            error -= corners.square().sum().item()
        assert bound <= error * (1 + 1e-9) + 1e-12, rewrite


def test_a_cp_sketch_has_the_shapes_of_the_fit() -> None:
    """``CP.sketch``: the model a fit would make, unfitted, with the same boxes and parameter shapes."""
    model = decaying(True)
    p = CP(steps=5)
    for rewrite in p.candidates(model)[::3]:
        sketch, fitted = p.sketch(model, rewrite), p.apply(model, rewrite)
        assert list(sketch.boxes) == list(fitted.boxes)
        assert {k: v.shape for k, v in sketch.box_params("mlp_cp").items()} == \
            {k: v.shape for k, v in fitted.box_params("mlp_cp").items()}


@pytest.mark.parametrize("case", ["decaying", "random", "random biased"])
def test_a_search_whose_fits_give_up_finds_the_same_model(case: str) -> None:
    """Fits that give up (and the other shortcuts for costly passes: starts that vouch, ranks whose least error is
    past the bar, walks back only where a sketch may pay) change what is checked, not what is found. On the random
    layers the least errors rule out the lowest ranks and a sketch stops the walk back."""

    class Patient(CP):
        gives_up = False
        least_errors = None
        sketch = None

        def starts(self, model: Model, rewrites: list) -> None:                 # no start vouches either
            return None

    if case == "decaying":
        gen = torch.Generator().manual_seed(3)
        model = Model(Bilinear("mlp", Space("x", 8), Space("y", 3), hidden=24), seed=0, dtype=F64)
        p = {k: v.detach().clone() for k, v in model.box_params("mlp").items()}
        p["D"] = p["D"] * 0.85 ** torch.arange(24.0, dtype=F64) * (1 + 0.1 * torch.rand(24, generator=gen, dtype=F64))
        model = Model(model.diagram, {"mlp": p})
    else:
        model = Model(Bilinear("mlp", X, Y, hidden=16, bias=case.endswith("biased")), seed=0, dtype=F64)
    fast = refine(model, 0.99, data="exact", passes=[CP(steps=60)], progress=False)
    slow = refine(model, 0.99, data="exact", passes=[Patient(steps=60)], progress=False)
    assert [str(r) for r in fast.history] == [str(r) for r in slow.history]
    assert fast.refined_bits == slow.refined_bits and fast.faithfulness == slow.faithfulness
    assert any(r.pass_name == "cp" for r in fast.history)
    assert fast.evaluated <= slow.evaluated


# ------------------------------------------------------------------------------------ widths and siblings

@pytest.mark.parametrize("bias", [False, True])
def test_the_width_found_by_interpolation_is_the_narrowest_that_keeps_the_bar(bias: bool) -> None:
    """``_Search.finish`` orders its checks by interpolation from the last width found; whatever that was, and
    under a bound on the bits, the width it finds is the narrowest whose quantised model keeps the bar among those
    under the bound (every width checked here), or none."""
    from tqdm.auto import tqdm

    from compinterp.complexity import quantise
    from compinterp.complexity.parameters import WIDTHS
    from compinterp.refinement import search

    model = decaying(bias)
    reference = Reference(model, "exact")
    scores = {w: reference.compare(quantise(model, w)).faithfulness for w in WIDTHS}
    for bar in (0.9, 0.99, 0.999, 0.99999, 0.9999999):
        for start in WIDTHS:
            for cut in (None, 4, 7):
                state = search._Search(reference, [], bar, 10_000, True, 32, tqdm(disable=True))
                node = search._Node(state.measure(model, ()))
                node.own.faithfulness = 1.0
                bound = math.inf if cut is None else state.at_width(model, cut).model + 1e-9
                state.width = start
                state.finish(node, bound)
                allowed = [w for w in WIDTHS if state.at_width(model, w).model < bound and scores[w] >= bar]
                found = None if node.quantised is None else node.quantised.history[-1].settings["bits"]
                assert found == (min(allowed) if allowed else None), (bar, start, cut)


@pytest.mark.parametrize("beam", [1, 2, 3])
def test_the_siblings_bound_keeps_the_children_a_beam_keeps(beam: int) -> None:
    """Bounding each group by its siblings (``_Search.expand``: the ``beam``-th shortest new child so far) leaves
    the ``beam`` shortest children, and their bits, as bounding it by the parent alone; and a whole search finds
    the same model, history and bits, with no more models evaluated."""
    from tqdm.auto import tqdm

    from compinterp.refinement import search

    model = decaying(True)
    passes = lambda: [Eigen(mode="threshold"), LowRank(), Prune(), CP(steps=30)]  # noqa: E731

    def kept(bounded: bool) -> list[tuple[tuple[str, ...], float]]:
        state = search._Search(Reference(model, "exact"), passes(), 0.99, 10_000, True, 32, tqdm(disable=True))
        root = search._Node(state.measure(model, ()))
        root.own.faithfulness = 1.0
        state.finish(root)
        if bounded:
            children = state.expand(root, beam, set())
        else:
            children = [child for p in state.passes for group in _groups(p.candidates(model))
                        if (child := state.best_in_group(root, p, group, root.score)) is not None]
        return sorted((child.key, child.score) for child in children if child.score < root.score)

    top = lambda pairs: sorted(pairs, key=lambda pair: pair[1])[:beam]  # noqa: E731
    plain = kept(False)
    assert len(plain) >= 3
    assert top(kept(True)) == top(plain)


@pytest.mark.parametrize("beam", [1, 2])
def test_the_siblings_bound_changes_nothing_the_search_finds(beam: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole search with and without the siblings' bound: the same model, history and bits, with no more
    models evaluated."""
    from compinterp.refinement import search

    model = decaying(True)
    passes = lambda: [Eigen(mode="threshold"), LowRank(), Prune(), CP(steps=30)]  # noqa: E731
    bounded = refine(model, 0.99, data="exact", passes=passes(), beam=beam, progress=False)

    def parent_only(self: search._Search, parent: search._Node, beam: int = 1, seen: object = None) -> list:
        return [child for p in self.passes for group in _groups(p.candidates(parent.own.model))
                if (child := self.best_in_group(parent, p, group, parent.score)) is not None]

    monkeypatch.setattr(search._Search, "expand", parent_only)
    plain = refine(model, 0.99, data="exact", passes=passes(), beam=beam, progress=False)
    assert [str(r) for r in bounded.history] == [str(r) for r in plain.history]
    assert bounded.refined_bits == plain.refined_bits and bounded.faithfulness == plain.faithfulness
    assert bounded.evaluated <= plain.evaluated


def test_interpolated_widths_find_what_bisection_finds_on_an_imported_hf_gpt2(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a model nobody here wrote (a HuggingFace GPT-2 from a small config, scored on data, not exactly), a
    search whose widths are interpolated finds the same history and bits as one that bisects them, checking no
    more models."""
    from compinterp.refinement import search

    model, data = imported_gpt2(layers=1, width=32, vocab=50, batch=32, length=12)
    run = lambda: refine(model, 0.9, data=data, passes=[LowRank(), Prune()], budget=200, progress=False)  # noqa: E731
    interpolated = run()
    monkeypatch.setattr(search._Search, "interpolate", lambda self, own, found, low, ceiling: (low + ceiling) // 2)
    bisected = run()
    assert interpolated.history[-1].pass_name == "quantise" and len(interpolated.history) >= 2
    assert [str(r) for r in interpolated.history] == [str(r) for r in bisected.history]
    assert interpolated.refined_bits == bisected.refined_bits
    assert interpolated.checks <= bisected.checks < 200
