"""Exact, data-free comparison of polynomial diagrams.

Every exact number is checked against an independent computation: Frobenius products
against the materialised, symmetrised coefficient tensors; Gaussian moments against
Gauss-Hermite quadrature of the torch forward pass (exact for polynomials of the
degrees used) and against Monte Carlo at 2e5 samples within 5 standard errors.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from compinterp.errors import InputError
from compinterp.faithfulness.exact import (ExactError, ExactResult, NotPolynomialError, exact_compare, fit_gaussian,
                                           frobenius_cosine, frobenius_inner, frobenius_norm, gaussian_inner,
                                           gaussian_mean, why_not_polynomial)
from compinterp.model import Model
from compinterp.semantics.tensor import tensor_semantics
from compinterp.syntax import Add, Bilinear, Copy, Embed, Id, Linear, Mul, Norm, Space, Unembed, residual

F64 = torch.float64
X, Y, T = Space("x", 3), Space("y", 2), Space("tok", 5)


def one_layer(seed: int, hidden: int = 4, bias: bool = True) -> Model:
    return Model(Bilinear("mlp", X, Y, hidden=hidden, bias=bias), seed=seed).double()


def two_layers(seed: int, width: Space = X) -> Model:
    """Two stacked residual bilinear layers with biases, read out by an unembedding."""
    return Model(residual(Bilinear("b1", width, width, hidden=4, bias=True))
                 >> residual(Bilinear("b2", width, width, hidden=3, bias=True))
                 >> Unembed("u", width, Y, bias=True), seed=seed).double()


def embedded(seed: int) -> Model:
    """Embed -> two residual bilinear layers -> Unembed, on token ids."""
    return Model(Embed("emb", T, X) >> residual(Bilinear("b1", X, X, hidden=4, bias=True))
                 >> residual(Bilinear("b2", X, X, hidden=3, bias=True)) >> Unembed("u", X, Y, bias=True),
                 seed=seed).double()


def perturbed(model: Model, scale: float, seed: int) -> Model:
    """The same diagram with every parameter moved by ``scale`` times N(0, 1) noise."""
    gen = torch.Generator().manual_seed(seed)
    params = {name: {role: p.detach() + scale * torch.randn(p.shape, generator=gen, dtype=F64)
                     for role, p in model.box_params(name).items()} for name in model.params}
    return Model(model.diagram, params).double()


def quadrature(fn, n: int, mean: torch.Tensor | None = None, root: torch.Tensor | None = None,
               points: int = 5) -> torch.Tensor:
    """``E fn(x)`` for ``x = mean + root z``, ``z ~ N(0, I_n)``, by tensor-product Gauss-Hermite quadrature
    (exact for polynomials of degree < 2 * points in each coordinate)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)
    z = torch.cartesian_prod(*[torch.tensor(nodes)] * n).reshape(-1, n)
    w = torch.cartesian_prod(*[torch.tensor(weights / weights.sum())] * n).reshape(-1, n).prod(1)
    x = z if root is None else z @ root.T
    x = x if mean is None else x + mean
    with torch.no_grad():
        return (fn(x) * w[:, None]).sum(0)


def symmetrised(t: torch.Tensor) -> torch.Tensor:
    """The coefficient tensor averaged over all orders of its input axes."""
    k = t.dim() - 1
    perms = list(itertools.permutations(range(1, k + 1)))
    return sum(t.permute(0, *p) for p in perms) / len(perms)


def brute_frobenius(f: Model, g: Model) -> torch.Tensor:
    """``<sym F_c, sym G_c>`` from the dense tensors, the shallower lifted to the common degree."""
    a, b = tensor_semantics(f), tensor_semantics(g)
    depth = max(a.depth, b.depth)
    A, B = symmetrised(a.lift(depth).tensor()), symmetrised(b.lift(depth).tensor())
    return (A * B).flatten(1).sum(1)


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-9) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


# ---------------------------------------------------------------- Frobenius, against dense tensors

@pytest.mark.parametrize("make", [one_layer, two_layers, embedded])
def test_frobenius_equals_dense_symmetrised_tensors(make) -> None:
    f, g = make(0), make(1)
    for a, b in ((f, g), (f, f), (g, g)):
        close(frobenius_inner(a, b), brute_frobenius(a, b), rtol=1e-10)


