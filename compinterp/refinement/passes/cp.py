"""cp: a Bilinear box refit as a rank-``R`` CP decomposition of its symmetrised interaction tensor.

The box's (padded, see :mod:`.eigen`) tensor ``B[c] = sum_h D[c, h] L^_h R^_h^T`` is approximated by

    C[c] = sum_r A[c, r] U_r W_r^T,   minimising  ||B_sym - C_sym||_F^2 + mu (||U||^2 + ||W||^2 + ||A||^2),

which is a Bilinear box with ``hidden = R``, ``L^ = U``, ``R^ = W``, ``D = A`` (and the same
output bias ``d``). The small penalty (``mu`` is :data:`_RIDGE` of ``||B_sym||_F^(4/3)``) keeps a fit from
growing pairs of large units that cancel: they cost nothing in float but everything once each tensor
is quantised with one scale (the search's last step); with it, the same ranks quantise to 1-2 bits
fewer. The loss never builds ``B``: with the Gram matrices of the units' symmetrised rank-one terms
(``K = sym_gram``, ``"hid hid'"``),

    ||B_sym - C_sym||^2 = sum (D^T D) * K(L, R; L, R) - 2 sum (D^T A) * K(L, R; U, W) + sum (A^T A) * K(U, W; U, W).

For fixed ``U, W`` the best ``A`` solves a linear system, ``A = D K(L, R; U, W) (K(U, W; U, W) + mu)^-1``;
the fit eliminates it this way (variable projection) and runs L-BFGS on ``U, W`` (:func:`_lbfgs`: the
two loops on scalars, each unit's rows preconditioned by the diagonal block of the Hessian) in float32, then
solves for ``A`` in float64. It starts from the top-``R``
eigencomponents of the box (largest ``|lambda|`` over the output directions, as :mod:`.eigen` in
``threshold`` mode), nudged by seeded noise so that ``U`` and ``W`` can part (no fit at all when the
start is exact: every eigencomponent fits in ``R``), and keeps the eigen start if the fit does not
improve on its error: at equal hidden width cp is never worse than eigen. Each unit's three factors
are then scaled to equal norms (:func:`balance`; the same tensor). At ``R >= hidden`` it returns the
box's own factors (padded with zero units), which are exact. Deterministic for a seed.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear
>>> x, y = Space("x", 5), Space("y", 3)
>>> model = Model(Bilinear("mlp", x, y, hidden=6), seed=0, dtype=torch.float64)
>>> small = cp(model, "mlp", rank=3, steps=10)
>>> small.boxes["mlp_cp"].data["hidden"]
3
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from compinterp.errors import BoxError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes._common import (
    Factors,
    find_box,
    fresh,
    frobenius_sq,
    grid,
    in_range,
    params64,
    replace,
    sym_gram,
)
from compinterp.refinement.passes.eigen import Spectra, Spectrum, _step, spectrum
from compinterp.refinement.passes.graph import Net
from compinterp.syntax import Bilinear

_CHUNK = 10
"""L-BFGS iterations per progress-bar step."""
_MEMORY = 10
"""The L-BFGS history: the last this many steps and gradient changes (10, 20 and 40 reach the same errors)."""
_RIDGE = 3e-4
"""The fits' penalty on the factors' sizes, ``mu (||U||^2 + ||W||^2 + ||A||^2)`` with ``mu`` this fraction of
``||B_sym||_F^(4/3)`` (the scale at which it weighs like the error): it keeps fits from growing pairs of large
units that cancel, which a quantisation with one scale per tensor then spoils."""
_LONG = 2 ** 16
"""With ``progress=None``, a bar is shown (on a terminal) when ``hidden x padded inputs`` is at least this."""
_EXACT = 1e-20
"""An eigen start whose loss is below this fraction of ``||B_sym||_F^2`` is exact to round-off: no fit is run."""
_NOISE = 1e-2
"""Scale of the seeded noise added to the eigen start, relative to the factors' mean row norm."""


