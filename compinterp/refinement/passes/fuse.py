"""fuse: merge adjacent linear maps and fold what folds exactly, where that stores no more numbers.

Each fold is an identity of affine algebra, so the fused model computes the same
function (to float precision):

* ``Linear(W1, b1) >> Linear(W2, b2)  =  Linear(W2 W1, W2 b1 + b2)`` (kind of the second: an
  ``Unembed`` stays the read-out);
* ``Embed(E) >> Linear(W, b)  =  Embed(E W^T + b)`` (each row gets ``b``: exact for token ids and
  one-hot rows, the inputs an Embed reads);
* ``Linear(W, b) >> Bilinear(L, R, D, l, r, d)  =  Bilinear(L W, R W, D, L b + l, R b + r, d)``, and
  ``Bilinear(..., D, d) >> Linear(W, b)  =  Bilinear(..., W D, W d + b)`` (also for ``Gated``: its
  gate acts after ``L``);
* across a residual stream, a linear map before a copy goes onto every branch
  (``f >> copy = copy >> f @ f``, one shared box) and one after an add onto every summand
  (``add >> g = g @ g >> add``, its bias kept on one summand), where the copies can then merge.

:func:`fuse` applies these greedily, mildest first, accepting a merge when the model
stores no more numbers than before and a push through a copy or an add (with the
merges it allows) when it stores fewer. On a digits-style model
``Linear >> residual(Bilinear) >> Unembed`` this gives ``copy >> Bilinear' @ Linear' >> add``:

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear, Unembed, Bilinear, residual, chain
>>> pixels, resid, digits = Space("pixels", 16), Space("resid", 16), Space("digits", 4)
>>> model = Model(chain(Linear("embed", pixels, resid), residual(Bilinear("mlp", resid, resid, hidden=16)),
...                     Unembed("unembed", resid, digits, bias=True)), seed=0, dtype=torch.float64)
>>> fused = fuse(model)
>>> [box.name for box in fused.diagram.boxes], fused.num_params() < model.num_params()
(['copy', 'embed_mlp_unembed', 'embed_unembed_w', 'add'], True)
>>> x = torch.randn(5, 16, dtype=torch.float64)
>>> torch.allclose(fused(x), model(x))
True
"""

from __future__ import annotations

from collections.abc import Sequence

from compinterp.errors import BoxError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes._common import F64, Params, article, build, fresh
from compinterp.refinement.passes.graph import Net, Node
from compinterp.syntax import Add, Bilinear, Box, Copy, Embed, Gated, Kind, Linear, Space, Unembed

def mergeable(a: Box, b: Box) -> bool:
    """Whether ``a >> b`` folds into one box: affine boxes ``y = W x + b`` fold into each other, into
    the embedding before them and into gated layers ``y = D(g(L x + l) * (R x + r)) + d`` (at ``L, R``
    and ``D``)."""
    return ((isinstance(a, Embed) and b.affine) or (a.affine and (b.affine or b.gated))
            or (a.gated and b.affine))


def layer_box(like: Box, name: str, dom: Space, cod: Space, hidden: int, bias: bool) -> Kind:
    """A Bilinear or Gated box like ``like`` (same activation) with new spaces, width and biases."""
    if isinstance(like, Gated):
        return Gated(name, dom, cod, hidden, activation=like.data["activation"], bias=bias)
    return Bilinear(name, dom, cod, hidden, bias=bias)


def affine_box(like: Box, name: str, dom: Space, cod: Space, bias: bool) -> Kind:
    """A Linear or Unembed box like ``like`` (an Unembed stays the read-out) with new spaces and bias."""
    return (Unembed if isinstance(like, Unembed) else Linear)(name, dom, cod, bias=bias)


