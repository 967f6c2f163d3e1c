"""Grouping the nodes no box kind recognises into regions, each to become one ``Opaque`` box.

Each connected region of unrecognised nodes becomes one ``torch.fx.GraphModule``
with its own inputs and outputs. Two regions merge only if the merge keeps the
graph of boxes acyclic (checked with networkx on the quotient graph). Constants
(parameters read with ``get_attr`` and what is computed from them alone) and
shape arithmetic (ints, sizes) never travel on wires: every region that needs
them computes its own copy; so does a region that needs a tuple or scalar made
in a region it could not merge with.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import torch
from torch import fx

from compinterp.frontend.matching import Unit, base_name, label, node_args
from compinterp.frontend.patterns import Recognizer


@dataclass(eq=False)
class Region:
    """Unrecognised nodes computed by one module: ``nodes`` (with copies of ``extra``) read ``ins``, give ``outs``."""

    nodes: list[fx.Node]
    ins: list[fx.Node] = field(default_factory=list)
    outs: list[fx.Node] = field(default_factory=list)
    extra: list[fx.Node] = field(default_factory=list)
    module: fx.GraphModule | None = None

    @property
    def name(self) -> str:
        """A box name: the one module inside, else the first node's scoped name."""
        calls = [n for n in self.nodes if n.op == "call_module"]
        return label(str(calls[0].target)) if len(calls) == 1 else base_name(self.nodes[0])


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    return False


