"""odt: orthogonalise, diagonalise, truncate the wires of a chain of bilinear (and linear) layers.

In a chain ``f_1 >> f_2 >> ... >> f_n`` where each wire ``z`` between two boxes is written
by one (its *output map* ``M : z x u``: ``D`` of a Bilinear/Gated box, ``W`` of a Linear box,
with the output bias as an extra column ``[M | d]``) and read by the next (its *input maps*
``A``: ``L`` and ``R``, or ``W``), each wire in turn, left to right, is

1. **orthogonalised**: with the SVD ``[M | d]^T = Q S P^T`` write ``[M | d] = T^T Q^T``, ``T = S P^T``
   (``r x z``, ``r = min(z, u + 1)``): in the gauge ``z' = Q^T s`` the upstream map is an
   isometry and ``T`` moves downstream (``A -> A T^T``);
2. **diagonalised**: the downstream Gram matrix ``G = T (sum_A A^T A) T^T`` (``r x r``) has
   eigenvectors ``E`` (eigenvalues descending), the basis in which the wire's directions
   are independent and ordered by how much the next box reads them;
3. **truncated**: keep the top ``k``: ``[M | d] -> E_k^T Q^T`` and ``A -> A T^T E_k``, a wire of
   dimension ``min(k, r)`` (same label).

At full ``k`` this is a change of basis, exact. For two Linear boxes it is the optimal
truncation of their product: the eigenvalues of ``G`` are the squared singular values
of ``W_2 W_1``, and the Frobenius error is ``sqrt`` of the sum of the dropped ones.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear, chain
>>> x, z, y = Space("x", 6), Space("z", 8), Space("y", 3)
>>> model = Model(chain(Bilinear("a", x, z, hidden=5), Bilinear("b", z, y, hidden=4)), seed=0, dtype=torch.float64)
>>> [str(box.cod) for box in odt(model, ["a", "b"], k=3).diagram.boxes]
['z:3', 'y:3']
>>> exact = odt(model, ["a", "b"], k=8)
>>> inputs = torch.randn(4, 6, dtype=torch.float64)
>>> [str(box.cod) for box in exact.diagram.boxes], torch.allclose(exact(inputs), model(inputs))
(['z:5', 'y:3'], True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compinterp.errors import BoxError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes._common import Params, article, build, fresh, grid, in_range, listed, params64
from compinterp.refinement.passes.fuse import affine_box, layer_box
from compinterp.refinement.passes.graph import Net, Node
from compinterp.syntax import Bilinear, Box, Gated, Kind, Linear, Space, Unembed

KINDS = (Linear, Unembed, Bilinear, Gated)
"""The box kinds a chain is made of: affine boxes ``y = W x + b`` and gated layers ``y = D(g(L x) * R x)``."""


def _out(box: Box, p: Params) -> torch.Tensor:
    """The output map with its bias as a last column: ``[M | d]`` (or ``M``)."""
    M, bias = (p["W"], p.get("b")) if box.affine else (p["D"], p.get("d"))
    return M if bias is None else torch.cat([M, bias[:, None]], 1)


def _with_out(box: Box, p: Params, Mb: torch.Tensor) -> Params:
    """``p`` with a new output map (and bias) ``[M | d]``."""
    roles = ("W", "b") if box.affine else ("D", "d")
    biased = roles[1] in p
    return p | {roles[0]: Mb[:, :-1] if biased else Mb} | ({roles[1]: Mb[:, -1]} if biased else {})


def _ins(box: Box) -> tuple[str, ...]:
    """The roles of the input maps."""
    return ("W",) if box.affine else ("L", "R")


def _reshaped(box: Kind, name: str, dom: Space, cod: Space) -> Kind:
    """``box`` under a new name with new spaces."""
    if box.affine:
        return affine_box(box, name, dom, cod, box.data["bias"])
    return layer_box(box, name, dom, cod, box.data["hidden"], box.data["bias"])


def _bond(up: Box, down: Box, p_up: Params, p_down: Params, k: int) -> tuple[Params, Params, int]:
    """Orthogonalise, diagonalise and truncate the wire from ``up`` to ``down`` to ``min(k, r)``."""
    Mb = _out(up, p_up)
    Q, S, Ph = torch.linalg.svd(Mb.T, full_matrices=False)
    T = S[:, None] * Ph
    G = T @ sum(p_down[role].T @ p_down[role] for role in _ins(down)) @ T.T
    _, E = torch.linalg.eigh(G)
    Ek = E.flip(1)[:, :min(k, E.shape[1])]
    new_down = p_down | {role: p_down[role] @ T.T @ Ek for role in _ins(down)}
    return _with_out(up, p_up, Ek.T @ Q.T), new_down, Ek.shape[1]


def chains(net: Net) -> list[list[Node]]:
    """The maximal chains of boxes (of :data:`KINDS`, each used once) joined wire to wire, no spider between."""
    counts: dict[str, int] = {}
    for node in net.nodes:
        counts[node.box.name] = counts.get(node.box.name, 0) + 1

    def link(a: Node) -> Node | None:
        if not isinstance(a.box, KINDS) or counts[a.box.name] != 1 or len(a.outs) != 1:
            return None
        b = net.consumer(a.outs[0])
        return b if b is not None and isinstance(b.box, KINDS) and counts[b.box.name] == 1 and b.ins == a.outs else None

    after = {a: link(a) for a in net.nodes}
    heads = set(after) - {b for b in after.values() if b is not None}
    found = []
    for node in net.nodes:
        if node in heads and after[node] is not None:
            path = [node]
            while after[path[-1]] is not None:
                path.append(after[path[-1]])
            found.append(path)
    return found


def _chain(model: Model, net: Net, boxes: Sequence[str]) -> list[Node]:
    """The nodes of the chain named ``boxes``, checked."""
    if isinstance(boxes, str) or not isinstance(boxes, Sequence) or len(boxes) < 2:
        raise BoxError(f"odt: boxes={boxes!r} must name a chain of at least two boxes")
    names = model.boxes
    for name in boxes:
        if name not in names:
            raise BoxError(f"odt: the model has no box named {name!r}; its boxes are {', '.join(names)}")
        if not isinstance(names[name], KINDS):
            raise BoxError(f"odt: box '{name}' is {article(names[name].kind)} box; a chain is made of "
                           f"{listed([kind.kind for kind in KINDS])} boxes")
    for path in chains(net):
        at = [n.box.name for n in path]
        for i in range(len(at) - len(boxes) + 1):
            if at[i:i + len(boxes)] == list(boxes):
                return path[i:i + len(boxes)]
    raise BoxError(f"odt: boxes {', '.join(repr(b) for b in boxes)} are not a chain: each must feed the next "
                   "directly, through one wire that nothing else reads, and be used once")


def odt(model: Model, boxes: Sequence[str], k: int) -> Model:
    """``model`` with every wire of the chain ``boxes`` orthogonalised, diagonalised and truncated to ``k``
    (at most its rank ``r``; see the module docstring)."""
    net = Net(model.diagram)
    nodes = _chain(model, net, boxes)
    widest = max(net.wires[n.outs[0]].dim for n in nodes[:-1])
    k = in_range("odt", boxes[0], "k", k, 1, widest)
    params = {n.box.name: params64(model, n.box.name) for n in nodes}
    spaces = [n.box.dom for n in nodes] + [nodes[-1].box.cod]
    for i, (up, down) in enumerate(zip(nodes, nodes[1:])):
        a, b = up.box.name, down.box.name
        params[a], params[b], width = _bond(up.box, down.box, params[a], params[b], k)
        spaces[i + 1] = Space(net.wires[up.outs[0]].label, width)
    taken = set(model.boxes)
    new: dict[str, Params] = {}
    for i, node in enumerate(nodes):
        name = fresh(taken, f"{node.box.name}_odt")
        taken.add(name)
        new[name] = params[node.box.name]
        node.box = _reshaped(node.box, name, spaces[i], spaces[i + 1])
    for node, after in zip(nodes, nodes[1:]):
        net.wires[node.outs[0]] = after.box.dom.wires[0]
    return build(model, net.diagram(), new)


def _rank(model: Model, a: Node) -> int:
    """The rank bound ``r = min(z, u + 1)`` of the wire ``a`` writes."""
    return min(_out(a.box, params64(model, a.box.name)).shape)


class ODT:
    """The odt pass on every maximal chain: ``k`` below its widest wire and at most the exact ``k``
    (that one first when it narrows a wire, then the grid 2^j, 3·2^j, largest first; or ``ks``)."""

    name = "odt"

    def __init__(self, ks: Sequence[int] | None = None) -> None:
        self.ks = None if ks is None else sorted(set(ks), reverse=True)

    def _chains(self, model: Model) -> list[tuple[tuple[str, ...], int, int]]:
        """Each chain: its names, its widest wire, and the ``k`` at which it is exact."""
        out = []
        for path in chains(Net(model.diagram)):
            widest = max(a.box.cod.dim for a in path[:-1])
            out.append((tuple(n.box.name for n in path), widest, max(_rank(model, a) for a in path[:-1])))
        return out

    def candidates(self, model: Model) -> list[Rewrite]:
        """For each chain, every ``k`` up to the exact one that narrows its widest wire, mildest (largest) first."""
        rewrites = []
        for names, widest, exact in self._chains(model):
            ks = self.ks or grid(widest, start=exact if exact < widest else None)
            rewrites += [Rewrite(self.name, names[0], {"chain": names, "k": k}) for k in ks
                         if 1 <= k <= exact and k < widest]
        return rewrites

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The model with the rewrite's chain truncated to ``k``."""
        if rewrite.pass_name != self.name:
            raise BoxError(f"the odt pass cannot apply a {rewrite.pass_name!r} rewrite ({rewrite})")
        return odt(model, rewrite.settings.get("chain", ()), rewrite.settings.get("k"))

    def lossless(self, model: Model) -> list[Rewrite]:
        """For each chain, ``k`` = the largest wire rank ``r``: a change of basis, exact."""
        return [Rewrite(self.name, names[0], {"chain": names, "k": exact}) for names, _, exact in self._chains(model)]
