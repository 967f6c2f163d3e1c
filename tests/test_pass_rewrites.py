"""lowrank, odt, cp, prune and fuse against independent computations: closed forms (Eckart-Young),
materialised tensors, hand-written torch, and monotone exact faithfulness where the maths says so."""

from __future__ import annotations


import pytest
import torch

import compinterp as ci
from compinterp.model import Model
from compinterp.refinement.passes import CP, ODT, Fuse, LowRank, Prune, cp, eigen, fuse, lowrank, odt, prune, scores
from compinterp.refinement.passes._common import Factors
from compinterp.refinement.passes.cp import cp_loss
from compinterp.refinement.passes.graph import Net
from compinterp.syntax import (Add, Attention, Bilinear, Copy, Embed, Gated, Id, Linear, Space, Swap, Unembed, chain,
                               residual)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def sym_tensor(model: Model, name: str) -> torch.Tensor:
    """The padded symmetrised interaction tensor of a Bilinear box, by hand."""
    p = {k: v.detach().to(F64) for k, v in model.box_params(name).items()}
    L, R = p["L"], p["R"]
    if "l" in p:
        L, R = torch.cat([p["l"][:, None], L], 1), torch.cat([p["r"][:, None], R], 1)
    B = torch.einsum("ch,hi,hj->cij", p["D"], L, R)
    return (B + B.transpose(1, 2)) / 2


# ------------------------------------------------------------------------------------ lowrank

def test_lowrank_exact_fvu_is_the_dropped_singular_values() -> None:
    """Eckart-Young: for x ~ N(0, I), ``E||(W - W_r) x||^2 / E||W x - E W x||^2 = sum_{i>r} s_i^2 / sum s_i^2``."""
    model = Model(Linear("f", Space("x", 7), Space("y", 5), bias=True), seed=0, dtype=F64)
    s2 = torch.linalg.svdvals(model.box_params("f")["W"].detach()).square()
    fvus = []
    for r in (5, 4, 3, 2, 1):
        refined = lowrank(model, "f", r)
        fvu = ci.check(model, refined, "exact").end_to_end.fvu
        assert fvu == pytest.approx((s2[r:].sum() / s2.sum()).item(), abs=1e-12)
        assert [str(b.cod) for b in refined.diagram.boxes] == [f"f_rank:{r}", "y:5"]
        fvus.append(fvu)
    assert fvus == sorted(fvus) and fvus[0] == pytest.approx(0, abs=1e-12)


def test_lowrank_candidates_store_fewer_numbers_and_lossless_is_the_rank() -> None:
    x, y = Space("x", 8), Space("y", 8)
    w = torch.randn(8, 3, dtype=F64) @ torch.randn(3, 8, dtype=F64)
    model = Model(Linear("f", x, y), {"f": {"W": w}})
    assert [r.settings["rank"] for r in LowRank().candidates(model)] == [3, 2, 1]
    (exact,) = LowRank().lossless(model)
    assert exact.settings["rank"] == 3
    inputs = torch.randn(4, 8, dtype=F64)
    assert torch.allclose(LowRank().apply(model, exact)(inputs), model(inputs), atol=1e-12)


def test_lowrank_of_an_embedding_reads_token_ids() -> None:
    model = Model(Embed("emb", Space("tok", 9), Space("x", 6)), seed=0, dtype=F64)
    refined = lowrank(model, "emb", 6)
    ids = torch.arange(9)
    assert [b.kind for b in refined.diagram.boxes] == ["Embed", "Linear"]
    assert torch.allclose(refined(ids), model(ids), atol=1e-12)


# ------------------------------------------------------------------------------------ odt

def test_odt_on_a_linear_chain_is_the_optimal_truncation_of_the_product() -> None:
    x, z, y = Space("x", 6), Space("z", 5), Space("y", 4)
    model = Model(chain(Linear("a", x, z), Linear("b", z, y)), seed=1, dtype=F64)
    W = model.box_params("b")["W"].detach() @ model.box_params("a")["W"].detach()
    s2 = torch.linalg.svdvals(W).square()
    fvus = []
    for k in (4, 3, 2, 1):
        refined = odt(model, ["a", "b"], k)
        assert str(refined.diagram.boxes[0].cod) == f"z:{k}"
        fvu = ci.check(model, refined, "exact").end_to_end.fvu
        assert fvu == pytest.approx((s2[k:].sum() / s2.sum()).item(), abs=1e-12)
        fvus.append(fvu)
    assert fvus == sorted(fvus)


