"""The Gaussian closure: an approximate estimate of the moments of deep polynomial networks, stage by stage.

Each stage state ``s_k`` is summarised by its mean ``m`` and covariance ``S``, and the next stage is
computed as if ``s_k`` were Gaussian: with ``a = L s``, ``b = R s`` (means ``mu_a, mu_b``; covariances
``C_aa = L S L^T``, ``C_bb = R S R^T``, ``C_ab = L S R^T``) every unit ``y_u = a_u b_u`` has (Isserlis)

    E y_u          = mu_a[u] mu_b[u] + C_ab[u, u]
    Cov(y_u, y_v)  = C_aa C_bb + C_ab C_ab^T + (mu_a mu_a^T) C_bb + (mu_a mu_b^T) C_ab^T
                     + (mu_b mu_a^T) C_ab + (mu_b mu_b^T) C_aa                            (elementwise, at [u, v])

which is ``E y_c = tr(B_c S) + m^T B_c m``, ``Cov(y_c, y_d) = 2 tr(B_c S B_d S) + 4 m^T B_c S B_d m`` for the
unit's symmetrised form ``B_u = sym(L_u^T R_u)``. The input is Gaussian, so the first stage is exact; from the
second on, the stage's input is a polynomial of the Gaussian, not Gaussian, and the estimate is approximate
(its higher cumulants are dropped). Two networks are propagated together (their first stages read the same
input, later stages side by side), so ``E f_c g_c`` comes out of the joint covariance.

>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear
>>> from compinterp.semantics.tensor import tensor_semantics
>>> from compinterp.faithfulness.exact.measures import gaussian_inner
>>> one = Model(Bilinear("b", Space("x", 3), Space("y", 2), hidden=4, bias=True), seed=0)
>>> ff, fg, gg, mf = closure_moments(tensor_semantics(one, torch.float64), tensor_semantics(one, torch.float64))
>>> torch.allclose(ff, gaussian_inner(one, one))             # one stage: exact
True
"""

from __future__ import annotations

import torch

from compinterp.semantics.tensor import PolyNet

Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""Per output ``c``: ``E f_c^2``, ``E f_c g_c``, ``E g_c^2``, ``E f_c``."""


def closure_moments(f: PolyNet, g: PolyNet) -> Moments:
    """``E f_c^2, E f_c g_c, E g_c^2, E f_c`` for ``z ~ N(0, I)`` by the Gaussian closure (exact for at most one
    stage, approximate beyond; fold a Gaussian ``N(mean, cov)`` in first with :meth:`PolyNet.substitute`)."""
    depth = max(f.depth, g.depth, 1)
    f, g = f.lift(depth), g.lift(depth)
    n = f.in_dim + 1
    mean = f.out.new_zeros(n)
    mean[0] = 1
    cov = torch.diag(torch.cat([mean.new_zeros(1), mean.new_ones(n - 1)]))
    widths: list[int] = []
    for k, ((Lf, Rf), (Lg, Rg)) in enumerate(zip(f.stages, g.stages)):
        if k == 0:
            L, R = torch.cat([Lf, Lg]), torch.cat([Rf, Rg])
        else:
            L, R = torch.block_diag(Lf, Lg), torch.block_diag(Rf, Rg)
        mean, cov = stage(L, R, mean, cov)
        widths = [Lf.shape[0], Lg.shape[0]]
    Of = torch.cat([f.out, f.out.new_zeros(f.out.shape[0], widths[1])], 1)
    Og = torch.cat([g.out.new_zeros(g.out.shape[0], widths[0]), g.out], 1)
    mf, mg = Of @ mean, Og @ mean

    def second(A: torch.Tensor, B: torch.Tensor, ma: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        return torch.einsum("cu,uv,cv->c", A, cov, B) + ma * mb

    return second(Of, Of, mf, mf), second(Of, Og, mf, mg), second(Og, Og, mg, mg), mf


def stage(L: torch.Tensor, R: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of ``(L s) * (R s)`` for a Gaussian ``s`` of mean ``mean`` and covariance ``cov``.

    >>> m, S = stage(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([1.0, 0.0]),
    ...              torch.diag(torch.tensor([0.0, 1.0])))                      # y = z^2, z ~ N(0, 1)
    >>> m.tolist(), S.tolist()
    ([1.0], [[2.0]])
    """
    ma, mb = L @ mean, R @ mean
    LS, RS = L @ cov, R @ cov
    aa, bb, ab = LS @ L.T, RS @ R.T, LS @ R.T
    outer = torch.outer
    cov = aa * bb + ab * ab.T + outer(ma, ma) * bb + outer(ma, mb) * ab.T + outer(mb, ma) * ab + outer(mb, mb) * aa
    return ma * mb + ab.diagonal(), (cov + cov.T) / 2


def closure_note(f: PolyNet, g: PolyNet) -> str:
    """What a result made by the closure says about itself."""
    return (f"degree {max(f.degree, g.degree)} is past the exact limit: Gaussian closure (each stage's input taken "
            "as Gaussian with its propagated mean and covariance), approximate and without an error bar "
            "(docs/exact.md gives its measured error)")

