"""A diagram as a graph of boxes and wires, for rewrites that change the wiring.

:class:`Net` reads a diagram's layers once into nodes (boxes) joined by numbered
edges (wires); swaps vanish into the edge numbering. Rewrites edit the nodes, then
:meth:`Net.diagram` lays the nodes out again in one pass, adding the swaps that bring
each box's inputs side by side. :meth:`Net.prune_dead` is the graph question of
pruning: with networkx, keep only the boxes with a path to an output, then
drop the copies' and adds' dangling legs and the identities left behind.

>>> from compinterp.syntax import Space, Linear, Copy, Id
>>> x = Space("x", 3)
>>> diagram = Copy(x) >> Linear("f", x, x) @ Linear("g", x, x) >> Id(x) @ Copy(x, 0)
>>> net = Net(diagram)
>>> [node.box.name for node in net.nodes]
['copy', 'f', 'g', 'copy']
>>> net.prune_dead()
>>> net.diagram()
<Diagram x:3 -> x:3, 1 boxes>
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
from discopy.monoidal import Layer

from compinterp.errors import BoxError
from compinterp.syntax import Add, Box, Copy, Diagram, Space, Swap, Wire


@dataclass(eq=False)
class Node:
    """One box of the graph: reads edges ``ins``, writes edges ``outs`` (hashable by identity)."""

    box: Box
    ins: list[int]
    outs: list[int]


class Net:
    """The boxes of a diagram in a topological order, each edge read by exactly one box or output.

    ``wires[e]`` is the wire edge ``e`` carries; ``inputs`` and ``outputs`` are the
    diagram's edges, in order.
    """

    dom: Space
    cod: Space
    wires: dict[int, Wire]
    inputs: list[int]
    outputs: list[int]
    nodes: list[Node]

    def __init__(self, diagram: Diagram) -> None:
        self.dom, self.cod = diagram.dom, diagram.cod
        self.wires, self.nodes = {}, []
        live = [self.edge(w) for w in diagram.dom.wires]
        self.inputs = list(live)
        for offset, box in diagram.walk():
            n = len(box.dom)
            ins = live[offset:offset + n]
            if isinstance(box, Swap):
                outs = ins[1:] + ins[:1]
            else:
                outs = [self.edge(w) for w in box.cod.wires]
                self.nodes.append(Node(box, ins, outs))
            live[offset:offset + n] = outs
        self.outputs = live

    def copy(self) -> Net:
        """An independent copy (nodes and edge lists copied, boxes shared: they are immutable)."""
        other = object.__new__(Net)
        other.dom, other.cod, other.wires = self.dom, self.cod, dict(self.wires)
        other.inputs, other.outputs = list(self.inputs), list(self.outputs)
        other.nodes = [Node(n.box, list(n.ins), list(n.outs)) for n in self.nodes]
        return other

    def edge(self, wire: Wire) -> int:
        """A new edge carrying ``wire`` (edges are numbered in order and never removed)."""
        e = len(self.wires)
        self.wires[e] = wire
        return e

    def producer(self, e: int) -> Node | None:
        """The node writing edge ``e`` (``None``: an input of the diagram)."""
        return next((n for n in self.nodes if e in n.outs), None)

    def consumer(self, e: int) -> Node | None:
        """The node reading edge ``e`` (``None``: an output of the diagram)."""
        return next((n for n in self.nodes if e in n.ins), None)

    def direct(self, node: Node) -> bool:
        """Whether ``node`` reads the diagram's one input and writes its one output, each directly or across
        the copy and the add of a residual stream: then the box's output only adds to the diagram's, and a
        change of the box changes the diagram by exactly the change of the box.

        >>> from compinterp.syntax import Space, Linear, Bilinear, residual, chain
        >>> x = Space("x", 3)
        >>> net = Net(residual(Bilinear("mlp", x, x, hidden=2)))
        >>> net.direct(net.occurrences("mlp")[0])
        True
        >>> net = Net(chain(Linear("embed", x, x), Bilinear("mlp", x, x, hidden=2)))
        >>> net.direct(net.occurrences("mlp")[0])
        False
        """
        if len(self.inputs) != 1 or len(self.outputs) != 1 or len(node.ins) != 1 or len(node.outs) != 1:
            return False
        source, sink = self.producer(node.ins[0]), self.consumer(node.outs[0])
        reads = source is None if node.ins[0] in self.inputs else False
        reads = reads or (source is not None and isinstance(source.box, Copy) and source.ins == self.inputs)
        writes = sink is None and node.outs[0] in self.outputs
        writes = writes or (sink is not None and isinstance(sink.box, Add) and sink.outs == self.outputs)
        return reads and writes

    def occurrences(self, name: str) -> list[Node]:
        """The nodes of box ``name``."""
        return [n for n in self.nodes if n.box.name == name]

    def rename(self, old: int, new: int) -> None:
        """Make whatever reads edge ``old`` read edge ``new`` instead."""
        for node in self.nodes:
            node.ins = [new if e == old else e for e in node.ins]
        self.outputs = [new if e == old else e for e in self.outputs]

    def prune_dead(self) -> None:
        """Drop every box with no path to an output, then the legs and identities this leaves.

        A copy loses the outputs nobody reads (one left: it is the identity; none: it
        discards); another box's unread outputs and unread inputs are discarded; adds
        of one summand become identities.
        """
        graph = nx.DiGraph()
        graph.add_nodes_from(["input", "output", *self.nodes])
        made = {e: n for n in self.nodes for e in n.outs}
        for node in self.nodes:
            for e in node.ins:
                graph.add_edge(made.get(e, "input"), node)
        for e in self.outputs:
            graph.add_edge(made.get(e, "input"), "output")
        live = nx.ancestors(graph, "output")
        self.nodes = [n for n in self.nodes if n in live]
        read = {e for n in self.nodes for e in n.ins} | set(self.outputs)
        nodes: list[Node] = [Node(Copy(Space(self.wires[e]), 0), [e], []) for e in self.inputs if e not in read]
        for node in self.nodes:
            unread = [e for e in node.outs if e not in read]
            if unread and isinstance(node.box, Copy):
                node.outs = [e for e in node.outs if e in read]
                node.box = Copy(node.box.dom, len(node.outs), name=node.box.name)
                unread = []
            nodes.append(node)
            nodes.extend(Node(Copy(Space(self.wires[e]), 0), [e], []) for e in unread)
        self.nodes = nodes
        self.drop_identities()

    def drop_identities(self) -> None:
        """Remove copies to one wire and adds of one summand (identities), reconnecting their edges."""
        for node in list(self.nodes):
            if isinstance(node.box, (Copy, Add)) and len(node.ins) == 1 and len(node.outs) == 1:
                self.nodes.remove(node)
                self.rename(node.outs[0], node.ins[0])

    def drop_summand(self, node: Node) -> None:
        """Treat ``node``'s outputs as zero: remove them from the adds that read them (then dead, it goes
        with :meth:`prune_dead`)."""
        for e in node.outs:
            add = self.consumer(e)
            if add is None or not isinstance(add.box, Add):
                raise BoxError(f"box '{node.box.name}' would be left with nothing to compute, and its output "
                               f"{self.wires[e].name} is not a summand of an add, so it cannot simply go")
            if len(add.ins) == 1:
                raise BoxError(f"box '{node.box.name}' is the only summand of add '{add.box.name}': "
                               "removing it leaves a zero, which has no diagram")
            add.ins = [i for i in add.ins if i != e]
            add.box = Add(add.box.cod, len(add.ins), name=add.box.name)
        node.outs = []

    def diagram(self) -> Diagram:
        """Lay the nodes out as a diagram, in order, swapping each box's inputs next to each other."""
        live = list(self.inputs)
        inside: list[Layer] = []
        spaces: dict[tuple[Wire, ...], Space] = {}

        def space(edges: list[int]) -> Space:
            wires = tuple(self.wires[e] for e in edges)
            if wires not in spaces:
                spaces[wires] = Space(*wires)
            return spaces[wires]

        def layer(offset: int, box: Box) -> None:
            inside.append(Layer(space(live[:offset]), box, space(live[offset + len(box.dom):])))

        def move(e: int, target: int) -> None:
            at = live.index(e)
            while at > target:
                left, right = live[at - 1], live[at]
                layer(at - 1, Swap(Space(self.wires[left]), Space(self.wires[right])))
                live[at - 1], live[at] = right, left
                at -= 1

        for node in self.nodes:
            offset = min(live.index(e) for e in node.ins) if node.ins else len(live)
            for k, e in enumerate(node.ins):
                move(e, offset + k)
            layer(offset, node.box)
            live[offset:offset + len(node.ins)] = node.outs
        for k, e in enumerate(self.outputs):
            move(e, k)
        return Diagram(tuple(inside), self.dom, self.cod)