def merged(a: Box, pa: Params, b: Box, pb: Params, name: str) -> tuple[Kind, Params]:
    """The one box computing ``a >> b``, with its parameters (see the module docstring)."""
    if isinstance(a, Embed):
        W = a.data.get("scale", 1.0) * pa["W"] @ pb["W"].T
        return Embed(name, a.dom, b.cod), {"W": W + pb["b"] if "b" in pb else W}
    if b.affine and a.affine:
        p = {"W": pb["W"] @ pa["W"]}
        if "b" in pa or "b" in pb:
            p["b"] = (pb["W"] @ pa["b"] if "b" in pa else 0) + pb.get("b", 0)
        return affine_box(b, name, a.dom, b.cod, "b" in p), p
    if a.affine:
        W, c = pa["W"], pa.get("b")
        bias = c is not None or b.data["bias"]
        p = {"L": pb["L"] @ W, "R": pb["R"] @ W, "D": pb["D"]}
        if bias:
            zero = W.new_zeros(pb["L"].shape[0])
            p |= {"l": (pb["L"] @ c if c is not None else zero) + pb.get("l", zero),
                  "r": (pb["R"] @ c if c is not None else zero) + pb.get("r", zero),
                  "d": pb.get("d", W.new_zeros(b.cod.dim))}
        return layer_box(b, name, a.dom, b.cod, b.data["hidden"], bias), p
    W, c = pb["W"], pb.get("b")
    bias = c is not None or a.data["bias"]
    p = {"L": pa["L"], "R": pa["R"], "D": W @ pa["D"]}
    if bias:
        zero = W.new_zeros(pa["L"].shape[0])
        d = (W @ pa["d"] if "d" in pa else W.new_zeros(b.cod.dim)) + (c if c is not None else 0)
        p |= {"l": pa.get("l", zero), "r": pa.get("r", zero), "d": d}
    return layer_box(a, name, a.dom, b.cod, a.data["hidden"], bias), p


