"""Spaces: the objects of the syntax category, named wires with a dimension.

A wire ``resid:64`` carries tensors of shape ``(..., 64)``; leading axes are batch
(and sequence) axes. A :class:`Space` is a monoidal product of such wires.

>>> resid, hidden = Space("resid", 64), Space("hidden", 256)
>>> resid @ hidden
Space('resid:64', 'hidden:256')
>>> (resid @ hidden).dims
(64, 256)
>>> Space("resid:64") == resid
True
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from discopy import cat, monoidal
from discopy.utils import factory

from compinterp.errors import BoxError

_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
MAX_NAME = 128
"""The longest wire label or box name (characters)."""
MAX_DIM = 2 ** 31 - 1
"""The largest wire dimension."""


class Wire(cat.Ob):
    """One atomic wire: a label and a positive dimension, written ``label:dim``.

    >>> Wire("logits", 10).name
    'logits:10'
    """

    def __init__(self, label: str, dim: int | None = None) -> None:
        if dim is None:
            label, dim = _parse(label)
        if not isinstance(label, str) or len(label) > MAX_NAME or not _LABEL.fullmatch(label):
            raise BoxError(
                f"bad wire label {label!r}: use letters, digits, '_' or '-', starting with a letter")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= MAX_DIM:
            raise BoxError(f"wire {label!r} needs a positive integer dimension up to {MAX_DIM}, got {dim!r:.40}")
        self.label, self.dim = label, dim
        super().__init__(f"{label}:{dim}")

    def __repr__(self) -> str:
        return f"Wire({self.label!r}, {self.dim})"


def _parse(text: str) -> tuple[str, int]:
    """Split ``"resid:64"`` into ``("resid", 64)``."""
    if not isinstance(text, str) or text.count(":") != 1:
        raise BoxError(f"cannot read a wire from {text!r:.80}: write it as 'label:dim', e.g. 'resid:64'")
    label, dim = text.split(":")
    if not dim.removeprefix("-").isdigit() or len(dim) > len(str(MAX_DIM)) + 1:
        raise BoxError(f"cannot read a wire from {text!r:.80}: dimension {dim!r:.40} is not an integer "
                       f"from 1 to {MAX_DIM}")
    return label, int(dim)


@factory
class Space(monoidal.Ty):
    """A monoidal product of wires; ``Space("resid", 64)`` is one wire.

    Arguments are :class:`Wire` objects or ``"label:dim"`` strings; the pair
    ``(label, dim)`` is a shorthand for a single wire.
    """

    ob_factory = Wire

    def __init__(self, *inside: str | Wire | int) -> None:
        if len(inside) == 2 and isinstance(inside[0], str) and isinstance(inside[1], int):
            inside = (Wire(inside[0], inside[1]),)
        super().__init__(*(x if isinstance(x, Wire) else Wire(x) for x in inside))

    def __repr__(self) -> str:
        return "Space(" + ", ".join(repr(w.name) for w in self.inside) + ")"

    def __str__(self) -> str:
        return " @ ".join(w.name for w in self.inside) if self.inside else "()"

    def __iter__(self) -> Iterator[Space]:
        for wire in self.inside:
            yield self.factory(wire)

    @property
    def wires(self) -> tuple[Wire, ...]:
        """The atomic wires, left to right."""
        return self.inside

    @property
    def dims(self) -> tuple[int, ...]:
        """The dimension of each wire."""
        return tuple(w.dim for w in self.inside)

    @property
    def dim(self) -> int:
        """The dimension of a one-wire space.

        >>> Space("x", 3).dim
        3
        """
        if len(self.inside) != 1:
            raise BoxError(f"space {self} has {len(self.inside)} wires; .dim needs exactly one")
        return self.inside[0].dim

    def to_json(self) -> list[str]:
        """The wire names, for files."""
        return [w.name for w in self.inside]

    @classmethod
    def from_json(cls, names: list[str]) -> Space:
        """Inverse of :meth:`to_json`."""
        return cls(*names)
