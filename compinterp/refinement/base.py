"""What every refinement pass shares: rewrites as data, and the functor that applies them.

A refinement ``R`` rewrites a model's own diagram: it sends some boxes to
sub-diagrams with the same input and output spaces and every other box to
itself, so that ``[[R(d)]] ≈ [[d]]``. A pass proposes rewrites (:class:`Rewrite`)
and builds the rewritten model; the search scores each by faithfulness and bits.

>>> import torch
>>> from compinterp.syntax import Space, Linear, chain
>>> x, r = Space("x", 4), Space("r", 2)
>>> model = Model(Linear("f", x, x), seed=0)
>>> w = model.box_params("f")["W"].detach()
>>> u, s, vh = torch.linalg.svd(w)
>>> image = chain(Linear("f_in", x, r), Linear("f_out", r, x))
>>> params = {"f_in": {"W": vh[:2]}, "f_out": {"W": u[:, :2] * s[:2]}}
>>> low = substitute(model, {"f": image}, params)
>>> [box.name for box in low.diagram.boxes]
['f_in', 'f_out']
>>> str(Rewrite("lowrank", "f", {"rank": 2}))
'lowrank(f, rank=2)'
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from compinterp.interpretation import Interpretation
from compinterp.model import Model
from compinterp.syntax import Diagram


@dataclass(frozen=True)
class Rewrite:
    """One application of a pass: its name, the box it rewrites, and JSON settings."""

    pass_name: str
    box: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        args = "".join(f", {k}={v}" for k, v in self.settings.items())
        return f"{self.pass_name}({self.box}{args})"

    def to_json(self) -> dict[str, Any]:
        """``{"pass", "box", "settings"}``."""
        return {"pass": self.pass_name, "box": self.box, "settings": dict(self.settings)}


class Pass(Protocol):
    """A rewrite pass: proposes rewrites of a model's boxes and applies one."""

    name: str

    def candidates(self, model: Model) -> Sequence[Rewrite]:
        """Every rewrite this pass offers on ``model``, for each box it applies to, mildest setting first."""

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The model with ``rewrite`` applied; its diagram type-checks and has the same spaces."""


def substitute(model: Model, images: Mapping[str, Diagram],
               params: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
               modules: Mapping[str, nn.Module] | None = None) -> Model:
    """The functor sending box ``name`` to ``images[name]`` (same spaces) and every other box to itself.

    New boxes take their parameters from ``params`` (and ``modules``); boxes of the
    model kept in an image, and every other box, keep copies of the model's own
    (``Opaque`` modules included), so the new model shares no tensor with the old.
    """
    own = {name: copy.deepcopy(model.params[name]) for name, box in model.boxes.items() if box.opaque}
    return Interpretation(model, boxes=images, params=params, modules={**own, **(modules or {})},
                          rules=model.rules).explanation