class Work:
    """A model's graph and the float64 parameters of its boxes, while it is being rewritten."""

    def __init__(self, net: Net, params: dict[str, Params], opaque: dict[str, int], new: set[str]) -> None:
        self.net, self.params, self.opaque, self.new = net, params, opaque, new

    @classmethod
    def of(cls, model: Model) -> Work:
        """The work on ``model``'s diagram and parameters."""
        params = {name: {role: t.detach().to(F64) for role, t in model.params[name].named_parameters()}
                  for name, box in model.boxes.items() if not box.opaque and name in model.params}
        opaque = {name: sum(p.numel() for p in model.params[name].parameters())
                  for name, box in model.boxes.items() if box.opaque}
        return cls(Net(model.diagram), params, opaque, set())

    def copy(self) -> Work:
        """An independent copy (tensors shared: they are never edited in place)."""
        return Work(self.net.copy(), dict(self.params), self.opaque, set(self.new))

    def numbers(self) -> int:
        """How many numbers the boxes in the graph store (a shared box counts once)."""
        names = {node.box.name for node in self.net.nodes}
        return sum(sum(t.numel() for t in self.params[n].values()) if n in self.params else self.opaque.get(n, 0)
                   for n in names)

    def name(self, base: str) -> str:
        """A box name not used yet."""
        return fresh(set(self.params) | set(self.opaque) | {n.box.name for n in self.net.nodes}, base)

    def add_box(self, box: Box, params: Params) -> None:
        """Record a new box's parameters."""
        self.params[box.name] = params
        self.new.add(box.name)

    def merge(self, a: Node, b: Node) -> Node:
        """Replace ``a >> b`` (``a``'s one output is ``b``'s one input) by the merged box, where ``b`` was."""
        box, params = merged(a.box, self.params[a.box.name], b.box, self.params[b.box.name],
                             self.name(f"{a.box.name}_{b.box.name}"))
        self.add_box(box, params)
        node = Node(box, a.ins, b.outs)
        nodes = self.net.nodes
        nodes[nodes.index(b)] = node
        nodes.remove(a)
        return node

    def push_forward(self, p: Node) -> list[Node]:
        """``p >> copy`` becomes ``copy >> p @ ... @ p`` (one shared box on every branch)."""
        net = self.net
        copy = net.consumer(p.outs[0])
        wire = net.wires[p.ins[0]]
        branches = [net.edge(wire) for _ in copy.outs]
        new = [Node(Copy(Space(wire), len(branches), name=copy.box.name), p.ins, branches)]
        new += [Node(p.box, [e], [out]) for e, out in zip(branches, copy.outs)]
        at = net.nodes.index(copy)
        net.nodes[at:at + 1] = new
        net.nodes.remove(p)
        return new[1:]

    def push_backward(self, q: Node, carrier: int | None) -> list[Node]:
        """``add >> q`` becomes ``q @ ... @ q >> add``; summand ``carrier`` keeps ``q``'s bias, the others
        get one shared bias-free copy of ``q``."""
        net = self.net
        add = net.producer(q.ins[0])
        plain = q.box
        if q.box.data["bias"]:
            if carrier is None:
                raise BoxError(f"box '{q.box.name}' has a bias, so one summand must carry it")
            plain = affine_box(q.box, self.name(f"{q.box.name}_w"), q.box.dom, q.box.cod, False)
            self.add_box(plain, {"W": self.params[q.box.name]["W"]})
        wire = net.wires[q.outs[0]]
        sums = [net.edge(wire) for _ in add.ins]
        new = [Node(q.box if i == carrier else plain, [e], [s]) for i, (e, s) in enumerate(zip(add.ins, sums))]
        new.append(Node(Add(Space(wire), len(sums), name=add.box.name), sums, q.outs))
        at = net.nodes.index(add)
        net.nodes[at:at + 1] = new
        net.nodes.remove(q)
        return new[:-1]

    def direct(self, a: Node, b: Node) -> bool:
        """Whether ``a``'s only output is ``b``'s only input."""
        return len(a.outs) == 1 and b.ins == a.outs

    def merge_pairs(self, names: set[str] | None) -> bool:
        """One merge that stores no more numbers (among boxes named in ``names``, if given); whether one was made."""
        before = self.numbers()
        for i, a in enumerate(self.net.nodes):
            if len(a.outs) != 1:
                continue
            b = self.net.consumer(a.outs[0])
            if b is None or not self.direct(a, b) or not mergeable(a.box, b.box):
                continue
            if names is not None and a.box.name not in names and b.box.name not in names:
                continue
            trial = self.copy()
            trial.merge(trial.net.nodes[i], trial.net.nodes[self.net.nodes.index(b)])
            if trial.numbers() <= before:
                self.net, self.params, self.new = trial.net, trial.params, trial.new
                return True
        return False

    def pushes(self) -> bool:
        """One push through a copy or an add, with the merges it allows, that stores fewer numbers; whether
        one was made."""
        before = self.numbers()
        for i, node in enumerate(self.net.nodes):
            for trial in (self._forward(i), self._backward(i)):
                if trial is not None and trial.numbers() < before:
                    self.net, self.params, self.new = trial.net, trial.params, trial.new
                    return True
        return False

    def _forward(self, i: int) -> Work | None:
        node = self.net.nodes[i]
        if not (node.box.affine or isinstance(node.box, Embed)):
            return None
        copy = self.net.consumer(node.outs[0])
        if copy is None or not isinstance(copy.box, Copy) or not copy.outs:
            return None
        trial = self.copy()
        for c in trial.push_forward(trial.net.nodes[i]):
            after = trial.net.consumer(c.outs[0])
            if after is not None and mergeable(c.box, after.box):
                trial.merge(c, after)
        return trial

    def _backward(self, i: int) -> Work | None:
        node = self.net.nodes[i]
        if not node.box.affine:
            return None
        add = self.net.producer(node.ins[0])
        if add is None or not isinstance(add.box, Add) or not add.ins:
            return None
        before = [self.net.producer(e) for e in add.ins]
        able = [k for k, b in enumerate(before) if b is not None and len(b.outs) == 1 and mergeable(b.box, node.box)]
        if node.box.data["bias"] and not able:
            return None
        trial = self.copy()
        copies = trial.push_backward(trial.net.nodes[i], able[0] if able else None)
        for c in copies:
            b = trial.net.producer(c.ins[0])
            if b is not None and len(b.outs) == 1 and mergeable(b.box, c.box):
                trial.merge(b, c)
        return trial

    def model(self, model: Model) -> Model:
        """The rewritten model: new boxes with their parameters, kept boxes with copies of ``model``'s."""
        names = {node.box.name for node in self.net.nodes}
        return build(model, self.net.diagram(), {n: self.params[n] for n in self.new if n in names})


def fuse_work(work: Work) -> Work:
    """Fold greedily until nothing folds: merges that store no more numbers, then pushes that store fewer."""
    while work.merge_pairs(None) or work.pushes():
        pass
    return work


