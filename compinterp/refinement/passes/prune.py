"""prune: drop the hidden units, eigencomponents or attention heads that matter least, then everything
that no longer reaches an output.

Scores (data-free, from the weights; a unit scores 0 exactly when it contributes nothing):

* a **Bilinear** unit ``h`` adds ``D_h (L^_h . x^)(R^_h . x^)`` to the output, i.e. ``D_h ⊗ sym(L^_h R^_h^T)``
  to the interaction tensor (padded, as in :mod:`.eigen`); its score is that term's exact
  Frobenius norm, ``||D_h|| sqrt((|L^_h|^2 |R^_h|^2 + (L^_h . R^_h)^2) / 2)``, which is how much
  ``B_sym`` changes when the unit alone is removed. On an eigen-layer (``L = R = V``) this is
  ``|lambda| ||u||``: pruning it drops eigencomponents;
* a **Gated** unit ``D_h act(L^_h . x^)(R^_h . x^)`` scores ``||D_h|| ||R^_h|| (|act(0)| + ||L^_h||)``
  (a size bound for activations of slope at most about 1);
* an **Attention** head adds ``W_O^h (W_V^h x + b_V^h)`` averaged over positions; it scores
  ``||W_O^h [W_V^h | b_V^h]||_F``.

The ``keep`` highest-scoring units stay (ties: the first). With ``keep = 0`` the box goes
entirely; it must then be a summand of an add (a residual branch) and have no output bias.
Then the graph of the diagram (networkx) is cut down to what has a path to an output:
a residual branch left empty becomes the identity on the stream.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear, Linear, residual
>>> x, y = Space("x", 4), Space("y", 2)
>>> model = Model(residual(Bilinear("mlp", x, x, hidden=8)) >> Linear("out", x, y), seed=0)
>>> [box.name for box in prune(model, "mlp", keep=3).diagram.boxes]
['copy', 'mlp_pruned', 'add', 'out']
>>> [box.name for box in prune(model, "mlp", keep=0).diagram.boxes]
['out']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compinterp.errors import BoxError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes._common import F64, Factors, build, find_box, fresh, grid, in_range, params64
from compinterp.refinement.passes.fuse import layer_box
from compinterp.refinement.passes.graph import Net
from compinterp.semantics.kernels import POINTWISE
from compinterp.syntax import Add, Attention, Bilinear, Box, Gated

KINDS = (Bilinear, Gated, Attention)
"""The box kinds whose units this pass prunes."""
_DEAD = 1e-12
"""A unit scoring at most this fraction of the best counts as contributing nothing (round-off)."""


def units(box: Box) -> int:
    """How many units (hidden units or heads) the box has."""
    return box.data["heads"] if box.has_heads else box.data["hidden"]


def scores(model: Model, box: str) -> torch.Tensor:
    """The score of each unit of box ``box`` (see the module docstring), in float64."""
    f = find_box(model, box, KINDS, "prune")
    p = params64(model, box)
    if f.has_heads:
        heads, size = f.data["heads"], f.data["head_dim"]
        V = p["Wv"] if "bv" not in p else torch.cat([p["Wv"], p["bv"][:, None]], 1)
        return torch.stack([(p["Wo"][:, h * size:(h + 1) * size] @ V[h * size:(h + 1) * size]).norm()
                            for h in range(heads)])
    fac = Factors.of(f, p)
    left, right = fac.L.norm(dim=1), fac.R.norm(dim=1)
    if isinstance(f, Gated):
        zero = POINTWISE[f.data["activation"]](torch.zeros((), dtype=F64)).abs()
        return fac.D.norm(dim=0) * right * (zero + left)
    dot = (fac.L * fac.R).sum(1)
    return fac.D.norm(dim=0) * ((left * right).square() + dot.square()).div(2).sqrt()


def alive(model: Model, box: str) -> int:
    """How many units of ``box`` score above round-off: keeping them is exact."""
    s = scores(model, box)
    return int((s > _DEAD * s.max()).sum()) if s.numel() else 0


def _kept(model: Model, box: str, keep: int) -> torch.Tensor:
    """The indices of the ``keep`` best units, in their original order."""
    s = scores(model, box)
    order = s.argsort(descending=True, stable=True)
    return order[:keep].sort().values


def _smaller(model: Model, box: Box, keep: torch.Tensor, name: str) -> tuple[Box, dict[str, torch.Tensor]]:
    """The box with only the units ``keep``, and its parameters."""
    p = params64(model, box.name)
    if box.has_heads:
        size = box.data["head_dim"]
        rows = (keep[:, None] * size + torch.arange(size, device=keep.device)).flatten()
        new = {role: (t[:, rows] if role == "Wo" else t if role in ("bo", "q_norm", "k_norm") else t[rows])
               for role, t in p.items()}
        if "kv_heads" in box.data:
            raise BoxError(f"prune: box '{box.name}' shares keys and values between query heads "
                           f"(kv_heads={box.data['kv_heads']}); pruning grouped-query heads is not supported")
        keys = ("rotary_dim", "rotary_base", "rotary_interleaved", "scale", "window", "padded", "qk_norm")
        settings = {k: box.data[k] for k in keys if k in box.data}
        return Attention(name, box.cod, len(keep), size, causal=box.data["causal"], bias=box.data["bias"],
                         **settings), new
    new = {role: (t[:, keep] if role == "D" else t if role == "d" else t[keep]) for role, t in p.items()}
    return layer_box(box, name, box.dom, box.cod, len(keep), box.data["bias"]), new


def prune(model: Model, box: str, keep: int) -> Model:
    """``model`` keeping the ``keep`` best units of box ``box`` (``keep = 0``: none), then only what
    reaches an output."""
    f = find_box(model, box, KINDS, "prune")
    keep = in_range("prune", box, "keep", keep, 0, units(f))
    net = Net(model.diagram)
    params: dict[str, dict[str, torch.Tensor]] = {}
    if keep == 0:
        p = params64(model, box)
        bias = p.get("bo", p.get("d"))
        if bias is not None and bias.abs().max() > 0:
            raise BoxError(f"prune: keep=0 would leave box '{box}' adding its constant output bias, which no "
                           "box here can hold on its own; keep at least 1 unit")
        for node in net.occurrences(box):
            net.drop_summand(node)
    elif keep < units(f):
        new, p = _smaller(model, f, _kept(model, box, keep), fresh(set(model.boxes), f"{box}_pruned"))
        params[new.name] = p
        for node in net.occurrences(box):
            node.box = new
    net.prune_dead()
    return build(model, net.diagram(), params)


def removable(model: Model, box: str, net: Net | None = None) -> bool:
    """Whether ``keep = 0`` is possible: every use of the box is a summand of an add, and it has no output bias
    (``net``: the model's graph, if already built)."""
    p = params64(model, box)
    bias = p.get("bo", p.get("d"))
    if bias is not None and bias.abs().max() > 0:
        return False
    net = Net(model.diagram) if net is None else net
    for node in net.occurrences(box):
        for e in node.outs:
            add = net.consumer(e)
            if add is None or not isinstance(add.box, Add) or len(add.ins) < 2:
                return False
    return True


class Prune:
    """The prune pass on every Bilinear, Gated and Attention box.

    Candidates keep fewer units than the box has: the units that are not dead (when some
    are), then the grid 2^j, 3·2^j, largest first (or ``keeps``), and ``0`` when the box can go.
    """

    name = "prune"

    def __init__(self, keeps: Sequence[int] | None = None) -> None:
        self.keeps = None if keeps is None else sorted(set(keeps), reverse=True)

    def candidates(self, model: Model) -> list[Rewrite]:
        """For each box, every ``keep`` below its number of units, mildest (most kept) first."""
        rewrites, net = [], Net(model.diagram)
        for name, box in model.boxes.items():
            if type(box) not in KINDS:
                continue
            n, live = units(box), alive(model, name)
            keeps = self.keeps or grid(n, start=live if live < n else None)
            keeps = [k for k in keeps if 1 <= k <= live and k < n]
            if removable(model, name, net):
                keeps.append(0)
            rewrites += [Rewrite(self.name, name, {"keep": k}) for k in keeps]
        return rewrites

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The model with the box pruned to ``keep`` units."""
        if rewrite.pass_name != self.name:
            raise BoxError(f"the prune pass cannot apply a {rewrite.pass_name!r} rewrite ({rewrite})")
        return prune(model, rewrite.box, rewrite.settings.get("keep"))

    def lossless(self, model: Model) -> list[Rewrite]:
        """For each box, keep the units that are not dead (score above round-off): exact."""
        net = Net(model.diagram)
        return [Rewrite(self.name, name, {"keep": max(alive(model, name), 0 if removable(model, name, net) else 1)})
                for name, box in model.boxes.items() if type(box) in KINDS]
