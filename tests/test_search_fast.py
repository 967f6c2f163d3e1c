"""The fast search: closed-form scores of eigen truncations equal the exact checks they replace, in every
mode, with and without biases, on the original and on a parent already rewritten; CP's closed-form
gradient equals autograd's; the search that skips what cannot beat its parent finds the same model."""

from __future__ import annotations

import pytest
import torch

from compinterp.complexity import Reference
from compinterp.model import Model
from compinterp.refinement.passes import Eigen, LowRank, Prune
from compinterp.refinement.passes._common import Factors
from compinterp.refinement.passes.cp import Target, best_outputs, cp_loss
from compinterp.refinement.search import _groups, refine
from compinterp.syntax import Bilinear, Linear, Space, Unembed, chain, residual

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
def test_cp_gradient_in_closed_form_equals_autograd(dense: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    f = Factors(*(torch.randn(*shape, generator=gen, dtype=F64) for shape in ((9, 5), (9, 5), (3, 9))), None, False)
    U = torch.randn(4, 5, generator=gen, dtype=F64, requires_grad=True)
    W = torch.randn(4, 5, generator=gen, dtype=F64, requires_grad=True)
    loss = cp_loss(f, U, W, best_outputs(f, U, W))
    loss.backward()
    closed, gU, gW, _ = Target(f, dense=dense).loss(U.detach(), W.detach())
    assert closed.item() == pytest.approx(loss.item(), rel=1e-10)
    assert torch.allclose(gU, U.grad, rtol=1e-7, atol=1e-8) and torch.allclose(gW, W.grad, rtol=1e-7, atol=1e-8)


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