def test_odt_on_a_bilinear_chain_is_exact_at_full_rank_and_narrows_the_wires() -> None:
    x, z, w, y = Space("x", 4), Space("z", 9), Space("w", 7), Space("y", 3)
    model = Model(chain(Bilinear("a", x, z, hidden=3, bias=True), Bilinear("b", z, w, hidden=5),
                        Bilinear("c", w, y, hidden=4)), seed=2, dtype=F64)
    (exact,) = ODT().lossless(model)
    assert exact.settings == {"chain": ("a", "b", "c"), "k": 5}
    refined = ODT().apply(model, exact)
    assert [str(b.cod) for b in refined.diagram.boxes] == ["z:4", "w:5", "y:3"]
    inputs = torch.randn(6, 4, dtype=F64)
    assert torch.allclose(refined(inputs), model(inputs), atol=1e-10)
    ks = [r.settings["k"] for r in ODT().candidates(model)]
    assert ks == [5, 4, 3, 2, 1]
    assert [str(b.cod) for b in odt(model, ["a", "b", "c"], 2).diagram.boxes] == ["z:2", "w:2", "y:3"]


def test_odt_finds_no_chain_in_a_residual_stream() -> None:
    x = Space("x", 4)
    model = Model(chain(residual(Bilinear("a", x, x, hidden=3)), residual(Bilinear("b", x, x, hidden=3))), seed=0)
    assert ODT().candidates(model) == [] and ODT().lossless(model) == []


# ------------------------------------------------------------------------------------ cp

def test_cp_loss_from_gram_matrices_equals_the_materialised_error() -> None:
    model = Model(Bilinear("mlp", Space("x", 5), Space("y", 3), hidden=6, bias=True), seed=0, dtype=F64)
    refined = cp(model, "mlp", rank=3, steps=30)
    B, C = sym_tensor(model, "mlp"), sym_tensor(refined, "mlp_cp")
    f = Factors.of(refined.boxes["mlp_cp"], {k: v.detach() for k, v in refined.box_params("mlp_cp").items()})
    target = Factors.of(model.boxes["mlp"], {k: v.detach() for k, v in model.box_params("mlp").items()})
    assert cp_loss(target, f.L, f.R, f.D).item() == pytest.approx((B - C).square().sum().item(), rel=1e-9)


def test_cp_is_deterministic_for_a_seed_and_no_worse_than_eigen_at_equal_width() -> None:
    model = Model(Bilinear("mlp", Space("x", 6), Space("y", 4), hidden=10), seed=3, dtype=F64)
    B = sym_tensor(model, "mlp")
    for rank in (6, 3):
        a, b = cp(model, "mlp", rank, steps=40, seed=1), cp(model, "mlp", rank, steps=40, seed=1)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
        U, _, _ = torch.linalg.svd(B.flatten(1), full_matrices=False)
        lam = torch.linalg.eigvalsh(torch.einsum("cg,cij->gij", U, B)).abs().flatten().sort(descending=True).values
        eigen_error = lam[rank:].square().sum().sqrt()               # the best ``rank`` symmetric components
        cp_error = (B - sym_tensor(a, "mlp_cp")).norm()
        assert cp_error <= eigen_error + 1e-9, (rank, cp_error, eigen_error)
        thresholded = eigen(model, "mlp", mode="threshold", threshold=lam[rank - 1].item() * (1 - 1e-9))
        assert thresholded.num_params() == a.num_params()


def test_cp_at_full_rank_is_the_box_itself() -> None:
    model = Model(Bilinear("mlp", Space("x", 4), Space("y", 2), hidden=3, bias=True), seed=0)
    (exact,) = CP().lossless(model)
    assert exact.settings["rank"] == 3
    inputs = torch.randn(5, 4)
    assert torch.equal(CP().apply(model, exact)(inputs), model(inputs))


def test_cp_shows_a_progress_bar_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    model = Model(Bilinear("mlp", Space("x", 4), Space("y", 2), hidden=4), seed=0, dtype=F64)
    cp(model, "mlp", rank=2, steps=10, progress=True)
    assert "cp mlp rank 2" in capsys.readouterr().err
    cp(model, "mlp", rank=2, steps=10)
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------------------------ prune

