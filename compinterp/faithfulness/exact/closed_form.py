"""One stage in closed form: every output a quadratic form of ``z^ = (1, z)``, and the rule for when
that is cheaper than the Wick engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from compinterp.semantics.tensor import PolyNet
from compinterp.syntax import Bilinear

MAX_QUADRATIC = 2 ** 24
"""Most numbers in the ``outputs x (N + 1) x (N + 1)`` matrices of the closed form for one-stage networks."""
_BATCH = 2 ** 22
"""Numbers (32 MB) in the weighted operand of one batched product of the closed form (outputs x units x
(N + 1)): one product for most layers, memory bounded for the largest."""

Quadratic = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``f_c(z^) = a_c + 2 b_c . z + z^T M_c z`` as ``(E f_c, b, M)``: means ``(outputs,)``, ``b`` ``(outputs, N)``,
``M`` ``(outputs, N, N)`` symmetric (views into ``A``)."""


def quadratic(net: PolyNet) -> Quadratic:
    """The quadratic form of every output of a network of at most one stage, for ``z ~ N(0, I)``.

    ``f_c(z^) = z^T A_c z^`` with ``A_c = sym(L^T diag(O_c) R)`` (``sym(e_0 O_c^T)`` for a linear
    network). When every output reads few of the units (an explanation with a few units per
    output), each product only takes those, padded to the same count with zero weights.
    The outputs go through batched products of :data:`_BATCH` numbers of operand each: on a shared
    CPU every parallel kernel waits for its slowest thread, so fewer kernels are steadier.
    """
    O = 0.5 * net.out  # the 1/2 of sym
    outputs, n = O.shape[0], net.in_dim + 1
    if not net.stages:
        X = O.new_zeros(outputs, n, n)
        X[:, 0, :] = O
    else:
        (L, R), = net.stages
        used = O != 0
        k = int(used.sum(1).max()) if outputs else 0
        units: torch.Tensor | None = None
        if k < 0.75 * O.shape[1]:  # output c reads units[c] (used ones first), weighted O[c, units[c]]
            units = torch.sort((~used).to(torch.uint8), dim=1, stable=True).indices[:, :k]
            O = O.gather(1, units)
        else:
            k = O.shape[1]
        X = O.new_empty(outputs, n, n) if k else O.new_zeros(outputs, n, n)
        step = max(1, _BATCH // max(1, k * n))
        for start in range(0, outputs if k else 0, step):
            part = slice(start, start + step)
            if units is None:
                left, right = L.expand(O[part].shape[0], -1, -1), O[part, :, None] * R
            else:
                left, right = L[units[part]], R[units[part]] * O[part, :, None]
            torch.bmm(left.mT, right, out=X[part])
    A = X + X.mT
    M = A[:, 1:, 1:]
    return A[:, 0, 0] + M.diagonal(dim1=1, dim2=2).sum(1), A[:, 1:, 0], M


def quadratic_products(forms: Sequence[Quadratic]) -> torch.Tensor:
    """``E[f_a,c f_b,c] = E f_a,c E f_b,c + 4 b_a,c . b_b,c + 2 <M_a,c, M_b,c>_F`` (Isserlis for quadratic
    forms) for every pair of ``forms``, as ``(outputs, forms, forms)``: two batched Gram products."""
    means = torch.stack([form[0] for form in forms], 1)
    b = torch.stack([form[1] for form in forms], 1)
    M = torch.stack([form[2] for form in forms], 1).flatten(2)
    return (means[:, :, None] * means[:, None, :] + 4 * torch.bmm(b, b.mT)) + 2 * torch.bmm(M, M.mT)


def _square_rows(net: PolyNet, lower: bool) -> int:
    """The rows of ``Q_1`` (``O`` for a linear network) in the square chain, without making it: one per
    unit with ``L = R``, two per other unit; a lower bound (one per unit) if ``lower``, else exact when
    all units have ``L = R`` (a symmetric layer) and an upper bound otherwise."""
    if not net.stages:
        return net.out.shape[0]
    L, R = net.stages[0]
    return L.shape[0] if lower or torch.equal(L, R) else 2 * L.shape[0]


def closed_form_pays(nets: Sequence[PolyNet], pairs: Sequence[tuple[int, int]]) -> bool:
    """Whether the products ``pairs`` of ``nets`` cost fewer multiply-adds in closed form (building each
    ``A_c``: ``(N + 1)^2`` per nonzero of ``O``) than in the Wick engine's Gram form (``Q_1 Q_1'^T``
    and its reduction over outputs), and the closed form's matrices fit: at most :data:`MAX_QUADRATIC`
    numbers, or no more than the largest Gram matrix the engine would make instead."""
    if any(net.depth > 1 for net in nets):
        return False
    n, outputs = nets[0].in_dim + 1, nets[0].out.shape[0]
    units = [_square_rows(net, True) for net in nets]
    if outputs * n * n > max(MAX_QUADRATIC, *(units[a] * units[b] for a, b in pairs)):
        return False
    forms = sum(int((net.out != 0).sum()) * n * n for net in nets if net.stages) + len(pairs) * outputs * n * n

    def gram(rows: Sequence[int]) -> int:
        return sum(rows[a] * rows[b] * (n + outputs) for a, b in pairs)

    return forms <= gram(units) or forms <= gram([_square_rows(net, False) for net in nets])



def form_inner(X: Quadratic, Y: Quadratic) -> torch.Tensor:
    """``E[X_c Y_c]`` for each output, for ``z ~ N(0, I)``: ``E X E Y + 4 b_X . b_Y + 2 <M_X, M_Y>_F``."""
    return X[0] * Y[0] + 4 * (X[1] * Y[1]).sum(1) + 2 * (X[2] * Y[2]).sum((1, 2))


def truncation_mse(delta: Quadratic, values: torch.Tensor, vectors: torch.Tensor, directions: torch.Tensor,
                   keep: Sequence[torch.Tensor]) -> list[float]:
    """``sum_c E[(delta_c + drop_c)^2]`` for each mask in ``keep``, for ``z ~ N(0, I)``, without building a model.

    A quadratic part ``sum_g u_g sum_m lambda_gm (v_gm . z^)^2`` (groups ``g`` with orthonormal output
    directions ``u_g``, the columns of ``directions``; within a group orthonormal ``v_gm``, the columns of
    ``vectors[g]``, on ``z^ = (1, z)``, or on ``z`` when they have one entry fewer) loses the components a
    mask ``keep[g, m]`` drops, ``drop_c``; ``delta`` is what already separates the two sides. Per
    component ``k = (g, m)``, with ``v = (v0, w)``,

        <delta~_g, v v^T> = E delta~_g |v|^2 + 4 v0 b~_g . w + 2 w^T M~_g w     (delta~_g = sum_c u_g[c] delta_c)
        <v v^T, v' v'^T>  = |v|^2 |v'|^2 + 4 v0 v0' w . w' + 2 (w . w')^2

    and components of different groups are orthogonal (the ``u_g`` are), so the error is
    ``||delta||^2 + 2 sum_dropped lambda_k <delta~, v_k v_k^T> + sum_g sum_dropped lambda_k lambda_k' <., .>``.

    >>> B = torch.tensor([[[2.0, 0.0], [0.0, -1.0]]])      # one output, y = 2 z1^2 - z2^2
    >>> lam, V = torch.linalg.eigh(B)
    >>> zero = (torch.zeros(1), torch.zeros(1, 2), torch.zeros(1, 2, 2))
    >>> truncation_mse(zero, lam, V, torch.eye(1), [torch.tensor([[True, False]])])   # drop 2 z1^2: E(2 z1^2)^2
    [12.0]
    """
    if not keep:
        return []
    padded = vectors.shape[1] == delta[1].shape[1] + 1
    v0 = vectors[:, 0, :] if padded else vectors.new_zeros(vectors.shape[0], vectors.shape[2])
    w = vectors[:, 1:, :] if padded else vectors
    groups, n = directions.shape[1], w.shape[1]
    size = v0.square() + w.square().sum(1)
    mean = directions.T @ delta[0]
    b = directions.T @ delta[1]
    M = (directions.T @ delta[2].reshape(delta[2].shape[0], n * n)).view(groups, n, n)     # delta~_g's M
    r = mean[:, None] * size + 4 * v0 * (b[:, None, :] @ w).squeeze(1) + 2 * ((M @ w) * w).sum(1)
    ww = w.mT @ w
    gram = (size[:, :, None] * size[:, None, :] + 4 * v0[:, :, None] * v0[:, None, :] * ww + 2 * ww.square()) \
        * values[:, :, None] * values[:, None, :]
    base = form_inner(delta, delta).sum()
    drop = (~torch.stack(list(keep))).to(values.dtype)                  # (masks, groups, components)
    lin = 2 * (drop * (values * r)).sum((1, 2))
    quad = ((gram @ drop.permute(1, 2, 0)) * drop.permute(1, 2, 0)).sum((0, 1))
    return (base + lin + quad).tolist()


Units = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""One stage ``y = O ((L x) * (R x))`` as ``(L, R, O)``: ``L``, ``R`` ``(units, inputs)``, ``O``
``(outputs, units)``."""


def bilinear_units(model: Any) -> Units | None:
    """``(L, R, D)`` in float64 of a model that is a single bias-free ``Bilinear`` box, read straight from its
    parameters (no tensor semantics, no constant unit); ``None`` for any other model or network."""
    box = getattr(model, "diagram", None)
    if not isinstance(box, Bilinear) or not box.polynomial or box.data["bias"]:
        return None
    p = model.box_params(box.name)
    return tuple(p[role].detach().to(torch.float64) for role in "LRD")


def units_frobenius(f: Units, g: Units) -> torch.Tensor | None:
    """``<sym F_c, sym G_c>_F = sum_{u, v} O_f[c, u] O_g[c, v] K[u, v]`` for each output of two stages
    ``(L, R, O)`` on the same inputs, with ``K = 1/2 [(L_f L_g^T) * (R_f R_g^T) + (L_f R_g^T) * (R_f L_g^T)]``
    (products elementwise), the Frobenius products of the units' symmetrised rank-one matrices: one Gram
    product ``[L_f; R_f] [L_g; R_g]^T``, the ``1/2`` applied to the ``outputs`` sums (exact, a power of two).
    ``None`` when ``K`` would hold more than :data:`MAX_QUADRATIC` numbers (the engine's turn)."""
    (Lf, Rf, Of), (Lg, Rg, Og) = f, g
    h, k = Lf.shape[0], Lg.shape[0]
    if h * k > MAX_QUADRATIC:
        return None
    P = torch.cat([Lf, Rf]) @ torch.cat([Lg, Rg]).T
    K = P[:h, :k] * P[h:, k:] + P[:h, k:] * P[h:, :k]
    return ((Of @ K) * Og).sum(1) / 2


def gram_frobenius(f: PolyNet, g: PolyNet) -> torch.Tensor | None:
    """``<sym F_c, sym G_c>_F`` for each output of two networks of one stage (a linear one lifted), from the
    units' Gram matrices without building any tensor (:func:`units_frobenius` on the padded stages). ``None``
    unless the deeper network has exactly one stage, or when ``K`` is too large (the engine's turn).

    >>> from compinterp.model import Model
    >>> from compinterp.syntax import Space
    >>> from compinterp.semantics.tensor import tensor_semantics
    >>> net = tensor_semantics(Model(Bilinear("b", Space("x", 3), Space("y", 2), hidden=4), seed=0), torch.float64)
    >>> A = quadratic(net)[2]                                 # no biases: the whole form is M
    >>> torch.allclose(gram_frobenius(net, net), A.square().sum((1, 2)))
    True
    """
    if max(f.depth, g.depth) != 1:
        return None
    f, g = f.lift(1), g.lift(1)
    return units_frobenius((*f.stages[0], f.out), (*g.stages[0], g.out))
