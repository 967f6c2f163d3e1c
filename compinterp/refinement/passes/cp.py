"""cp: a Bilinear box refit as a rank-``R`` CP decomposition of its symmetrised interaction tensor.

The box's (padded, see :mod:`.eigen`) tensor ``B[c] = sum_h D[c, h] L^_h R^_h^T`` is approximated by

    C[c] = sum_r A[c, r] U_r W_r^T,        minimising  ||B_sym - C_sym||_F^2,

which is a Bilinear box with ``hidden = R``, ``L^ = U``, ``R^ = W``, ``D = A`` (and the same
output bias ``d``). The loss never builds ``B``: with the Gram matrices of the units'
symmetrised rank-one terms (``K = sym_gram``, ``"hid hid'"``),

    ||B_sym - C_sym||^2 = sum (D^T D) * K(L, R; L, R) - 2 sum (D^T A) * K(L, R; U, W) + sum (A^T A) * K(U, W; U, W).

For fixed ``U, W`` the best ``A`` solves a linear system, ``A = D K(L, R; U, W) K(U, W; U, W)^-1``;
the fit eliminates it this way (variable projection) and runs L-BFGS on ``U, W`` in
float64. It starts from the top-``R`` eigencomponents of the box (largest ``|lambda|`` over
the output directions, as :mod:`.eigen` in ``threshold`` mode), nudged by seeded noise so
that ``U`` and ``W`` can part (no fit at all when the start is exact: every eigencomponent fits in
``R``), and keeps the eigen start if the fit does not improve on it:
at equal hidden width cp is never worse than eigen. At ``R >= hidden`` it returns the
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

from collections.abc import Sequence

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
from compinterp.refinement.passes.eigen import spectrum
from compinterp.syntax import Bilinear

_CHUNK = 10
"""L-BFGS iterations per progress-bar step."""
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


def best_outputs(target: Factors, U: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """The ``A`` minimising the loss for fixed ``U, W``: ``K(U, W; U, W) A^T = (D K(L, R; U, W))^T``."""
    return _solve(sym_gram(U, W, U, W), target.D @ sym_gram(target.L, target.R, U, W))


def _solve(K: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``A`` with ``(K + ridge) A^T = M^T``, the ridge ``1e-12`` of ``K``'s mean diagonal (``K`` may be singular)."""
    ridge = 1e-12 * K.diagonal().mean().clamp_min(1e-300) * torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
    return torch.linalg.solve(K + ridge, M.T).T


class Target:
    """The symmetrised tensor a fit aims at, held in the cheaper of two forms: the box's factors
    (``(4 in + out) hidden R`` multiply-adds per evaluation) or the dense ``B_sym`` (``out x in x in``,
    ``4 out in^2 R``), chosen once; the loss and its gradient in closed form (no autograd).

    With ``A`` the best outputs for ``U, W`` (variable projection), the gradient of the loss in ``U, W``
    is its partial gradient at that fixed ``A`` (the envelope theorem): with ``S_r = sum_c A[c, r] B_sym[c]``
    and ``G = A^T A``,

        d/dU = -2 S_r W_r + (G * W W^T) U + (G * W U^T) W,    d/dW = -2 S_r U_r + (G * U U^T) W + (G * U W^T) U.

    >>> f = Factors(torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64),
    ...             torch.randn(3, 7, dtype=torch.float64), None, False)
    >>> U, W = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    >>> a, b = Target(f, dense=False).loss(U, W)[0], Target(f, dense=True).loss(U, W)[0]
    >>> bool(torch.isclose(a, b)), bool(torch.isclose(a, cp_loss(f, U, W, best_outputs(f, U, W))))
    (True, True)
    """

    def __init__(self, factors: Factors, dense: bool | None = None) -> None:
        hidden, n = factors.L.shape
        outputs = factors.D.shape[0]
        if dense is None:
            dense = 4 * outputs * n * n < (4 * n + outputs) * hidden
        self.factors = factors
        self.dense: torch.Tensor | None = None
        if dense:
            B = torch.einsum("ch,hi,hj->cij", factors.D, factors.L, factors.R)
            self.dense = (B + B.mT) / 2
        self.norm = frobenius_sq(factors)

    def loss(self, U: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, dloss/dU, dloss/dW, A)`` at the best outputs ``A`` for ``U, W``."""
        if self.dense is not None:
            TW = torch.einsum("cij,rj->cri", self.dense, W)
            TU = torch.einsum("cij,rj->cri", self.dense, U)
            M = torch.einsum("cri,ri->cr", TW, U)
        else:
            f, rank = self.factors, U.shape[0]
            P = torch.cat([f.L, f.R]) @ torch.cat([U, W]).T
            h = f.L.shape[0]
            LU, LW, RU, RW = P[:h, :rank], P[:h, rank:], P[h:, :rank], P[h:, rank:]
            M = f.D @ ((LU * RW + LW * RU) / 2)
        K = sym_gram(U, W, U, W)
        A = _solve(K, M)
        G = A.T @ A
        loss = self.norm - 2 * (A * M).sum() + (G * K).sum()
        if self.dense is not None:
            SW, SU = torch.einsum("cr,cri->ri", A, TW), torch.einsum("cr,cri->ri", A, TU)
        else:
            E = f.D.T @ A
            SW = ((E * RW).T @ f.L + (E * LW).T @ f.R) / 2
            SU = ((E * RU).T @ f.L + (E * LU).T @ f.R) / 2
        gU = -2 * SW + (G * (W @ W.T)) @ U + (G * (W @ U.T)) @ W
        gW = -2 * SU + (G * (U @ U.T)) @ W + (G * (U @ W.T)) @ U
        return loss, gU, gW, A


def _start(target: Factors, rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eigen start ``V`` (top-``rank`` eigencomponents by ``|lambda|``, zero rows past the last) and its
    seeded noisy copies ``U, W``."""
    spec = spectrum(target, "per_direction")
    keep = torch.zeros(spec.values.numel(), dtype=torch.bool, device=spec.values.device)
    keep[spec.values.abs().flatten().argsort(descending=True, stable=True)[:rank]] = True
    V, _ = spec.select(keep.reshape(spec.values.shape))
    V = torch.cat([V, V.new_zeros(rank - V.shape[0], V.shape[1])])
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, *V.shape, generator=gen, dtype=V.dtype).to(V.device) * _NOISE * V.norm(dim=1).mean()
    return V + noise[0], V + noise[1], V


