"""lowrank: a Linear (or Unembed, or Embed) box into two boxes through an ``r``-dimensional wire.

With the SVD ``W = U S V^T`` (``W : out x in``), the rank-``r`` truncation is
``W_r = U_r S_r V_r^T``, split evenly: ``f_in`` maps ``in -> f_rank:r`` by
``S_r^(1/2) V_r^T`` and ``f_out`` maps ``f_rank:r -> out`` by ``U_r S_r^(1/2)`` and keeps the
bias (an ``Unembed`` stays the read-out). An ``Embed`` table ``E : tokens x out`` splits the
same way into an ``Embed`` to ``f_rank:r`` and a Linear. Eckart-Young: the error is
``||W - W_r||_F = sqrt(sum_{i > r} s_i^2)``, the least of any rank-``r`` map; for inputs
``x ~ N(0, I)`` the mean squared error of the outputs is ``sum_{i > r} s_i^2``. Lossless at
``r = rank(W)``.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear
>>> x, y = Space("x", 6), Space("y", 5)
>>> model = Model(Linear("f", x, y, bias=True), seed=0, dtype=torch.float64)
>>> low = lowrank(model, "f", 2)
>>> [(box.name, str(box.dom), str(box.cod)) for box in low.diagram.boxes]
[('f_in', 'x:6', 'f_rank:2'), ('f_out', 'f_rank:2', 'y:5')]
>>> w = model.box_params("f")["W"].detach()
>>> s = torch.linalg.svdvals(w)
>>> inputs = torch.eye(6, dtype=torch.float64)
>>> err = (low(inputs) - model(inputs)).norm()
>>> torch.allclose(err, s[2:].square().sum().sqrt())
True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compinterp.errors import BoxError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes._common import find_box, fresh, grid, in_range, params64, replace
from compinterp.syntax import Embed, Linear, Space, Unembed, chain

KINDS = (Linear, Unembed, Embed)
"""The box kinds this pass factorises."""


def lowrank(model: Model, box: str, rank: int) -> Model:
    """``model`` with box ``box`` replaced by its rank-``rank`` truncated SVD, two boxes through ``box_rank:rank``."""
    f = find_box(model, box, KINDS, "lowrank")
    p = params64(model, box)
    W = p["W"]
    r = in_range("lowrank", box, "rank", rank, 1, min(W.shape))
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = S[:r].sqrt()
    A, B = U[:, :r] * root, root[:, None] * Vh[:r]
    taken = set(model.boxes)
    first, second = fresh(taken, f"{box}_in"), fresh(taken, f"{box}_out")
    wire = Space(f"{box}_rank", r)
    if isinstance(f, Embed):
        image = chain(Embed(first, f.dom, wire, scale=f.data.get("scale")), Linear(second, wire, f.cod))
        params = {first: {"W": A}, second: {"W": B.T}}
    else:
        image = chain(Linear(first, f.dom, wire), (Unembed if isinstance(f, Unembed) else Linear)(
            second, wire, f.cod, bias=f.data["bias"]))
        params = {first: {"W": B}, second: {"W": A} | ({"b": p["b"]} if "b" in p else {})}
    return replace(model, {box: image}, params)


class LowRank:
    """The lowrank pass on every Linear, Unembed and Embed box.

    Candidates keep ranks that store fewer numbers than the box, ``r (in + out) < in out``:
    ``rank(W)`` when that is below full, then the grid 2^j, 3·2^j, largest first (or ``ranks``).
    """

    name = "lowrank"

    def __init__(self, ranks: Sequence[int] | None = None) -> None:
        self.ranks = None if ranks is None else sorted(set(ranks), reverse=True)

    def _boxes(self, model: Model) -> list[tuple[str, int, int, int]]:
        """Each box this pass applies to: name, rows, columns and numerical rank."""
        out = []
        for name, box in model.boxes.items():
            if type(box) in KINDS:
                W = params64(model, name)["W"]
                out.append((name, W.shape[0], W.shape[1], int(torch.linalg.matrix_rank(W))))
        return out

    def candidates(self, model: Model) -> list[Rewrite]:
        """For each box, the ranks that store fewer numbers, mildest (largest) first."""
        rewrites = []
        for name, rows, cols, rank in self._boxes(model):
            full = min(rows, cols)
            ranks = self.ranks or grid(full, start=rank if rank < full else None)
            rewrites += [Rewrite(self.name, name, {"rank": r}) for r in ranks
                         if 1 <= r <= rank and r * (rows + cols) < rows * cols]
        return rewrites

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The model with the box factorised at the rewrite's rank."""
        if rewrite.pass_name != self.name:
            raise BoxError(f"the lowrank pass cannot apply a {rewrite.pass_name!r} rewrite ({rewrite})")
        return lowrank(model, rewrite.box, rewrite.settings.get("rank"))

    def lossless(self, model: Model) -> list[Rewrite]:
        """For each box, ``rank = rank(W)`` (numerical rank): exact to float precision."""
        return [Rewrite(self.name, name, {"rank": max(1, rank)}) for name, _, _, rank in self._boxes(model)]
