"""Wiring a dataflow graph into a string diagram: one left-to-right walk that places copies, discards and swaps.

Values are any hashable names. Each step of the walk is an :class:`Application`
of a box: it reads some values (possibly one twice) and makes new ones; the walk
keeps the list of live wires, copies a value when it is still needed later,
discards it when nobody needs it, and swaps wires so that each box finds its
inputs side by side. The pieces are composed once at the end (``>>`` in a loop is
quadratic).

>>> from compinterp.syntax import Space, Linear, Add
>>> x, h = Space("x", 2), Space("h", 3)
>>> steps = [Application(Linear("f", x, x), ("a",), ("b",)), Application(Add(x), ("a", "b"), ("c",))]
>>> d = wire_up([("a", x)], steps, ["c"])
>>> [box.kind for box in d.boxes]
['Copy', 'Linear', 'Add']
>>> d.dom, d.cod
(Space('x:2'), Space('x:2'))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from compinterp.syntax import Box, Copy, Diagram, Id, Space, Swap


@dataclass(frozen=True)
class Application:
    """One box applied to named values: it reads the values ``ins`` (in order) and makes ``outs``."""

    box: Box
    ins: tuple[Hashable, ...]
    outs: tuple[Hashable, ...]


class _Walk:
    """The live wires (one value name per wire) and the diagram pieces emitted so far."""

    def __init__(self, inputs: Sequence[tuple[Hashable, Space]], uses: Counter[Hashable]) -> None:
        self.space: dict[Hashable, Space] = dict(inputs)
        self.live: list[Hashable] = [value for value, _ in inputs]
        self.uses = uses
        self.pieces: list[Diagram] = []

    def _wires(self, values: Sequence[Hashable]) -> Space:
        return Space(*(self.space[v].inside[0] for v in values))

    def put(self, box: Box, offset: int, outs: Sequence[Hashable]) -> None:
        """Apply ``box`` to the live wires at ``offset`` and name its outputs."""
        n = len(box.dom)
        self.pieces.append(Id(self._wires(self.live[:offset])) @ box @ Id(self._wires(self.live[offset + n:])))
        self.live[offset:offset + n] = outs

    def copy(self, value: Hashable, n: int) -> None:
        """Replace the wire of ``value`` by ``n`` copies (``n = 0`` discards it)."""
        self.put(Copy(self.space[value], n), self.live.index(value), [value] * n)

    def arrange(self, values: Sequence[Hashable], any_order: bool = False) -> int:
        """Swap live wires until ``values`` sit side by side, in order (or in ``any_order``); return their offset."""
        free = list(range(len(self.live)))
        chosen = []
        for value in values:
            i = next(i for i in free if self.live[i] == value)
            chosen.append(i)
            free.remove(i)
        if any_order:
            chosen.sort()
        start = min(chosen, default=len(self.live))
        before = [i for i in free if i < start]
        self.permute(before + chosen + [i for i in free if i >= start])
        return len(before)

    def permute(self, order: Sequence[int]) -> None:
        """Reorder the live wires to ``[live[i] for i in order]`` by adjacent swaps."""
        where = list(range(len(self.live)))
        for target, source in enumerate(order):
            j = where.index(source)
            for k in range(j - 1, target - 1, -1):
                a, b = self.live[k], self.live[k + 1]
                self.put(Swap(self.space[a], self.space[b]), k, [b, a])
                where[k], where[k + 1] = where[k + 1], where[k]

    def read(self, values: Sequence[Hashable]) -> None:
        """Copy each value read by the next step as often as it is read, keeping one more if needed later."""
        for value, count in Counter(values).items():
            self.uses[value] -= count
            n = count + (self.uses[value] > 0)
            if n != 1:
                self.copy(value, n)


def wire_up(inputs: Sequence[tuple[Hashable, Space]], steps: Sequence[Application],
            outputs: Sequence[Hashable]) -> Diagram:
    """The diagram that feeds ``inputs`` (value, one-wire space) through ``steps`` in order to ``outputs``."""
    uses: Counter[Hashable] = Counter(outputs)
    for step in steps:
        uses.update(step.ins)
    walk = _Walk(inputs, uses)
    dom = walk._wires(walk.live)
    for value, _ in inputs:
        if uses[value] == 0:
            walk.copy(value, 0)
    for step in steps:
        walk.read(step.ins)
        walk.space.update(zip(step.outs, (Space(w) for w in step.box.cod.inside)))
        walk.put(step.box, walk.arrange(step.ins, any_order=step.box.spider), step.outs)
        for value in dict.fromkeys(step.outs):
            if uses[value] == 0:
                walk.copy(value, 0)
    walk.read(outputs)
    walk.arrange(outputs)
    return walk.pieces[0].then(*walk.pieces[1:]) if walk.pieces else Id(dom)
