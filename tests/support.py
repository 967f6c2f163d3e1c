"""Helpers shared by the tests: error assertions and a user-defined box kind."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compinterp.syntax import Kind, Space


def assert_error(kind: type[Exception], make: Callable[[], object], *fragments: str) -> str:
    """``make()`` raises ``kind`` with a one-line message naming every fragment; returns the message."""
    with pytest.raises(kind) as info:
        make()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


class Quadratic(Kind):
    """A user-defined box kind ``y = D (L x)^2``, with its torch semantics in :func:`quadratic_rule`."""

    kind = "Quadratic"

    def __init__(self, name: str, dom: Space, cod: Space, hidden: int) -> None:
        super().__init__(name, dom, cod, {"hidden": hidden})

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"L": (self.data["hidden"], self.dom.dim), "D": (self.cod.dim, self.data["hidden"])}


def quadratic(p: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor]:
    """``D (L x)^2``."""
    return (F.linear(F.linear(x, p["L"]).square(), p["D"]),)


def quadratic_rule(box: Kind) -> Callable[..., tuple[torch.Tensor]]:
    """The kernel of every :class:`Quadratic` box."""
    return quadratic


def rehash(folder: Path) -> None:
    """Rewrite meta.json's sizes and checksums after a test edited the files (to reach deeper checks)."""
    meta = json.loads((folder / "meta.json").read_text())
    for name in meta["files"]:
        data = (folder / name).read_bytes()
        meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))
