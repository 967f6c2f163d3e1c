"""Diagrams: arrows of the free symmetric monoidal category on our boxes.

Composition type-checks when the diagram is built, and a mismatch names the
boxes on both sides and the spaces that fail to meet.

>>> x, y = Space("x", 2), Space("y", 3)
>>> f, g = Box("f", x, y), Box("g", y, x)
>>> (f >> g).cod
Space('x:2')
>>> f >> f
Traceback (most recent call last):
...
compinterp.errors.CompositionError: cannot compose f (x:2 -> y:3) with f (x:2 -> y:3): output 0 is y:3, made by box 'f' (x:2 -> y:3), but the next diagram needs x:2 there, for box 'f' (x:2 -> y:3)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from discopy import monoidal, symmetric
from discopy.utils import factory

from compinterp.errors import BoxError, CompositionError
from compinterp.syntax.spaces import Space


@factory
class Diagram(symmetric.Diagram):
    """A string diagram whose wires are :class:`Space` objects."""

    ty_factory = Space

    def then(self, *others: Diagram) -> Diagram:
        """Sequential composition ``self >> other``, checked wire by wire."""
        left = self
        for other in others:
            if not isinstance(other, Diagram):
                raise CompositionError(
                    f"cannot compose {describe(self)} with {other!r}: it is not a compinterp diagram")
            if left.cod != other.dom:
                raise CompositionError(_mismatch(left, other))
            left = other
        return super().then(*others)

    def tensor(self, other: Diagram | None = None, *others: Diagram) -> Diagram:
        """Parallel composition ``self @ other``."""
        for diagram in (other, *others):
            if diagram is not None and not isinstance(diagram, Diagram):
                raise CompositionError(
                    f"cannot put {diagram!r} beside {describe(self)}: it is not a compinterp diagram")
        return super().tensor(other, *others)

    def walk(self) -> Iterator[tuple[int, Box]]:
        """Each box with its offset (wires to its left), in the order of the layers."""
        for layer in self.inside:
            left, box, _ = layer
            yield len(left), box

    def __repr__(self) -> str:
        return f"<Diagram {self.dom} -> {self.cod}, {len(self.inside)} boxes>"


class Box(symmetric.Box, Diagram):
    """A generator: a named box with input and output spaces and JSON hyperparameters.

    Subclasses are the box kinds (``Linear``, ``Bilinear`` ...); the name keys the
    box's parameters in a model's store, so boxes hold no tensors.
    """

    kind: str = "Box"
    polynomial: ClassVar[bool] = False
    """Whether the box computes a polynomial of its inputs (tensor semantics exist)."""
    spider: ClassVar[bool] = False
    """A Frobenius spider (copy, add, multiply): wires in, wires out, no parameters."""
    polymorphic: ClassVar[bool] = False
    """Defined on any space, so one name may stand for boxes on different wires (spiders, pointwise maps)."""
    opaque: ClassVar[bool] = False
    """Holds a torch module instead of named parameters: computed, not analysed."""
    affine: ClassVar[bool] = False
    """Computes ``W x + b`` with a weight ``W`` (and bias ``b``)."""
    gated: ClassVar[bool] = False
    """Computes ``D(f(L x) * R x)`` through a hidden layer (bilinear and gated MLPs)."""
    has_heads: ClassVar[bool] = False
    """Splits its wire into heads (attention): ``data["heads"]`` of ``data["head_dim"]``."""

    def __init__(self, name: str, dom: Space, cod: Space, data: dict[str, Any] | None = None) -> None:
        symmetric.Box.__init__(self, name, dom, cod, data=dict(data or {}))

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Box:
        """The box of this kind written as ``name``, ``dom``, ``cod`` and ``data`` (see ``box_from_json``)."""
        return cls(name, dom, cod, **data)

    def __repr__(self) -> str:
        return f"{self.kind}({self.name!r}, {self.dom} -> {self.cod})"

    def dagger(self) -> Box:
        """Boxes of a network have no dagger."""
        raise CompositionError(f"box {describe(self)} has no dagger (adjoint) in compinterp")


class Swap(symmetric.Swap, Box):
    """Exchange two spaces: ``Swap(x, y) : x @ y -> y @ x``."""

    kind = "Swap"

    def __init__(self, left: Space, right: Space, is_dagger: bool = False) -> None:
        if len(left) != 1 or len(right) != 1:
            raise CompositionError(f"Swap({left}, {right}) needs one wire on each side; "
                                   "use Diagram.swap(left, right) for several")
        symmetric.Swap.__init__(self, left, right)

    def __repr__(self) -> str:
        return f"Swap({self.left}, {self.right})"

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Swap:
        """The swap ``x @ y -> y @ x`` written with these spaces."""
        if len(dom) != 2 or cod != dom[1:] @ dom[:1]:
            raise BoxError(f"a swap must go from x @ y to y @ x, got {dom} -> {cod}")
        return cls(dom[:1], dom[1:])

    def dagger(self) -> Swap:
        """The inverse swap."""
        return Swap(self.right, self.left)


Diagram.braid_factory = Swap
Id = Diagram.id


def describe(diagram: monoidal.Diagram) -> str:
    """A short human name: ``box 'up' (resid:64 -> hidden:256)`` or the diagram's type."""
    if isinstance(diagram, Box):
        return f"{diagram.name} ({diagram.dom} -> {diagram.cod})"
    names = [box.name for _, box in Diagram.walk(diagram)]
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    return f"diagram [{shown}] ({diagram.dom} -> {diagram.cod})" if names \
        else f"identity on {diagram.dom}"