def test_frobenius_of_different_depths_lifts_the_shallower() -> None:
    f, g = two_layers(0), Model(Unembed("u", X, Y, bias=True), seed=1).double()
    close(frobenius_inner(f, g), brute_frobenius(f, g), rtol=1e-10)


def test_frobenius_closed_form_of_one_layer() -> None:
    """DESIGN §2: <A, B>_F = sum_{h,h'} (D_A^T D_B) * 1/2 [(L_A L_B^T)(R_A R_B^T) + (L_A R_B^T)(R_A L_B^T)]."""
    f, g = one_layer(0, bias=False), one_layer(1, hidden=6, bias=False)
    p, q = f.box_params("mlp"), g.box_params("mlp")
    half = ((p["L"] @ q["L"].T) * (p["R"] @ q["R"].T) + (p["L"] @ q["R"].T) * (p["R"] @ q["L"].T)) / 2
    want = torch.einsum("ch,ck,hk->c", p["D"], q["D"], half).detach()
    close(frobenius_inner(f, g), want, rtol=1e-12)
    assert frobenius_norm(f) == pytest.approx(math.sqrt(brute_frobenius(f, f).sum().item()), rel=1e-12)


# ---------------------------------------------------------------- Gaussian moments, against quadrature

def gaussian_truth(f: Model, g: Model, mean=None, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    n = sum(f.dom.dims)
    return quadrature(lambda x: f(x) * g(x), n, mean, root), quadrature(f, n, mean, root)


@pytest.mark.parametrize("make", [one_layer, two_layers])
def test_gaussian_moments_equal_quadrature(make) -> None:
    f, g = make(0), make(1)
    fg, mf = gaussian_truth(f, g)
    close(gaussian_inner(f, g), fg)
    close(gaussian_inner(f, f), gaussian_truth(f, f)[0])
    close(gaussian_mean(f), mf)


@pytest.mark.parametrize("make", [one_layer, two_layers])
def test_gaussian_moments_with_mean_and_covariance(make) -> None:
    f, g = make(2), make(3)
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(3, generator=gen, dtype=F64)
    root = torch.randn(3, 3, generator=gen, dtype=F64)
    cov = root @ root.T
    fg, mf = gaussian_truth(f, g, mean, root)
    close(gaussian_inner(f, g, mean=mean, cov=cov), fg)
    close(gaussian_mean(f, mean=mean, cov=cov), mf)
    variances = torch.tensor([0.5, 2.0, 1.5], dtype=F64)
    close(gaussian_inner(f, g, cov=variances), gaussian_truth(f, g, None, variances.sqrt().diag())[0])


def test_several_wires_in_and_out_equal_quadrature() -> None:
    """Two input wires, two output wires, a product of three wires (formal degree 4, true degree 3)."""
    a, h = Space("a", 2), Space("h", 3)
    d = (Copy(a, 3) @ Id(Y)) >> (Linear("p", a, h) @ Linear("q", a, h) @ Linear("r", a, h, bias=True)
                                 @ Linear("s", Y, h)) >> (Mul(h, 3) @ Id(h)) >> Add(h) >> Copy(h) \
        >> (Linear("o", h, Y) @ Id(h))
    f, g = Model(d, seed=0).double(), Model(d, seed=1).double()

    def both(model: Model, v: torch.Tensor) -> torch.Tensor:
        return torch.cat(model(v[:, :2], v[:, 2:]), dim=-1)

    close(gaussian_inner(f, g), quadrature(lambda v: both(f, v) * both(g, v), 4))
    close(gaussian_mean(g), quadrature(lambda v: both(g, v), 4))
    assert exact_compare(f, g).outputs == ("y:2[0]", "y:2[1]", "h:3[0]", "h:3[1]", "h:3[2]")


def test_isserlis_closed_form_for_quadratic_forms() -> None:
    """DESIGN §2: E[x^T A x . x^T B x] = tr A tr B + 2 <A_sym, B_sym>_F for x ~ N(0, I)."""
    gen = torch.Generator().manual_seed(4)
    A, B = (torch.randn(3, 3, generator=gen, dtype=F64) for _ in range(2))

    def quad(M: torch.Tensor) -> Model:  # x^T M x = sum_h (M x)_h x_h
        return Model(Bilinear("q", X, Space("y", 1), hidden=3), {"q": {"L": M, "R": torch.eye(3, dtype=F64),
                                                                      "D": torch.ones(1, 3, dtype=F64)}}).double()

    sym = lambda M: (M + M.T) / 2  # noqa: E731
    want = torch.trace(A) * torch.trace(B) + 2 * (sym(A) * sym(B)).sum()
    close(gaussian_inner(quad(A), quad(B)), want.reshape(1), rtol=1e-12)


# ---------------------------------------------------------------- Monte Carlo at 2e5 samples

def monte_carlo(fn, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample mean of ``fn`` per output and its standard error."""
    with torch.no_grad():
        values = fn(samples)
    return values.mean(0), values.std(0) / math.sqrt(values.shape[0])


@pytest.mark.parametrize("make", [one_layer, two_layers])
def test_gaussian_inner_agrees_with_monte_carlo(make) -> None:
    f, g = make(5), make(6)
    gen = torch.Generator().manual_seed(1)
    mean = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    x = mean + torch.randn(200_000, 3, generator=gen, dtype=F64)
    for a, b in ((f, g), (f, f)):
        est, se = monte_carlo(lambda v: a(v) * b(v), x)
        assert ((gaussian_inner(a, b, mean=mean) - est).abs() <= 5 * se).all()


def test_embed_unembed_average_over_tokens_agrees_with_monte_carlo() -> None:
    f, g = embedded(7), embedded(8)
    result = exact_compare(f, g)
    assert result.exact and result.measure == "uniform tokens"
    ids = torch.randint(5, (200_000,), generator=torch.Generator().manual_seed(2))
    est, se = monte_carlo(lambda t: ((f(t) - g(t)) ** 2).sum(1, keepdim=True), ids)
    assert abs(result.mse - est.item()) <= 5 * se.item()
    with torch.no_grad():
        every = torch.arange(5)
        a, b = f(every), g(every)
    assert result.mse == pytest.approx(((a - b) ** 2).sum(1).mean().item(), rel=1e-12)
    assert result.fvu == pytest.approx(result.mse / a.var(0, unbiased=False).sum().item(), rel=1e-12)


def test_several_token_wires_average_over_every_tuple() -> None:
    d = (Embed("e1", T, X) @ Embed("e2", Space("pos", 3), X)) >> Add(X) >> Bilinear("b", X, Y, hidden=3, bias=True)
    f, g = Model(d, seed=0).double(), Model(d, seed=1).double()
    result = exact_compare(f, g)
    ids = torch.cartesian_prod(torch.arange(5), torch.arange(3))
    with torch.no_grad():
        a, b = f(ids[:, 0], ids[:, 1]), g(ids[:, 0], ids[:, 1])
    assert result.exact and "15 token tuples" in result.note
    assert result.mse == pytest.approx(((a - b) ** 2).sum(1).mean().item(), rel=1e-12)


def test_too_many_token_tuples_fall_back_to_monte_carlo_and_say_so() -> None:
    d = (Embed("e1", Space("tok", 1100), X) @ Embed("e2", Space("pos", 1000), X)) >> Add(X) \
        >> Bilinear("b", X, Y, hidden=2)
    f, g = Model(d, seed=0).double(), Model(d, seed=1).double()
    result = exact_compare(f, g, samples=4096)
    assert not result.exact and result.measure == "uniform tokens"
    assert result.note.startswith("1100000 token tuples are too many to enumerate (limit 1048576): Monte-Carlo "
                                  "estimate from 4096 uniform samples")


# ---------------------------------------------------------------- exact_compare

def test_exact_compare_matches_metrics_from_quadrature() -> None:
    f = two_layers(0)
    g = perturbed(f, 0.05, seed=1)
    result = exact_compare(f, g)
    ff, mf = gaussian_truth(f, f)
    fg, gg = gaussian_truth(f, g)[0], gaussian_truth(g, g)[0]
    mse = ff - 2 * fg + gg
    var = ff - mf ** 2
    assert isinstance(result, ExactResult) and result.exact
    assert result.measure == "N(0, I)" and result.note.startswith("nothing approximated")
    assert result.mse == pytest.approx(mse.sum().item(), rel=1e-8)
    assert result.fvu == pytest.approx((mse.sum() / var.sum()).item(), rel=1e-8)
    assert result.faithfulness == pytest.approx(1 - result.fvu, abs=1e-15)
    assert result.rel_l2 == pytest.approx(math.sqrt(mse.sum() / ff.sum()), rel=1e-8)
    assert result.cosine == pytest.approx((fg.sum() / (ff.sum() * gg.sum()).sqrt()).item(), rel=1e-10)
    assert result.outputs == ("y:2[0]", "y:2[1]")
    assert result.per_output_fvu == pytest.approx((mse / var).tolist(), rel=1e-8)
    assert result.per_output_rel_l2 == pytest.approx((mse / ff).sqrt().tolist(), rel=1e-8)
    assert 0 < result.fvu < 0.5


def test_exact_compare_of_a_model_with_itself_is_perfect() -> None:
    f = two_layers(3)
    result = exact_compare(f, f)
    assert result.mse == pytest.approx(0, abs=1e-12) and result.fvu == pytest.approx(0, abs=1e-12)
    assert result.faithfulness == pytest.approx(1, abs=1e-12) and result.cosine == pytest.approx(1, abs=1e-12)


def test_data_aware_exact_check_uses_fitted_moments() -> None:
    f, g = one_layer(0), one_layer(1)
    gen = torch.Generator().manual_seed(3)
    data = torch.randn(500, 3, generator=gen, dtype=F64) @ torch.tensor([[2.0, 0, 0], [0.5, 1, 0], [0, 0, 0.1]],
                                                                         dtype=F64) + 1.0
    mean, cov = fit_gaussian(data)
    torch.testing.assert_close(cov, torch.cov(data.T))
    result = exact_compare(f, g, mean=mean, cov=cov)
    root = torch.linalg.cholesky(cov)
    ff, mf = gaussian_truth(f, f, mean, root)
    fg, gg = gaussian_truth(f, g, mean, root)[0], gaussian_truth(g, g, mean, root)[0]
    assert result.measure == "N(mean, cov)"
    assert result.fvu == pytest.approx(((ff - 2 * fg + gg).sum() / (ff - mf ** 2).sum()).item(), rel=1e-8)


def test_too_deep_falls_back_to_monte_carlo_and_says_so() -> None:
    width = X
    d = residual(Bilinear("b1", width, width, hidden=2)) >> residual(Bilinear("b2", width, width, hidden=2)) \
        >> residual(Bilinear("b3", width, width, hidden=2))
    f, g = Model(d, seed=0).double(), Model(d, seed=1).double()
    result = exact_compare(f, g, samples=4096)
    assert not result.exact
    assert result.note.startswith("degree 8 is past the exact limit (degree 4): Monte-Carlo estimate from 4096 "
                                  "samples, relative standard error of mse ")
    with pytest.raises(ExactError, match=r"^x:3 -> x:3 has 3 Hadamard stages \(degree 8\); exact moments are "
                                         r"implemented up to 2 stages \(degree 4\)$"):
        gaussian_inner(f, g)


# ---------------------------------------------------------------- invariances

def reparametrised(model: Model, how: str) -> Model:
    """The same function with the weights moved along one of their symmetries."""
    p = {name: {k: v.detach().clone() for k, v in model.box_params(name).items()} for name in model.params}
    box = p["mlp"] if "mlp" in p else p["b1"]
    h = box["L"].shape[0]
    if how == "permute":
        perm = torch.randperm(h, generator=torch.Generator().manual_seed(0))
        for role in ("L", "R", "l", "r"):
            if role in box:
                box[role] = box[role][perm]
        box["D"] = box["D"][:, perm]
    elif how == "scale":
        a = torch.linspace(0.5, 3.0, h, dtype=F64)
        box["L"], box["R"] = box["L"] * a[:, None], box["R"] / a[:, None]
        if "l" in box:
            box["l"], box["r"] = box["l"] * a, box["r"] / a
    else:
        box["L"], box["R"] = box["R"], box["L"]
        if "l" in box:
            box["l"], box["r"] = box["r"], box["l"]
    return Model(model.diagram, p).double()


@pytest.mark.parametrize("how", ["permute", "scale", "swap"])
@pytest.mark.parametrize("make", [one_layer, two_layers])
def test_measures_are_invariant_to_weight_symmetries(make, how: str) -> None:
    f = make(4)
    g = reparametrised(f, how)
    assert not torch.equal(tensor_semantics(f).stages[0][0], tensor_semantics(g).stages[0][0])
    assert frobenius_cosine(f, g) == pytest.approx(1, abs=1e-12)
    result = exact_compare(f, g)
    assert result.cosine == pytest.approx(1, abs=1e-12)
    assert result.fvu == pytest.approx(0, abs=1e-10)


# ---------------------------------------------------------------- errors

def test_non_polynomial_boxes_are_named() -> None:
    f = Model(Linear("in", X, X) >> Norm("ln", X) >> Linear("out", X, Y), seed=0)
    g = Model(Linear("in", X, X) >> Linear("mid", X, X) >> Linear("out", X, Y), seed=0)
    reason = "box 'ln' (Norm x:3 -> x:3) is not polynomial: a normalisation divides by a norm of its input"
    assert why_not_polynomial(f) == reason and why_not_polynomial(g) is None
    with pytest.raises(NotPolynomialError) as err:
        exact_compare(g, f)
    assert str(err.value) == f"no exact comparison: {reason}"
    with pytest.raises(NotPolynomialError, match="box 'ln' \\(Norm"):
        frobenius_inner(f, g)


def test_bad_measures_and_mismatched_spaces_are_refused() -> None:
    f = one_layer(0)
    with pytest.raises(InputError, match=r"^cannot compare x:3 -> y:2 with x:3 -> x:3: the two diagrams need the same "
                                         r"input and output spaces$"):
        exact_compare(f, Model(Linear("l", X, X), seed=0))
    with pytest.raises(InputError, match=r"^mean has shape \(2,\); the inputs x:3 need shape \(3,\)$"):
        exact_compare(f, f, mean=torch.zeros(2))
    with pytest.raises(InputError, match=r"^cov has shape \(3, 2\); the inputs x:3 need \(3, 3\) \(or \(3,\) for "
                                         r"variances\)$"):
        gaussian_inner(f, f, cov=torch.zeros(3, 2))
    with pytest.raises(InputError, match=r"^cov is not positive semi-definite \(smallest eigenvalue -1\)$"):
        gaussian_mean(f, cov=torch.diag(torch.tensor([1.0, -1.0, 1.0])))
    with pytest.raises(InputError, match=r"^cov holds NaN or infinite values$"):
        gaussian_mean(f, cov=torch.full((3,), math.nan))
    with pytest.raises(InputError, match=r"^mean holds NaN or infinite values$"):
        gaussian_mean(f, mean=torch.tensor([0.0, math.inf, 0.0]))
    with pytest.raises(InputError, match=r"^cov is not symmetric$"):
        gaussian_mean(f, cov=torch.tensor([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]))
    e = embedded(0)
    with pytest.raises(InputError, match=r"^input wire tok:5 carries token ids \(one-hot rows in the tensor "
                                         r"semantics\), where a Gaussian measure is not meaningful"):
        gaussian_inner(e, e)
    with pytest.raises(InputError, match=r"^mean and cov describe real-valued inputs, but these inputs are token ids$"):
        exact_compare(e, e, mean=torch.zeros(5))
    mixed = Model((Embed("emb", T, X) @ Linear("l", X, X)) >> Mul(X), seed=0)
    with pytest.raises(InputError, match=r"^inputs x:3 are real-valued while others are token ids"):
        exact_compare(mixed, mixed)
    with pytest.raises(InputError, match=r"^fit_gaussian needs samples of shape \(n >= 2, N\), got \(3,\)$"):
        fit_gaussian(torch.zeros(3))
    with pytest.raises(InputError, match=r"^fit_gaussian: the samples hold NaN or infinite values$"):
        fit_gaussian(torch.tensor([[0.0], [math.nan]]))


def test_result_serialises_and_prints() -> None:
    result = exact_compare(one_layer(0), one_layer(1))
    obj = result.to_json()
    assert obj["exact"] is True and obj["measure"] == "N(0, I)"
    assert set(obj["end_to_end"]) == {"faithfulness", "fvu", "rel_l2", "cosine", "mse"}
    assert [row["output"] for row in obj["per_output"]] == ["y:2[0]", "y:2[1]"]
    assert str(result).startswith("exact comparison under N(0, I): faithfulness ")
