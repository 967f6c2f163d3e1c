"""The base of every box kind, and the checks their constructors share (names, wires, sizes).

>>> check_name("Linear", "mlp0")
'mlp0'
>>> positive("Linear", "up", "hidden", 0)
Traceback (most recent call last):
...
compinterp.errors.BoxError: Linear box 'up': hidden must be a positive integer, got 0
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from compinterp.errors import BoxError
from compinterp.syntax.diagram import Box
from compinterp.syntax.spaces import MAX_NAME, Space

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


def check_name(kind: str, name: str) -> str:
    """``name``, if it is a valid box name (it keys the parameters)."""
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise BoxError(f"{kind} box name {name!r:.{MAX_NAME + 2}} is not valid: use up to {MAX_NAME} letters, digits, "
                       "'_' or '-', starting with a letter (names key the parameters, so no '.')")
    return name


def one_wire(kind: str, name: str, role: str, space: Space) -> Space:
    """``space``, if it is one wire."""
    if not isinstance(space, Space):
        raise BoxError(f"{kind} box '{name}': {role} must be a Space, got {space!r}")
    if len(space) != 1:
        raise BoxError(f"{kind} box '{name}': {role} must be one wire, got {space} ({len(space)} wires)")
    return space


def positive(kind: str, name: str, what: str, value: Any) -> int:
    """``value``, if it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BoxError(f"{kind} box '{name}': {what} must be a positive integer, got {value!r}")
    return value


class Kind(Box):
    """Base of the box kinds: a constructor per kind and the parameter shapes it needs."""

    kind: ClassVar[str] = "Kind"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each named parameter this box reads from the store."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The box as JSON: kind, name, spaces and hyperparameters."""
        return {"kind": self.kind, "name": self.name, "dom": self.dom.to_json(),
                "cod": self.cod.to_json(), "data": dict(self.data)}