def named_boxes(diagram: Diagram) -> dict[str, Box]:
    """The diagram's boxes by name; a name used twice must denote the same box (shared weights).

    (Also importable as ``compinterp.model.named_boxes``.)
    """
    boxes: dict[str, Box] = {}
    for _, box in diagram.walk():
        if isinstance(box, Swap):
            continue
        seen = boxes.setdefault(box.name, box)
        if seen != box and (not box.polymorphic or type(seen) is not type(box)):
            raise BoxError(f"box name '{box.name}' is used for two different boxes: {seen!r} and {box!r}; "
                           "a repeated name means shared parameters, so the boxes must be equal")
    return boxes


def _box_or_input(origin: Box | None, side: str) -> str:
    if origin is None:
        return f"an identity wire from the diagram's {side}"
    return f"box '{origin.name}' ({origin.dom} -> {origin.cod})"


def _producers(diagram: Diagram) -> list[Box | None]:
    """For each output wire, the box that made it (``None``: an input passed through)."""
    origins: list[Box | None] = [None] * len(diagram.dom)
    for offset, box in diagram.walk():
        n = len(box.dom)
        if isinstance(box, Swap):
            made = origins[offset + len(box.left):offset + n] + origins[offset:offset + len(box.left)]
        else:
            made = [box] * len(box.cod)
        origins = origins[:offset] + made + origins[offset + n:]
    return origins


def _consumers(diagram: Diagram) -> list[Box | None]:
    """For each input wire, the box that reads it (``None``: passed through to the output)."""
    users: list[Box | None] = [None] * len(diagram.cod)
    for offset, box in reversed(list(diagram.walk())):
        n = len(box.cod)
        if isinstance(box, Swap):
            read = users[offset + len(box.right):offset + n] + users[offset:offset + len(box.right)]
        else:
            read = [box] * len(box.dom)
        users = users[:offset] + read + users[offset + n:]
    return users


def _mismatch(left: Diagram, right: Diagram) -> str:
    head = f"cannot compose {describe(left)} with {describe(right)}: "
    made, used = _producers(left), _consumers(right)
    for i, (a, b) in enumerate(zip(left.cod.wires, right.dom.wires)):
        if a != b:
            return head + (f"output {i} is {a.name}, made by {_box_or_input(made[i], 'input')}, "
                           f"but the next diagram needs {b.name} there, "
                           f"for {_box_or_input(used[i], 'output')}")
    return head + (f"the first gives {len(left.cod)} wires ({left.cod}) "
                   f"but the second takes {len(right.dom)} ({right.dom})")