def test_bilinear_scores_are_the_exact_change_of_removing_one_unit() -> None:
    model = Model(Bilinear("mlp", Space("x", 5), Space("y", 3), hidden=6, bias=True), seed=0, dtype=F64)
    B = sym_tensor(model, "mlp")
    p = {k: v.detach() for k, v in model.box_params("mlp").items()}
    for h, score in enumerate(scores(model, "mlp")):
        D = p["D"].clone()
        D[:, h] = 0
        without = Model(model.diagram, {"mlp": p | {"D": D}})
        assert score.item() == pytest.approx((B - sym_tensor(without, "mlp")).norm().item(), rel=1e-10)


def test_prune_keeps_the_best_units_like_zeroing_the_rest_by_hand() -> None:
    model = Model(Bilinear("mlp", Space("x", 5), Space("y", 3), hidden=8, bias=True), seed=1, dtype=F64)
    p = {k: v.detach() for k, v in model.box_params("mlp").items()}
    best = scores(model, "mlp").argsort(descending=True)[:3]
    D = torch.zeros_like(p["D"])
    D[:, best] = p["D"][:, best]
    by_hand = Model(model.diagram, {"mlp": p | {"D": D}})
    refined = prune(model, "mlp", keep=3)
    inputs = torch.randn(7, 5, dtype=F64)
    assert refined.boxes["mlp_pruned"].data["hidden"] == 3
    assert torch.allclose(refined(inputs), by_hand(inputs), atol=1e-12)


def test_an_emptied_residual_branch_becomes_the_identity() -> None:
    x, y = Space("x", 4), Space("y", 2)
    model = Model(chain(Linear("embed", x, x), residual(Bilinear("mlp", x, x, hidden=5)), Unembed("out", x, y)),
                  seed=0, dtype=F64)
    refined = prune(model, "mlp", keep=0)
    assert [b.name for b in refined.diagram.boxes] == ["embed", "out"]
    inputs = torch.randn(3, 4, dtype=F64)
    by_hand = inputs @ model.box_params("embed")["W"].detach().T @ model.box_params("out")["W"].detach().T
    assert torch.allclose(refined(inputs), by_hand)
    assert Prune().candidates(model)[-1].settings == {"keep": 0}


def test_pruning_removes_whatever_no_longer_reaches_an_output() -> None:
    x = Space("x", 3)
    diagram = chain(Copy(x, 3), Bilinear("mlp", x, x, hidden=4) @ Id(x) @ Linear("dead", x, x),
                    Add(x) @ Copy(x, 0))
    model = Model(diagram, seed=0, dtype=F64)
    refined = prune(model, "mlp", keep=2)
    assert [b.name for b in refined.diagram.boxes] == ["copy", "mlp_pruned", "add"]
    assert refined.diagram.boxes[0].data["n"] == 2


def test_attention_heads_go_like_zeroing_their_output_columns() -> None:
    x = Space("x", 8)
    model = Model(residual(Attention("attn", x, heads=4, bias=True)), seed=0, dtype=F64)
    with torch.no_grad():
        for role in ("bv", "bq"):
            model.box_params("attn")[role].normal_()
    p = {k: v.detach() for k, v in model.box_params("attn").items()}
    s = scores(model, "attn")
    for h in range(4):
        head = slice(2 * h, 2 * h + 2)
        ov = p["Wo"][:, head] @ torch.cat([p["Wv"][head], p["bv"][head, None]], 1)
        assert s[h].item() == pytest.approx(ov.norm().item(), rel=1e-12)
    best = s.argsort(descending=True)[:2].sort().values
    Wo = torch.zeros_like(p["Wo"])
    for h in best.tolist():
        Wo[:, 2 * h:2 * h + 2] = p["Wo"][:, 2 * h:2 * h + 2]
    by_hand = Model(model.diagram, {"attn": p | {"Wo": Wo}})
    refined = prune(model, "attn", keep=2)
    inputs = torch.randn(2, 5, 8, dtype=F64)
    assert refined.boxes["attn_pruned"].data["heads"] == 2
    assert torch.allclose(refined(inputs), by_hand(inputs), atol=1e-12)


def test_dead_units_are_pruned_losslessly() -> None:
    x, y = Space("x", 4), Space("y", 3)
    model = Model(Gated("mlp", x, y, hidden=6), seed=0, dtype=F64)
    with torch.no_grad():
        model.box_params("mlp")["D"][:, [1, 4]] = 0
    (exact,) = Prune().lossless(model)
    assert exact.settings == {"keep": 4}
    inputs = torch.randn(5, 4, dtype=F64)
    assert torch.allclose(Prune().apply(model, exact)(inputs), model(inputs), atol=1e-12)