def fold(work: Work, target: Node, names: Sequence[str], pass_name: str) -> Node:
    """Fold the boxes ``names`` into the Bilinear ``target`` (whatever that costs), and what their copies
    then merge with where that stores no more numbers; the folded node."""
    pushed: set[str] = set()
    for name in names:
        target = _fold_one(work, target, name, pass_name, pushed)
    while work.merge_pairs(pushed):
        pass
    return next(n for n in work.net.nodes if n.box.name == target.box.name)


def _fold_one(work: Work, target: Node, name: str, pass_name: str, pushed: set[str]) -> Node:
    net, box = work.net, target.box.name
    before = net.producer(target.ins[0])
    if before is not None and before.box.name == name and work.direct(before, target):
        _foldable(before, box, pass_name)
        return work.merge(before, target)
    if before is not None and isinstance(before.box, Copy):
        source = net.producer(before.ins[0])
        if source is not None and source.box.name == name and len(source.outs) == 1:
            _foldable(source, box, pass_name)
            pushed.add(name)
            copies = work.push_forward(source)
            mine = next(c for c in copies if c.outs == target.ins)
            return work.merge(mine, target)
    after = net.consumer(target.outs[0])
    if after is not None and after.box.name == name and work.direct(target, after):
        _foldable(after, box, pass_name)
        return work.merge(target, after)
    if after is not None and isinstance(after.box, Add):
        sink = net.consumer(after.outs[0])
        if sink is not None and sink.box.name == name:
            _foldable(sink, box, pass_name)
            pushed.add(name)
            copies = work.push_backward(sink, after.ins.index(target.outs[0]))
            pushed.update(c.box.name for c in copies)
            mine = next(c for c in copies if c.ins == target.outs)
            return work.merge(target, mine)
    raise BoxError(f"{pass_name}: cannot fold '{name}' into box '{box}': fold takes a Linear or Unembed box "
                   f"right before or after it, directly or across the copy and add of its residual stream")


def _foldable(node: Node, box: str, pass_name: str) -> None:
    if not node.box.affine:
        why = " (its inputs are token ids, which a Bilinear box cannot read)" if isinstance(node.box, Embed) else ""
        raise BoxError(f"{pass_name}: cannot fold '{node.box.name}' into box '{box}': it is "
                       f"{article(node.box.kind)} box{why}; fold takes Linear and Unembed boxes")


def foldable(net: Net, target: Node) -> list[str]:
    """The names of the Linear/Unembed boxes that :func:`fold` can fold into ``target``, before then after."""
    names = []
    before = net.producer(target.ins[0])
    if before is not None and isinstance(before.box, Copy):
        before = net.producer(before.ins[0])
    if before is not None and before.box.affine and len(before.outs) == 1:
        names.append(before.box.name)
    after = net.consumer(target.outs[0])
    if after is not None and isinstance(after.box, Add):
        after = net.consumer(after.outs[0])
    if after is not None and after.box.affine:
        names.append(after.box.name)
    return names


def fuse(model: Model) -> Model:
    """``model`` with every profitable exact fold made (see the module docstring); the same function."""
    if not isinstance(model, Model):
        raise BoxError(f"fuse rewrites a compinterp Model, got {type(model).__name__}")
    return fuse_work(Work.of(model)).model(model)


class Fuse:
    """The fuse pass: one rewrite, ``fuse(*)``, of the whole model, offered when something folds.

    Lossless by construction, so :meth:`lossless` offers the same rewrite.
    """

    name = "fuse"

    def candidates(self, model: Model) -> list[Rewrite]:
        """``[fuse(*)]`` when some fold stores fewer numbers or fewer boxes, else ``[]``."""
        work = Work.of(model)
        boxes, numbers = len(work.net.nodes), work.numbers()
        done = fuse_work(work.copy())
        changed = len(done.net.nodes) < boxes or done.numbers() < numbers
        return [Rewrite(self.name, "*", {})] if changed else []

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The fused model."""
        if rewrite.pass_name != self.name:
            raise BoxError(f"the fuse pass cannot apply a {rewrite.pass_name!r} rewrite ({rewrite})")
        return fuse(model)

    def lossless(self, model: Model) -> list[Rewrite]:
        """Every fold is exact: the same as :meth:`candidates`."""
        return self.candidates(model)