class Grouper:
    """Builds the regions of a recognised graph and orders units and regions for the diagram."""

    def __init__(self, rec: Recognizer, units: list[Unit], outputs: list[fx.Node]) -> None:
        self.rec, self.outputs = rec, outputs
        self.order = rec.traced.order
        self.units, free = self._live(units)
        self.pulled = {n for n in free if self._pullable(n)}
        self.vertices = [n for n in free if n not in self.pulled or n in outputs]
        self.producers = {v: self._producers(v) for v in self.vertices}
        self.members: dict[fx.Node, list[fx.Node]] = {v: [v] for v in self.vertices}
        self.rep = {v: v for v in self.vertices}
        self.graph = nx.DiGraph()
        self.graph.add_nodes_from([*self.units, *self.vertices])
        for unit in self.units:
            self.graph.add_edges_from((o, unit) for o in map(self.owner, unit.ins) if o is not None)
        for v in self.vertices:
            self.graph.add_edges_from((o, v) for o in map(self.owner, self.producers[v]) if o is not None)

    def _live(self, units: list[Unit]) -> tuple[list[Unit], list[fx.Node]]:
        """The units and unrecognised nodes the outputs depend on, in graph order."""
        live_units: set[Unit] = set()
        free: set[fx.Node] = set()
        seen: set[fx.Node] = set()
        todo = list(self.outputs)
        while todo:
            node = self.rec.resolve(todo.pop())
            if node in seen or node.op == "placeholder":
                continue
            seen.add(node)
            unit = self.rec.claimed.get(node)
            if unit is not None:
                live_units.add(unit)
                todo.extend(unit.ins)
            else:
                free.add(node)
                todo.extend(node_args(node))
        return [u for u in units if u in live_units], sorted(free, key=self.order.__getitem__)

    def _pullable(self, node: fx.Node) -> bool:
        """Constants and shape arithmetic: copied into each region that reads them."""
        return self.rec.const[node] or (node.op != "call_module" and not _has_tensor(self.rec.values.get(node)))

    def _producers(self, node: fx.Node) -> set[fx.Node]:
        """The non-copied nodes whose values ``node`` reads, looking through copied ones."""
        out: set[fx.Node] = set()
        todo, seen = [node], {node}
        while todo:
            for arg in map(self.rec.resolve, node_args(todo.pop())):
                if arg in seen:
                    continue
                seen.add(arg)
                if arg in self.pulled:
                    todo.append(arg)
                else:
                    out.add(arg)
        return out

    def owner(self, node: fx.Node) -> Unit | fx.Node | None:
        """The vertex that makes a value: its unit, its region, or ``None`` for an input."""
        if node.op == "placeholder":
            return None
        unit = self.rec.claimed.get(node)
        return unit if unit is not None else self.rep[node]

    def _merge(self, a: fx.Node, b: fx.Node) -> None:
        """Merge region ``b`` into ``a`` unless that would close a cycle."""
        if a is b:
            return
        for s, t in ((a, b), (b, a)):
            if any(nx.has_path(self.graph, w, t) for w in self.graph.successors(s) if w is not t):
                return
        nx.contracted_nodes(self.graph, a, b, self_loops=False, copy=False)
        moved = self.members.pop(b)
        self.members[a].extend(moved)
        for node in moved:
            self.rep[node] = a

    def run(self) -> list[Unit | Region]:
        """Units and regions in an order that computes each before it is read."""
        wire = self.rec.wire
        for wires_too in (False, True):
            for v in self.vertices:
                for p in sorted(self.producers[v], key=self.order.__getitem__):
                    if p in self.rep and (wires_too or not wire(p, floating=False)):
                        self._merge(self.rep[p], self.rep[v])
        regions = {rep: self._close(sorted(nodes, key=self.order.__getitem__)) for rep, nodes in self.members.items()}
        needed = set(self.outputs)
        for piece in [*self.units, *regions.values()]:
            needed.update(piece.ins)
        for region in regions.values():
            region.outs = [n for n in region.nodes if n in needed]
        first = {u: self.order[u.out] for u in self.units} | {
            rep: self.order[r.nodes[0]] for rep, r in regions.items()}
        ordered = [regions.get(v, v) for v in nx.lexicographical_topological_sort(self.graph, key=first.get)]
        kept = [p for p in ordered if isinstance(p, Unit) or p.outs]
        self._compile([p for p in kept if isinstance(p, Region)])
        return kept

    def _close(self, nodes: list[fx.Node]) -> Region:
        """A region of ``nodes`` with the copies it needs and the wires it reads."""
        region = Region(nodes)
        inside = set(nodes)
        todo = list(nodes)
        while todo:
            for arg in map(self.rec.resolve, node_args(todo.pop())):
                if arg in inside or arg in region.ins:
                    continue
                if arg in self.pulled or (arg.op != "placeholder" and not self.rec.wire(arg, floating=False)):
                    inside.add(arg)
                    region.extra.append(arg)
                    todo.append(arg)
                else:
                    region.ins.append(arg)
        region.ins.sort(key=self.order.__getitem__)
        return region

    def _compile(self, regions: list[Region]) -> None:
        """One GraphModule per region, all deep-copied together (shared parameters stay shared among them).

        An identity the region reads through is dropped, but for ``.contiguous()``, which a later ``.view()``
        may need: the region calls it again."""
        modules = []
        for region in regions:
            graph = fx.Graph()
            env = {v: graph.placeholder(v.name) for v in region.ins}

            def read(a: fx.Node, env: dict[fx.Node, fx.Node] = env, graph: fx.Graph = graph) -> fx.Node:
                if a not in env and a in self.rec.alias:
                    inner = read(self.rec.alias[a])
                    contiguous = a.op == "call_method" and a.target == "contiguous"
                    env[a] = graph.call_method("contiguous", (inner,)) if contiguous else inner
                return env[a]

            for node in sorted([*region.nodes, *region.extra], key=self.order.__getitem__):
                env[node] = graph.node_copy(node, read)
            outs = [env[o] for o in region.outs]
            graph.output(outs[0] if len(outs) == 1 else tuple(outs))
            modules.append(fx.GraphModule(self.rec.traced.root, graph, class_name=f"Opaque_{region.name}".replace("-", "_")))
        for region, module in zip(regions, copy.deepcopy(modules)):
            region.module = module


def summarize(region: Region, rec: Recognizer, limit: int = 12) -> str:
    """What a region computes, e.g. ``cumsum, blocks.0.gate (Gate, not traceable: ...)``."""
    items: list[str] = []
    for node in sorted([*region.nodes, *region.extra], key=rec.traced.order.__getitem__):
        item = _summarize_node(node, rec)
        if item not in items:
            items.append(item)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _summarize_node(node: fx.Node, rec: Recognizer) -> str:
    if node.op == "call_module":
        target = str(node.target)
        why = rec.traced.untraceable.get(target)
        kind = type(rec.module(node)).__name__
        return f"{target} ({kind}, not traceable: {why})" if why else f"{target} ({kind})"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "get_attr":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def flatten(arg: Any) -> Iterator[Any]:
    """The leaves of nested tuples and lists."""
    if isinstance(arg, (tuple, list)):
        for item in arg:
            yield from flatten(item)
    else:
        yield arg