# ------------------------------------------------------------------------------------ fuse

def test_fuse_merges_adjacent_linear_maps_and_folds_into_a_bilinear_box() -> None:
    a, b, c, y = Space("a", 3), Space("b", 6), Space("c", 3), Space("y", 2)
    model = Model(chain(Linear("f", a, b, bias=True), Linear("g", b, c, bias=True),
                        Gated("mlp", c, c, hidden=4, activation="gelu"), Unembed("out", c, y, bias=True)),
                  seed=0, dtype=F64)
    fused = fuse(model)
    assert [b.kind for b in fused.diagram.boxes] == ["Gated"]
    assert fused.num_params() < model.num_params()
    inputs = torch.randn(6, 3, dtype=F64)
    assert torch.allclose(fused(inputs), model(inputs), atol=1e-12)


def test_fuse_keeps_a_low_rank_pair_that_would_store_more_numbers() -> None:
    x, r = Space("x", 8), Space("r", 2)
    model = Model(chain(Linear("down", x, r), Linear("up", r, x)), seed=0)
    assert Fuse().candidates(model) == []
    assert [b.name for b in fuse(model).diagram.boxes] == ["down", "up"]


def test_fuse_folds_an_embedding_into_the_next_linear_map() -> None:
    x = Space("x", 8)
    model = Model(chain(Embed("emb", Space("tok", 5), x), Linear("f", x, Space("y", 3), bias=True)), seed=0, dtype=F64)
    fused = fuse(model)
    assert [b.kind for b in fused.diagram.boxes] == ["Embed"]
    ids = torch.tensor([0, 3, 4, 3])
    assert torch.allclose(fused(ids), model(ids), atol=1e-12)


def test_fuse_distributes_over_a_residual_stream_when_it_pays() -> None:
    pixels, resid, digits = Space("pixels", 12), Space("resid", 12), Space("digits", 4)
    model = Model(chain(Linear("embed", pixels, resid), residual(Bilinear("mlp", resid, resid, hidden=12)),
                        Unembed("unembed", resid, digits, bias=True)), seed=0, dtype=F64)
    fused = fuse(model)
    assert [b.kind for b in fused.diagram.boxes] == ["Copy", "Bilinear", "Unembed", "Add"]
    assert fused.num_params() < model.num_params()
    inputs = torch.randn(9, 12, dtype=F64)
    assert torch.allclose(fused(inputs), model(inputs), atol=1e-12)
    assert ci.check(model, fused, "exact").end_to_end.faithfulness == pytest.approx(1.0, abs=1e-9)
    narrow = Model(chain(Linear("embed", Space("pixels", 12), Space("resid", 3)),
                         residual(Bilinear("mlp", Space("resid", 3), Space("resid", 3), hidden=12)),
                         Unembed("unembed", Space("resid", 3), digits)), seed=0, dtype=F64)
    assert fuse(narrow).num_params() <= narrow.num_params()


def test_the_graph_lays_out_swapped_and_parallel_wires_again() -> None:
    """A diagram with swaps and parallel boxes, read into the graph and laid out again, computes the same."""
    x, z = Space("x", 3), Space("z", 2)
    diagram = chain(Copy(x, 3), Linear("f", x, z) @ Id(x) @ Linear("g", x, z), Swap(z, x) @ Id(z),
                    Id(x) @ Add(z), Bilinear("h", x, z, hidden=3) @ Id(z), Add(z))
    model = Model(diagram, seed=0, dtype=F64)
    net = Net(model.diagram)
    assert [n.box.kind for n in net.nodes] == ["Copy", "Linear", "Linear", "Add", "Bilinear", "Add"]
    again = Model(net.diagram(), {name: model.box_params(name) for name in model.params})
    inputs = torch.randn(4, 3, dtype=F64)
    assert torch.allclose(again(inputs), model(inputs))


def test_a_cp_fit_gives_ordinary_parameters_that_train() -> None:
    """The fit's steps run in inference mode; the refit box's parameters are ordinary tensors, and a loss on the
    refined model back-propagates to every one of them."""
    model = Model(Bilinear("mlp", Space("x", 6), Space("y", 3), hidden=8, bias=True), seed=0)
    refined = cp(model, "mlp", rank=3, steps=20)
    assert not any(p.is_inference() for p in refined.parameters())
    refined(torch.randn(4, 6)).square().sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in refined.parameters())