def fit(target: Factors, rank: int, steps: int = 200, seed: int = 0, progress: bool | None = None,
        desc: str = "cp") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CP factors ``U, W, A`` of rank ``rank`` for a Bilinear box's factors (see the module docstring)."""
    h = target.L.shape[0]
    if rank >= h:
        zeros = target.L.new_zeros(rank - h, target.L.shape[1])
        A = torch.cat([target.D, target.D.new_zeros(target.D.shape[0], rank - h)], 1)
        return torch.cat([target.L, zeros]), torch.cat([target.R, zeros]), A
    U0, W0, eig = _start(target, rank, seed)
    aim = Target(target)
    A0 = best_outputs(target, eig, eig)
    start = cp_loss(target, eig, eig, A0, aim.norm)
    if start <= _EXACT * aim.norm:              # every component fits: nothing to fit
        return eig, eig, A0
    U, W = U0.clone(), W0.clone()
    optimizer = torch.optim.LBFGS([U, W], lr=1, max_iter=_CHUNK, history_size=20, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure() -> torch.Tensor:
        loss, U.grad, W.grad, _ = aim.loss(U, W)
        return loss

    previous = None
    if progress is None:
        progress = None if target.L.numel() >= _LONG else False
    with tqdm(total=steps, desc=desc, disable=None if progress is None else not progress, leave=False) as bar:
        for start in range(0, steps, _CHUNK):
            chunk = min(_CHUNK, steps - start)
            optimizer.param_groups[0].update(max_iter=chunk, max_eval=chunk * 5 // 4 + 1)
            loss = optimizer.step(closure).item()
            bar.update(chunk)
            bar.set_postfix(loss=f"{loss:.3g}")
            if previous is not None and previous - loss <= 1e-12 * max(abs(previous), 1e-300):
                break
            previous = loss
    U.grad = W.grad = None
    A = best_outputs(target, U, W)
    if start <= cp_loss(target, U, W, A, aim.norm):
        return eig, eig, A0
    return U, W, A


def cp(model: Model, box: str, rank: int, steps: int = 200, seed: int = 0, progress: bool | None = None) -> Model:
    """``model`` with Bilinear box ``box`` refit as a rank-``rank`` CP decomposition (``steps`` L-BFGS
    iterations at most, seeded by ``seed``; a progress bar if ``progress``, and by default for long fits
    (``hidden x inputs >= 2^16``) when writing to a terminal)."""
    f = find_box(model, box, (Bilinear,), "cp")
    rank = in_range("cp", box, "rank", rank, 1, 1 << 30)
    steps = in_range("cp", box, "steps", steps, 1, 1 << 30)
    target = Factors.of(f, params64(model, box))
    U, W, A = fit(target, rank, steps, seed, progress, desc=f"cp {box} rank {rank}")
    new = Bilinear(fresh(set(model.boxes), f"{box}_cp"), f.dom, f.cod, hidden=rank, bias=target.biased)
    return replace(model, {box: new}, {new.name: target.params(U, W, A)})


class CP:
    """The cp pass on every Bilinear box: ranks below the hidden width (the grid 2^j, 3·2^j, largest first, or
    ``ranks``), each fit with ``steps`` L-BFGS iterations from seed ``seed`` (``progress`` as in :func:`cp`)."""

    name = "cp"
    costly = True
    """Each rewrite runs a fit, dearest at the mildest (largest) rank: a search checks that one last."""

    def __init__(self, ranks: Sequence[int] | None = None, steps: int = 200, seed: int = 0,
                 progress: bool | None = None) -> None:
        self.ranks = None if ranks is None else sorted(set(ranks), reverse=True)
        self.steps, self.seed, self.progress = steps, seed, progress

    def _settings(self, rank: int) -> dict[str, int]:
        return {"rank": rank, "steps": self.steps, "seed": self.seed}

    def candidates(self, model: Model) -> list[Rewrite]:
        """For each Bilinear box, every rank below its hidden width, mildest (largest) first."""
        return [Rewrite(self.name, name, self._settings(r)) for name, box in model.boxes.items()
                if type(box) is Bilinear for r in (self.ranks or grid(box.data["hidden"]))
                if 1 <= r < box.data["hidden"]]

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The model with the box refit at the rewrite's rank."""
        if rewrite.pass_name != self.name:
            raise BoxError(f"the cp pass cannot apply a {rewrite.pass_name!r} rewrite ({rewrite})")
        s = rewrite.settings
        return cp(model, rewrite.box, s.get("rank"), s.get("steps", self.steps), s.get("seed", self.seed),
                  self.progress)

    def lossless(self, model: Model) -> list[Rewrite]:
        """For each Bilinear box, ``rank = hidden``: the box's own factors, exact."""
        return [Rewrite(self.name, name, self._settings(box.data["hidden"]))
                for name, box in model.boxes.items() if type(box) is Bilinear]