def cp_loss(target: Factors, U: torch.Tensor, W: torch.Tensor, A: torch.Tensor,
            norm: torch.Tensor | None = None) -> torch.Tensor:
    """``||B_sym - C_sym||_F^2`` from Gram matrices, for ``C[c] = sum_r A[c, r] U_r W_r^T`` (``norm``:
    ``||B_sym||_F^2`` if already known)."""
    cross = ((target.D.T @ A) * sym_gram(target.L, target.R, U, W)).sum()
    norm = frobenius_sq(target) if norm is None else norm
    return norm - 2 * cross + ((A.T @ A) * sym_gram(U, W, U, W)).sum()


def best_outputs(target: Factors, U: torch.Tensor, W: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """The ``A`` minimising the loss for fixed ``U, W``: ``K(U, W; U, W) A^T = (D K(L, R; U, W))^T``; with ``ridge``,
    the penalised loss's (``K + ridge I``)."""
    return _solve_t(sym_gram(U, W, U, W), target.D @ sym_gram(target.L, target.R, U, W), ridge).T


def _solve_t(K: torch.Tensor, M: torch.Tensor, shift: float) -> torch.Tensor:
    """``A^T`` with ``(K + shift I) A^T = M^T``, overwriting ``K``: by Cholesky, a zero ``shift`` raised to ``1e-12`` of
    ``K``'s mean diagonal (``K``, a Gram matrix, may be singular); where the shifted matrix is singular to working
    precision even so, the least-squares solution."""
    diagonal = K.diagonal()
    floor = 1e-12 * diagonal.mean().clamp_min(1e-300).item() if shift == 0 else 0.0
    diagonal.add_(max(shift, floor))
    factor, info = torch.linalg.cholesky_ex(K)
    if info.item():
        return torch.linalg.pinv(K, hermitian=True) @ M.T
    return torch.cholesky_solve(M.T, factor)


class Target:
    """The symmetrised tensor a fit aims at, held in the cheaper of two forms: the box's factors
    (``(8 in + 2 out) hidden R`` multiply-adds per evaluation) or the dense ``B_sym`` (``out x in x in``,
    ``2 out in^2 R``), chosen once; the loss and its gradient in closed form (no autograd).

    With ``ridge``, the loss is penalised by ``mu (||U||^2 + ||W||^2 + ||A||^2)``, ``mu = ridge ||B_sym||_F^(4/3)``.
    With ``A`` the best outputs for ``U, W`` (variable projection), the gradient of the loss in ``U, W``
    is its partial gradient at that fixed ``A`` (the envelope theorem): with ``S_r = sum_c A[c, r] B_sym[c]``
    and ``G = A^T A``,

        d/dU = -2 S_r W_r + (G * W W^T) U + (G * W U^T) W + 2 mu U,
        d/dW = -2 S_r U_r + (G * U U^T) W + (G * U W^T) U + 2 mu W.

    >>> f = Factors(torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64),
    ...             torch.randn(3, 7, dtype=torch.float64), None, False)
    >>> U, W = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    >>> a, b = Target(f, dense=False).loss(torch.cat([U, W]))[0], Target(f, dense=True).loss(torch.cat([U, W]))[0]
    >>> import math
    >>> closed = cp_loss(f, U, W, best_outputs(f, U, W)).item()
    >>> math.isclose(a, b, rel_tol=1e-10), math.isclose(a, closed, rel_tol=1e-10)
    (True, True)
    """

    def __init__(self, factors: Factors, dense: bool | None = None, ridge: float = 0.0) -> None:
        hidden, n = factors.L.shape
        outputs = factors.D.shape[0]
        if dense is None:
            dense = outputs * n * n < (4 * n + outputs) * hidden
        self.factors = factors
        self.dense: torch.Tensor | None = None
        """``2 B_sym`` as an ``(out in^) x in^`` matrix, for the dense form."""
        self.stacked: torch.Tensor | None = None
        """``[L^; R^]`` (``2 hidden x in^``), for the factored form."""
        if dense:
            B = torch.einsum("ch,hi,hj->cij", factors.D, factors.L, factors.R)
            self.dense = (B + B.mT).reshape(outputs * n, n)
        else:
            self.stacked = torch.cat([factors.L, factors.R])
        self.norm = frobenius_sq(factors)
        self.corner = factors.D @ (factors.L[:, 0] * factors.R[:, 0]) if factors.biased else None
        """``B_sym[c, 0, 0]``, the constant term of each output's form (biased boxes only)."""
        self.ridge = ridge * self.norm.item() ** (2 / 3)
        """The weight ``mu`` of the penalty ``mu (||U||^2 + ||W||^2 + ||A||^2)``: ``ridge ||B_sym||_F^(4/3)``."""

    def penalty(self, U: torch.Tensor, W: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """``mu (||U||^2 + ||W||^2 + ||A||^2)``, the part of :meth:`loss` that is not the error."""
        return self.ridge * (U.square().sum() + W.square().sum() + A.square().sum())

    def loss(self, UW: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, dloss/d[U; W], A, diagonal)`` at the best outputs ``A`` for ``UW = [U; W]`` (``2 R x in^``);
        ``diagonal``: ``G_rr |W_r|^2`` for ``U_r``'s rows and ``G_rr |U_r|^2`` for ``W_r``'s, the Gauss-Newton part of
        the diagonal blocks of the Hessian.

        With ``P = [U; W] [U; W]^T`` and ``A (K + mu) = M`` (``M[c, r] = U_r . B_sym[c] W_r``), the loss is
        ``||B_sym||^2 - sum A * M + mu tr P``, and the gradient's quadratic terms are one product ``H [U; W]``,
        ``H = [[G * W W^T, G * W U^T], [G * U W^T, G * U U^T]]`` (whose diagonal is ``diagonal``). It works with
        ``2 K`` and ``2 M`` (``A`` is the same), one product fewer each."""
        rank = UW.shape[0] // 2
        P = UW @ UW.T                                           # the Gram matrix of the rows of U and W
        UWt = P[:rank, rank:]
        K = torch.addcmul(P[:rank, :rank] * P[rank:, rank:], UWt, UWt.T)       # 2 sym_gram(U, W, U, W)
        if self.dense is not None:
            n = UW.shape[1]
            UWt = UW.T.contiguous()                             # (contiguous operands: 3-5x faster products)
            TX = (self.dense @ UWt).view(-1, n, 2, rank)         # 2 B_sym[c] U_r, 2 B_sym[c] W_r
            M = (TX[:, :, 1] * UWt[:, :rank]).sum(1)           # 2 U_r . B_sym[c] W_r
        else:
            h = self.factors.L.shape[0]
            Q = self.stacked @ UW.T                             # [[L U^T, L W^T], [R U^T, R W^T]]
            LU, LW, RU, RW = Q[:h, :rank], Q[:h, rank:], Q[h:, :rank], Q[h:, rank:]
            M = self.factors.D @ torch.addcmul(LU * RW, LW, RU)
        At = _solve_t(K, M, 2 * self.ridge)                     # A^T
        loss = self.norm.item() - (M * At.T).sum().item() / 2
        if self.ridge:
            loss += self.ridge * P.trace().item()
        H = P.view(2, rank, 2, rank).flip(0, 2).mul_((At @ At.T)[:, None, :]).view(2 * rank, 2 * rank)
        grad = torch.addmm(UW, H, UW, beta=2 * self.ridge) if self.ridge else H @ UW
        if self.dense is not None:                              # [i, 0, r]: (sum_c A[c, r] 2 B_sym[c] U_r)_i; 1: W_r
            S = (TX * At.T.contiguous()[:, None, None, :]).sum(0)
            grad.view(2, rank, -1).sub_(S.flip(1).permute(1, 2, 0))
        else:
            f, E = self.factors, self.factors.D.T @ At.T
            gU, gW = grad[:rank], grad[rank:]
            gU.addmm_((E * RW).T, f.L, alpha=-1).addmm_((E * LW).T, f.R, alpha=-1)
            gW.addmm_((E * RU).T, f.L, alpha=-1).addmm_((E * LU).T, f.R, alpha=-1)
        return loss, grad, At.T, H.diagonal()


class Prepared:
    """What every fit of one box shares, whatever its rank, made once when first asked for: the box's
    ``factors`` (float64), ``||B_sym||_F^2``, its spectrum per output direction (the fits' starts), and the fits'
    target in float32 (a fit's steps cost 0.6-0.8x those in float64 on a CPU, to the same error)."""

    def __init__(self, factors: Factors, spectrum: Spectrum | None = None) -> None:
        self.factors = factors
        self._norm: torch.Tensor | None = None
        self._spectrum = spectrum
        self._aim: Target | None = None
        self._tails: torch.Tensor | None = None

    @property
    def norm(self) -> torch.Tensor:
        """``||B_sym||_F^2``."""
        if self._norm is None:
            self._norm = frobenius_sq(self.factors)
        return self._norm

    @property
    def spectrum(self) -> Spectrum:
        """The box's eigenvalues per output direction (see :func:`.eigen.spectrum`)."""
        if self._spectrum is None:
            self._spectrum = spectrum(self.factors, "per_direction")
        return self._spectrum

    @property
    def tails(self) -> torch.Tensor:
        """``tails[k]``: the sum of the squared singular values of ``B_sym``'s matrix ``B[i, (c, j)]`` (inputs
        against outputs and inputs) past the first ``k``, for ``k = 0 .. in^``: the eigenvalues of
        ``sum_c B_sym[c]^2 = sum_g Q_g^2``, each ``Q_g^2 = V_g diag(lambda_g^2) V_g^T`` from :attr:`spectrum`."""
        if self._tails is None:
            spec = self.spectrum
            n = self.factors.L.shape[1]
            square = spec.values.new_zeros(n, n)
            for chunk in torch.arange(spec.values.shape[0], device=spec.values.device).split(_step(self.factors)):
                lam, V = spec.eigh(chunk)
                square += torch.einsum("gim,gm,gjm->ij", V, lam.square(), V)
            values = torch.linalg.eigvalsh(square).clamp_min(0)         # ascending
            self._tails = torch.cat([values.cumsum(0).flip(0), values.new_zeros(1)])
        return self._tails

    @property
    def aim(self) -> Target:
        """The fits' target, its numbers in float32."""
        if self._aim is None:
            f = self.factors
            self._aim = Target(Factors(*(None if t is None else t.float() for t in (f.L, f.R, f.D, f.d)), f.biased),
                               ridge=_RIDGE)
        return self._aim


def _start(spec: Spectrum, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eigen start ``V`` (top-``rank`` eigencomponents by ``|lambda|`` of ``spec``, zero rows past the last)
    and its seeded noisy copies ``U, W``."""
    keep = torch.zeros(spec.values.numel(), dtype=torch.bool, device=spec.values.device)
    keep[spec.values.abs().flatten().argsort(descending=True, stable=True)[:rank]] = True
    V, _ = spec.select(keep.reshape(spec.values.shape))
    V = torch.cat([V, V.new_zeros(rank - V.shape[0], V.shape[1])])
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, *V.shape, generator=gen, dtype=V.dtype).to(V.device) * _NOISE * V.norm(dim=1).mean()
    return V + noise[0], V + noise[1], V


def fit(target: Factors, rank: int, steps: int = 200, seed: int = 0, progress: bool | None = None,
        desc: str = "cp", give_up: float | None = None, prepared: Prepared | None = None
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CP factors ``U, W, A`` of rank ``rank`` for a Bilinear box's factors (see the module docstring);
    with ``give_up``, the fit may stop as soon as its error ``||B_sym - C_sym||_F^2`` (less the squared
    constant terms, for a biased box) plainly cannot come under it (see :func:`_lbfgs`); ``prepared``: the
    box's :class:`Prepared` state, when fits of several ranks share it."""
    h = target.L.shape[0]
    prepared = Prepared(target) if prepared is None else prepared
    if rank >= h:
        zeros = target.L.new_zeros(rank - h, target.L.shape[1])
        A = torch.cat([target.D, target.D.new_zeros(target.D.shape[0], rank - h)], 1)
        return torch.cat([target.L, zeros]), torch.cat([target.R, zeros]), A
    U0, W0, eig = _start(prepared.spectrum, rank, seed)
    A0 = best_outputs(target, eig, eig)
    start = cp_loss(target, eig, eig, A0, prepared.norm)
    if start <= _EXACT * prepared.norm:         # every component fits: nothing to fit
        return balance(eig, eig, A0)
    if progress is None:
        progress = None if target.L.numel() >= _LONG else False
    aim = prepared.aim
    with tqdm(total=steps, desc=desc, disable=None if progress is None else not progress, leave=False) as bar, \
            torch.inference_mode():             # 10-15% faster steps; the copies below are ordinary tensors
        U, W, _ = _lbfgs(aim, U0.to(aim.norm.dtype), W0.to(aim.norm.dtype), steps, bar, give_up=give_up)
    U, W = U.to(U0.dtype, copy=True), W.to(U0.dtype, copy=True)
    A = best_outputs(target, U, W, aim.ridge)   # the outputs of the penalised fit
    if start <= cp_loss(target, U, W, A, prepared.norm):
        return balance(eig, eig, A0)
    return balance(U, W, A)


def balance(U: torch.Tensor, W: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same CP terms ``A[:, r] sym(U_r W_r^T)`` with each unit's three factors of equal norm (the geometric
    mean of the three): the tensor is unchanged, and a quantisation with one scale per tensor, which a unit
    much larger in one factor than in the others would dominate, loses less."""
    u, w, a = U.norm(dim=1), W.norm(dim=1), A.norm(dim=0)
    ok = (u > 0) & (w > 0) & (a > 0)
    mean = (u * w * a).pow(1 / 3)
    su = torch.where(ok, mean / u.where(ok, torch.ones_like(u)), torch.ones_like(u))
    sw = torch.where(ok, mean / w.where(ok, torch.ones_like(w)), torch.ones_like(w))
    return U * su[:, None], W * sw[:, None], A / (su * sw)


def _lbfgs(aim: Target, U: torch.Tensor, W: torch.Tensor, steps: int, bar: Any, give_up: float | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """At most ``steps`` L-BFGS iterations on ``aim.loss`` from ``U, W``: memory :data:`_MEMORY`, a backtracking
    line search from the step 1, and for the initial inverse Hessian, that of each unit's rows
    ``1 / (G_rr |W_r|^2 + 2 mu)`` for ``U_r`` and ``1 / (G_rr |U_r|^2 + 2 mu)`` for ``W_r`` (``G = A^T A``: the
    diagonal blocks of the Hessian in ``U`` and ``W``), so that strong and weak units move alike. Stops early when
    :data:`_CHUNK` iterations gain less than ``1e-12`` of the loss, or, with ``give_up``, when the loss (less
    the squared corners of the error, for a biased box) cannot come under ``give_up`` even after falling by
    ``min(2 left, done) / m`` times the fall of the last ``m =`` :data:`_CHUNK` iterations, ``done`` the steps taken
    and ``left`` those left: a loss ``a + b / t`` falls by at least ``b m / t^2`` over the last ``m`` of ``t`` steps
    and by ``b / t`` in all the steps after, at most that fall times ``t / m``. Returns ``U, W`` and whether it gave up.

    The two loops of L-BFGS run on scalars: with the products ``s_i . y_j`` kept as the history grows (one product
    of the history with the new pair gives them all), each iteration costs three products of the history with a
    vector, and no loop over vectors."""
    rank, n = U.shape
    m = _MEMORY
    x = torch.cat([U, W]).reshape(-1)
    history = x.new_zeros(2 * (m + 1), x.numel())               # m + 1 slots: s in rows 0..m, y in rows m+1..2m+1
    S, Y = history[:m + 1], history[m + 1:]
    SY = [[0.0] * (m + 1) for _ in range(m + 1)]                # SY[i][j] = s_i . y_j, by slot
    order: list[int] = []                                        # the slots in use, oldest first
    spare, unused = 0, list(range(1, m + 1))                    # the slot the next pair is written to
    scale = 1.0                                                  # the preconditioner's scale, as L-BFGS scales I
    last: list[torch.Tensor] = []
    tiny = 2 * aim.ridge + torch.finfo(x.dtype).tiny

    def evaluate(x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        loss, grad, A, diagonal = aim.loss(x.view(2 * rank, n))
        last[:] = [A]
        return loss, grad.view(-1), (diagonal + tiny).reciprocal_().repeat_interleave(n)

    def hopeless(f: float, before: float, left: int, done: int) -> bool:
        """Whether the loss, less the error's corners, stays over ``give_up`` after falling by the last chunk's fall
        times ``min(2 left, done) / _CHUNK``."""
        UW = x.view(2 * rank, n)
        error = f - aim.penalty(UW[:rank], UW[rank:], last[0]).item()
        if aim.corner is not None:
            error -= (aim.corner - last[0] @ (UW[:rank, 0] * UW[rank:, 0])).square().sum().item()
        return error - (before - f) * min(2 * left, done) / _CHUNK > give_up

    f, g, h = evaluate(x)
    previous = f
    for step in range(steps):
        if order:                               # the two-loop recursion, on scalars
            sg = (S @ g).tolist()
            alpha = [0.0] * (m + 1)
            for i in range(len(order) - 1, -1, -1):
                si, row = order[i], SY[order[i]]
                alpha[si] = (sg[si] - sum(alpha[o] * row[o] for o in order[i + 1:])) / row[si]
            r = torch.addmv(g, Y.T, x.new_tensor(alpha), alpha=-1).mul_(h)
            yr = (Y @ r).tolist()
            coef = [0.0] * (m + 1)
            for i, yi in enumerate(order):
                beta = (yr[yi] + sum(coef[o] * SY[o][yi] for o in order[:i])) / SY[yi][yi]
                coef[yi] = alpha[yi] - beta
            direction = torch.addmv(r, S.T, x.new_tensor(coef)).neg_()
        else:
            direction = -g * h
        slope = torch.dot(g, direction).item()
        if slope >= 0:                          # not a descent direction: restart from the gradient
            unused, order = unused + order, []
            direction = -g * h
            slope = torch.dot(g, direction).item()
        t = 1.0
        while True:
            new = x.add(direction, alpha=t)
            f_new, g_new, h_new = evaluate(new)
            if f_new <= f + 1e-4 * t * slope:
                break
            t /= 2
            if t < 1e-10:                       # no decrease along the direction: as good as it gets
                return (*_split(x, rank), False)
        s, y = torch.sub(new, x, out=S[spare]), torch.sub(g_new, g, out=Y[spare])
        dots = (history @ torch.stack([s, y, y * h_new]).T).tolist()  # every slot with s, y and h y
        sy, yy, yhy = dots[spare][1], dots[m + 1 + spare][1], dots[m + 1 + spare][2]
        if sy > 1e-10 * yy:
            for other in order:
                SY[spare][other], SY[other][spare] = dots[m + 1 + other][0], dots[other][1]
            SY[spare][spare] = sy
            order.append(spare)
            spare = order.pop(0) if len(order) > m else unused.pop(0)
            scale = sy / yhy
        x, f, g, h = new, f_new, g_new, h_new.mul_(scale)
        if (step + 1) % _CHUNK == 0 or step + 1 == steps:
            bar.update(_CHUNK if (step + 1) % _CHUNK == 0 else (step + 1) % _CHUNK)
            bar.set_postfix(loss=f"{f:.3g}")
            if (step + 1) % _CHUNK == 0:
                if previous - f <= 1e-12 * max(abs(previous), 1e-300):
                    break
                if give_up is not None and step + 1 > _CHUNK and hopeless(f, previous, steps - step - 1, step + 1):
                    return (*_split(x, rank), True)
                previous = f
    return (*_split(x, rank), False)


def _split(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``U, W`` from their concatenation, flattened."""
    U, W = x.view(2, rank, -1)
    return U.clone(), W.clone()


def cp(model: Model, box: str, rank: int, steps: int = 200, seed: int = 0, progress: bool | None = None,
       give_up: float | None = None, prepared: Prepared | None = None) -> Model:
    """``model`` with Bilinear box ``box`` refit as a rank-``rank`` CP decomposition (``steps`` L-BFGS
    iterations at most, seeded by ``seed``; a progress bar if ``progress``, and by default for long fits
    (``hidden x inputs >= 2^16``) when writing to a terminal; ``give_up`` and ``prepared``, the box's, as in
    :func:`fit`)."""
    f = find_box(model, box, (Bilinear,), "cp")
    rank = in_range("cp", box, "rank", rank, 1, 1 << 30)
    steps = in_range("cp", box, "steps", steps, 1, 1 << 30)
    target = Factors.of(f, params64(model, box)) if prepared is None else prepared.factors
    U, W, A = fit(target, rank, steps, seed, progress, desc=f"cp {box} rank {rank}", give_up=give_up,
                  prepared=prepared)
    return _refit(model, box, target, U, W, A)


def _refit(model: Model, box: str, target: Factors, U: torch.Tensor, W: torch.Tensor, A: torch.Tensor) -> Model:
    """``model`` with Bilinear box ``box`` (of padded factors ``target``) replaced by the CP terms ``U, W, A``."""
    f = model.boxes[box]
    new = Bilinear(fresh(set(model.boxes), f"{box}_cp"), f.dom, f.cod, hidden=U.shape[0], bias=target.biased)
    return replace(model, {box: new}, {new.name: target.params(U, W, A)})


class CP:
    """The cp pass on every Bilinear box: ranks below the hidden width (the grid 2^j, 3·2^j, largest first, or
    ``ranks``), each fit with ``steps`` L-BFGS iterations from seed ``seed`` (``progress`` as in :func:`cp`); the
    fits' starts come from ``spectra`` (:class:`.eigen.Spectra`; default: the pass's own), which an eigen pass may
    share."""

    name = "cp"
    costly = True
    """Each rewrite runs a fit, dearest at the mildest (largest) rank: a search checks that one last."""
    gives_up = True
    """``apply`` takes ``give_up``: a search may let a fit that cannot keep its bar stop early."""

    def __init__(self, ranks: Sequence[int] | None = None, steps: int = 200, seed: int = 0,
                 progress: bool | None = None, spectra: Spectra | None = None) -> None:
        self.ranks = None if ranks is None else sorted(set(ranks), reverse=True)
        self.steps, self.seed, self.progress = steps, seed, progress
        self.spectra = Spectra() if spectra is None else spectra
        self._prepared: weakref.WeakKeyDictionary[Model, dict[tuple[Any, ...], Prepared]] = \
            weakref.WeakKeyDictionary()

    def prepared(self, model: Model, box: str) -> Prepared:
        """Box ``box`` of ``model`` made ready for fits (:class:`Prepared`), once per model and state of its
        weights: every rank tried on the same model shares its spectrum and targets."""
        known = self._prepared.setdefault(model, {})
        key = (box, tuple(p._version for p in model.parameters()))
        if key not in known:
            find_box(model, box, (Bilinear,), "cp")
            spec = self.spectra.of(model, box, (), "per_direction")[1]
            known[key] = Prepared(spec.factors, spec)
        return known[key]

    def starts(self, model: Model, rewrites: Sequence[Rewrite]) -> tuple[Spectrum, list[torch.Tensor]] | None:
        """The spectrum (per output direction) of the box that ``rewrites`` all refit, and the mask of the
        eigencomponents each fit starts from (the top ``rank`` by ``|lambda|``), when that box reads the model's
        inputs and writes its outputs (so each start changes the model by exactly the components it drops, and
        the search scores it in closed form); else ``None``. A fit is never worse than its start (in
        ``||B_sym - C_sym||_F``): a start that keeps the bar vouches for its rank without a fit."""
        if not rewrites:
            return None
        box = rewrites[0].box
        if any(r.pass_name != self.name or r.box != box for r in rewrites) or box not in model.boxes:
            return None
        target = model.boxes[box]
        if type(target) is not Bilinear or target.dom != model.dom or target.cod != model.cod:
            return None
        net = Net(model.diagram)
        nodes = net.occurrences(box)
        if len(nodes) != 1 or not net.direct(nodes[0]):
            return None
        spec = self.prepared(model, box).spectrum
        if spec.vectors is None:
            return None
        order = spec.values.abs().flatten().argsort(descending=True, stable=True)
        keeps = []
        for rewrite in rewrites:
            keep = torch.zeros(spec.values.numel(), dtype=torch.bool, device=spec.values.device)
            keep[order[:rewrite.settings.get("rank", 0)]] = True
            keeps.append(keep.reshape(spec.values.shape))
        return spec, keeps

    def least_errors(self, model: Model, rewrites: Sequence[Rewrite]) -> list[float] | None:
        """For rewrites that :meth:`starts` answers for: the least error ``||B_sym - C_sym||_F^2`` (less the squared
        corners ``[c, 0, 0]``, for a biased box) that any rank-``R`` fit can reach, whatever its factors; else ``None``.

        A CP tensor's matrix ``C[i, (c, j)]`` has rank at most ``2 R`` (each column is in the span of the ``U_r, W_r``),
        ``2 R + 1`` once its corners are changed (``e_0`` joins the span), so by Eckart-Young the error is at least
        :attr:`Prepared.tails` at ``2 R`` (``2 R + 1`` when biased), less ``1e-12 ||B_sym||_F^2`` for round-off."""
        if self.starts(model, rewrites) is None:
            return None
        prepared = self.prepared(model, rewrites[0].box)
        tails, f = prepared.tails, prepared.factors
        slack = 1e-12 * tails[0].item()
        last = tails.numel() - 1
        return [max(0.0, tails[min(2 * r.settings.get("rank", 0) + f.biased, last)].item() - slack) for r in rewrites]

    def sketch(self, model: Model, rewrite: Rewrite) -> Model:
        """The model :meth:`apply` would make, unfitted: the box replaced by the fit's seeded start (``U, W`` the
        noisy eigen start, ``A`` their best outputs, balanced): the same shapes, so about the same bits, at no fit's
        cost."""
        prepared = self.prepared(model, rewrite.box)
        target = prepared.factors
        U, W, _ = _start(prepared.spectrum, rewrite.settings["rank"], rewrite.settings.get("seed", self.seed))
        return _refit(model, rewrite.box, target, *balance(U, W, best_outputs(target, U, W)))

    def _settings(self, rank: int) -> dict[str, int]:
        return {"rank": rank, "steps": self.steps, "seed": self.seed}

    def candidates(self, model: Model) -> list[Rewrite]:
        """For each Bilinear box, every rank below its hidden width, mildest (largest) first."""
        return [Rewrite(self.name, name, self._settings(r)) for name, box in model.boxes.items()
                if type(box) is Bilinear for r in (self.ranks or grid(box.data["hidden"]))
                if 1 <= r < box.data["hidden"]]

    def apply(self, model: Model, rewrite: Rewrite, give_up: float | None = None) -> Model:
        """The model with the box refit at the rewrite's rank; ``give_up``: the fit may stop once its error
        ``||B_sym - C_sym||_F^2`` plainly cannot come under this (:func:`fit`): the search passes the error past
        which the rewrite cannot keep its bar."""
        if rewrite.pass_name != self.name:
            raise BoxError(f"the cp pass cannot apply a {rewrite.pass_name!r} rewrite ({rewrite})")
        s = rewrite.settings
        prepared = self.prepared(model, rewrite.box) if rewrite.box in model.boxes \
            and type(model.boxes[rewrite.box]) is Bilinear else None
        return cp(model, rewrite.box, s.get("rank"), s.get("steps", self.steps), s.get("seed", self.seed),
                  self.progress, give_up, prepared)

    def lossless(self, model: Model) -> list[Rewrite]:
        """For each Bilinear box, ``rank = hidden``: the box's own factors, exact."""
        return [Rewrite(self.name, name, self._settings(box.data["hidden"]))
                for name, box in model.boxes.items() if type(box) is Bilinear]
