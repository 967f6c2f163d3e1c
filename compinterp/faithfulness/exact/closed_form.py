"""One stage in closed form: every output a quadratic form of ``z^ = (1, z)``, and the rule for when
that is cheaper than the Wick engine."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compinterp.semantics.tensor import PolyNet

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

