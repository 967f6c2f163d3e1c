"""The ``TopK`` box: a sparse activation keeping the ``k`` largest of ``F`` features per example.

It is a box kind with no parameters; its torch semantics is a rule (:data:`RULES`)
that a model carries (``Model(diagram, rules=RULES)``), so the built-in kernels stay
untouched. ``absolute=False`` keeps the ``k`` largest values and applies a ReLU
(TopK SAEs); ``absolute=True`` keeps the ``k`` of largest magnitude, signs and all
(bilinear autoencoders, whose latents have either sign).

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space
>>> f = Space("features", 4)
>>> keep = Model(TopK("keep", f, k=2), rules=RULES)
>>> keep(torch.tensor([[3.0, -5.0, 1.0, 2.0]]))
tensor([[3., 0., 0., 2.]])
>>> Model(TopK("keep", f, k=2, absolute=True), rules=RULES)(torch.tensor([[3.0, -5.0, 1.0, 2.0]]))
tensor([[ 3., -5.,  0.,  0.]])
>>> TopK("keep", f, k=5)
Traceback (most recent call last):
...
compinterp.errors.BoxError: TopK box 'keep': k must be from 1 to the width 4 of features:4, got 5
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

import torch

from compinterp.errors import BoxError
from compinterp.syntax import Space
from compinterp.syntax.boxes import Kind, _check_name, _one_wire
from compinterp.syntax.diagram import Box


class TopK(Kind):
    """Keep the ``k`` largest features of each example, zero the rest (then ReLU unless ``absolute``)."""

    kind = "TopK"

    def __init__(self, name: str, space: Space, k: int, absolute: bool = False) -> None:
        _check_name(self.kind, name)
        width = _one_wire(self.kind, name, "space", space).dim
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width:
            raise BoxError(f"TopK box '{name}': k must be from 1 to the width {width} of {space}, got {k!r}")
        super().__init__(name, space, space, {"k": k, "absolute": bool(absolute)})


def topk(k: int, absolute: bool, _params: Any, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``x`` with all but its ``k`` largest (by magnitude if ``absolute``) entries per row zeroed."""
    index = (x.abs() if absolute else x).topk(k, dim=-1).indices
    kept = torch.zeros_like(x).scatter(-1, index, x.gather(-1, index))
    return (kept if absolute else kept.relu(),)


def topk_rule(box: Box) -> Any:
    """The torch semantics of a :class:`TopK` box."""
    return partial(topk, box.data["k"], box.data["absolute"])


RULES: Mapping[str, Any] = MappingProxyType({"TopK": topk_rule})
"""The rules a model with dictionary boxes needs: ``Model(diagram, rules=RULES)``."""
