"""Sparse codes: the per-example bits of a model's dictionary features, measured on data.

A *sparse layer* is a ``Linear`` (or ``Unembed``) box that reads a wire named
``features`` (:data:`FEATURES`): the decoder of a dictionary (``docs/dictionary.md``).
What it reads is a code of ``F`` features of which ``L0`` are active (non-zero) per
example on average, told example by example by naming each active feature (``log2 F``
bits) and its value (``b`` bits):

    code = examples * L0 * (b + log2 F)

``L0`` and ``examples`` are measured by running the model on data (an example is one
row of the feature wire: a token, for sequence models).

>>> code_bits(l0=3, width=32, value_bits=8)
39.0
>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear, TopK, chain
>>> x, f = Space("x", 4), Space(FEATURES, 8)
>>> model = Model(chain(Linear("enc", x, f), TopK("keep", f, 2, absolute=True), Linear("dec", f, x)),
...               seed=0)
>>> [box.name for box in sparse_layers(model.diagram)]
['dec']
>>> code = measure_codes(model, [(torch.randn(100, 4),)])[0]
>>> code.l0, code.examples, code.bits == 100 * 2 * (8 + 3)
(2.0, 100, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from compinterp.errors import InputError
from compinterp.model import Model
from compinterp.interventions import run_edited
from compinterp.syntax import Box, Diagram

FEATURES = "features"
"""The name of the wire a dictionary's features travel on (``features:F``)."""

VALUE_BITS = 8
"""``b``: the bits each active feature's value costs, unless stated."""

def code_bits(l0: float, width: int, value_bits: int = VALUE_BITS) -> float:
    """``L0 * (b + log2 F)``: bits per example to name ``l0`` active features out of ``width``, ``b`` bits each."""
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise InputError(f"the dictionary width must be a positive integer, got {width!r}")
    if not l0 >= 0 or not value_bits >= 0:
        raise InputError(f"L0 and the bits per value must be non-negative, got {l0!r} and {value_bits!r}")
    return float(l0) * (value_bits + math.log2(width))


@dataclass(frozen=True)
class Code:
    """The code read by decoder ``box``: ``l0`` of ``width`` features active per example on average,
    over ``examples`` examples, each value at ``value_bits`` bits."""

    box: str
    width: int
    l0: float
    examples: int
    value_bits: int = VALUE_BITS

    @property
    def bits(self) -> float:
        """``examples * L0 * (b + log2 F)``."""
        return self.examples * code_bits(self.l0, self.width, self.value_bits)

    def to_json(self) -> dict[str, Any]:
        """``{"box", "width", "l0", "examples", "value_bits", "bits"}``."""
        return {"box": self.box, "width": self.width, "l0": self.l0, "examples": self.examples,
                "value_bits": self.value_bits, "bits": self.bits}


def sparse_layers(diagram: Diagram) -> list[Box]:
    """The decoders of ``diagram``'s sparse layers (affine boxes, ``Linear`` or ``Unembed``, reading
    one wire named :data:`FEATURES`), each once, in diagram order."""
    found: dict[str, Box] = {}
    for _, box in diagram.walk():
        if box.affine and len(box.dom) == 1 and box.dom.wires[0].label == FEATURES:
            found.setdefault(box.name, box)
    return list(found.values())


def measure_codes(model: Model, batches: Iterable[tuple[torch.Tensor, ...]],
                  value_bits: int = VALUE_BITS) -> tuple[Code, ...]:
    """The code of each sparse layer of ``model``, measured on ``batches``
    of its inputs (on its device and dtype): the mean number of non-zero features per example, every
    use of a decoder counted."""
    decoders = {box.name: box.dom.dim for box in sparse_layers(model.diagram)}
    if not decoders:
        return ()
    active, rows = dict.fromkeys(decoders, 0), dict.fromkeys(decoders, 0)
    plan, params, n = model.plan, model.plan_params(), len(model.dom)
    codes = [(step.box.name, step.ins[0]) for step in plan.steps if step.box.name in decoders]
    with torch.inference_mode():
        for batch in batches:
            _, values, _ = run_edited(plan, params, batch[:n], keep={r for _, r in codes}, outputs=False)
            for name, r in codes:
                z = values[r]
                active[name] += int((z != 0).sum())
                rows[name] += z.numel() // max(z.shape[-1], 1)
    return tuple(Code(name, width, active[name] / max(rows[name], 1), rows[name], value_bits)
                 for name, width in decoders.items())
