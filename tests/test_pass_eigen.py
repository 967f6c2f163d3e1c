"""The eigen pass against tensors the tests build themselves: the Frobenius error identity, the exact
Gaussian error in closed form, monotone faithfulness where the maths says so, and folding."""

from __future__ import annotations


import pytest
import torch

import compinterp as ci
from compinterp.faithfulness.exact import frobenius_cosine
from compinterp.model import Model
from compinterp.refinement.passes import Eigen, eigen
from compinterp.syntax import Bilinear, Linear, Space, Unembed, chain, residual

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def sym_tensor(L: torch.Tensor, R: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``B_sym[c] = sym(sum_h D[c, h] L_h R_h^T)``, by hand."""
    B = torch.zeros(D.shape[0], L.shape[1], L.shape[1], dtype=F64)
    for h in range(L.shape[0]):
        B += D[:, h, None, None] * torch.outer(L[h], R[h])[None]
    return (B + B.transpose(1, 2)) / 2


def tensor_of(model: Model, name: str) -> torch.Tensor:
    """The padded symmetrised interaction tensor of a Bilinear box, from its raw parameters."""
    p = {k: v.detach().to(F64) for k, v in model.box_params(name).items()}
    L, R = p["L"], p["R"]
    if "l" in p:
        L, R = torch.cat([p["l"][:, None], L], 1), torch.cat([p["r"][:, None], R], 1)
    return sym_tensor(L, R, p["D"])


def new_box(model: Model) -> str:
    return next(name for name in model.boxes if name.endswith("_eig"))


def mlp(bias: bool, n: int = 6, o: int = 4, hidden: int = 5, seed: int = 0) -> Model:
    return Model(Bilinear("mlp", Space("x", n), Space("y", o), hidden=hidden, bias=bias), seed=seed, dtype=F64)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_per_output_error_is_the_dropped_eigenvalues(bias: bool, k: int) -> None:
    model = mlp(bias)
    B = tensor_of(model, "mlp")
    refined = eigen(model, "mlp", k=k)
    lam = torch.linalg.eigvalsh(B).abs().sort(dim=1, descending=True).values
    dropped = lam[:, k:].square().sum().sqrt()
    error = (B - tensor_of(refined, new_box(refined))).norm()
    assert torch.allclose(error, dropped, atol=1e-12), (error, dropped)
    assert refined.boxes[new_box(refined)].data["hidden"] == 4 * k
    d = model.box_params("mlp").get("d")
    if d is not None:
        assert torch.equal(refined.box_params(new_box(refined))["d"], d.detach())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(("k", "directions"), [(1, 4), (3, 2), (2, 1), (6, 3)])
def test_per_direction_error_is_the_dropped_eigenvalues(bias: bool, k: int, directions: int) -> None:
    model = mlp(bias, seed=1)
    B = tensor_of(model, "mlp")
    U, S, _ = torch.linalg.svd(B.flatten(1), full_matrices=False)
    Q = torch.einsum("cg,cij->gij", U, B)
    lam = torch.linalg.eigvalsh(Q).abs().sort(dim=1, descending=True).values
    kept = lam[:directions, :k].square().sum()
    dropped = (lam.square().sum() - kept).sqrt()
    refined = eigen(model, "mlp", k=k, mode="per_direction", directions=directions)
    error = (B - tensor_of(refined, new_box(refined))).norm()
    assert torch.allclose(error, dropped, atol=1e-10), (error, dropped)
    assert refined.boxes[new_box(refined)].data["hidden"] == directions * k


def test_threshold_keeps_every_component_above_it_and_its_error_is_the_rest() -> None:
    model = mlp(True, seed=2)
    B = tensor_of(model, "mlp")
    U, _, _ = torch.linalg.svd(B.flatten(1), full_matrices=False)
    lam = torch.linalg.eigvalsh(torch.einsum("cg,cij->gij", U, B)).flatten()
    threshold = lam.abs().median().item()
    refined = eigen(model, "mlp", mode="threshold", threshold=threshold)
    kept = lam.abs() >= threshold
    assert refined.boxes[new_box(refined)].data["hidden"] == int(kept.sum())
    error = (B - tensor_of(refined, new_box(refined))).norm()
    assert torch.allclose(error, lam[~kept].square().sum().sqrt(), atol=1e-10)


def test_exact_check_matches_the_gaussian_closed_form() -> None:
    """For ``y_c = x^T B_c x``, ``x ~ N(0, I)``: dropping ``A_c = sum lambda v v^T`` costs
    ``E (x^T A_c x)^2 = (tr A_c)^2 + 2 ||A_c||^2``, and ``Var y_c = 2 ||B_c||^2``."""
    model = mlp(False, n=5, o=3, hidden=6, seed=3)
    B = tensor_of(model, "mlp")
    for k in (4, 2, 1):
        refined = eigen(model, "mlp", k=k)
        lam = torch.linalg.eigvalsh(B)
        order = lam.abs().argsort(dim=1, descending=True)
        dropped = lam.gather(1, order)[:, k:]
        mse = (dropped.sum(1).square() + 2 * dropped.square().sum(1)).sum()
        fvu = mse / (2 * B.square().sum())
        report = ci.check(model, refined, "exact")
        assert report.exact
        assert report.end_to_end.fvu == pytest.approx(fvu.item(), rel=1e-9, abs=1e-12)


def test_faithfulness_falls_monotonically_as_components_go() -> None:
    """The Frobenius cosine falls with ``k`` for any box; the Gaussian faithfulness too when every
    ``B_c`` is positive semi-definite (all dropped eigenvalues of one sign: no cancellation)."""
    general = mlp(True, n=6, o=3, hidden=8, seed=4)
    cosines = [frobenius_cosine(general, eigen(general, "mlp", k=k)) for k in (7, 6, 4, 3, 2, 1)]
    assert all(a >= b - 1e-12 for a, b in zip(cosines, cosines[1:])), cosines
    p = {k: v.detach() for k, v in general.box_params("mlp").items()}
    psd = Model(Bilinear("mlp", Space("x", 6), Space("y", 3), hidden=8),
                {"mlp": {"L": p["L"], "R": p["L"], "D": p["D"].abs()}})
    faith = [ci.check(psd, eigen(psd, "mlp", k=k), "exact").end_to_end.faithfulness for k in (6, 5, 4, 3, 2, 1)]
    assert faith[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a >= b - 1e-9 for a, b in zip(faith, faith[1:])), faith
    assert faith[-1] < faith[0]


def digits_like(seed: int = 0) -> Model:
    pixels, resid, digits = Space("pixels", 7), Space("resid", 5), Space("digits", 3)
    return Model(chain(Linear("embed", pixels, resid), residual(Bilinear("mlp", resid, resid, hidden=4, bias=True)),
                       Unembed("unembed", resid, digits, bias=True)), seed=seed, dtype=F64)


def test_folding_the_embedding_and_unembedding_across_the_residual_stream() -> None:
    model = digits_like()
    p = {k: v.detach() for k, v in model.box_params("mlp").items()}
    E, U = model.box_params("embed")["W"].detach(), model.box_params("unembed")["W"].detach()
    L = torch.cat([p["l"][:, None], p["L"] @ E], 1)
    R = torch.cat([p["r"][:, None], p["R"] @ E], 1)
    B = sym_tensor(L, R, U @ p["D"])                         # pixels (padded) -> digits
    Us, _, _ = torch.linalg.svd(B.flatten(1), full_matrices=False)
    lam = torch.linalg.eigvalsh(torch.einsum("cg,cij->gij", Us, B)).abs().sort(dim=1, descending=True).values
    refined = eigen(model, "mlp", k=2, mode="per_direction", fold=("embed", "unembed"))
    name = new_box(refined)
    assert [box.kind for box in refined.diagram.boxes] == ["Copy", "Bilinear", "Unembed", "Add"]
    assert (str(refined.boxes[name].dom), str(refined.boxes[name].cod)) == ("pixels:7", "digits:3")
    error = (B - tensor_of(refined, name)).norm()
    assert torch.allclose(error, lam[:, 2:].square().sum().sqrt(), atol=1e-10)
    skip = next(b for b in refined.boxes.values() if b.kind == "Unembed")
    assert torch.allclose(refined.box_params(skip.name)["W"].detach(), U @ E)
    full = eigen(model, "mlp", k=8, mode="per_direction", fold=("embed", "unembed"))
    inputs = torch.randn(10, 7, dtype=F64)
    assert torch.allclose(full(inputs), model(inputs), atol=1e-10)


def test_auto_fold_candidates_fold_both_neighbours() -> None:
    model = digits_like()
    rewrites = Eigen(mode="per_direction", fold="auto").candidates(model)
    assert rewrites and all(r.settings["fold"] == ("embed", "unembed") for r in rewrites)
    assert [r.settings["k"] for r in rewrites] == [6, 4, 3, 2, 1]
    assert Eigen(mode="per_direction", fold="auto").lossless(model)[0].settings["k"] == 8
