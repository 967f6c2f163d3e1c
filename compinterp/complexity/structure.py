"""Structure bits: what a reader must be told to rebuild a diagram's boxes and wiring.

The code follows the diagram's file format (:mod:`compinterp.syntax.serialize`): the
input wires, a table of the distinct boxes, then one ``[box, offset]`` entry per layer.
Every term is written out in ``docs/description_length.md``.

>>> from compinterp.syntax import Space, Linear
>>> x, y = Space("x", 4), Space("y", 2)
>>> rows = structure_rows(Linear("f", x, y))
>>> [(name, round(bits, 3)) for name, _, bits in rows]
[('(diagram)', 14.0), ('f', 19.322)]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from compinterp.complexity.codes import choice_bits, gamma_bits
from compinterp.syntax import ELEMENTWISE, KINDS, Diagram, diagram_to_json
from compinterp.syntax.boxes import NORMS

HEADER = "(diagram)"
"""The name of the row holding the bits of the diagram's own header."""

_SIZES = ("hidden", "heads", "head_dim", "k", "kv_heads", "rotary_dim", "window", "positions")


def vocabulary(kinds: set[str]) -> int:
    """``K``: the number of box kinds a box is chosen from, compinterp's own and Swap, plus any
    other kind that appears."""
    return len(set(KINDS) | {"Swap"} | kinds)


def hyper_bits(kind: str, data: Mapping[str, Any], precision: int) -> float:
    """The bits of a box's hyperparameters (its ``data``), one rule per kind of value.

    >>> hyper_bits("Bilinear", {"hidden": 64, "bias": False}, 32)
    14.0
    """
    bits = 0.0
    cls = KINDS.get(kind)
    for key, value in data.items():
        if cls is not None and ((key == "n" and cls.spider) or (key == "description" and cls.opaque)):
            continue
        if isinstance(value, bool):
            bits += 1
        elif key in _SIZES and isinstance(value, int) and value >= 1:
            bits += gamma_bits(value)
        elif key in ("fn", "activation"):
            bits += choice_bits(len(ELEMENTWISE))
        elif key == "norm":
            bits += choice_bits(len(NORMS))
        elif key == "eps":
            bits += 1 + (precision if value is not None else 0)
        else:
            bits += 8 * len(json.dumps(value, sort_keys=True))
    return bits


def structure_rows(diagram: Diagram, precision: int = 32) -> list[tuple[str, str, float]]:
    """``(name, kind, bits)``: the header row, then one row per box name in diagram order.

    A box's row holds its entry in the box table and every placement of it in the
    layers; boxes that share a name (a spider used on several spaces) share a row.
    """
    obj = diagram_to_json(diagram)
    boxes, layers = obj["boxes"], obj["layers"]
    k = vocabulary({entry["kind"] for entry in boxes})
    header = (gamma_bits(len(obj["dom"]) + 1) + sum(gamma_bits(_dim(w)) for w in obj["dom"])
              + gamma_bits(len(boxes) + 1) + gamma_bits(len(layers) + 1))
    rows: dict[str, list[Any]] = {}
    for entry in boxes:
        bits = (choice_bits(k) + gamma_bits(len(entry["dom"]) + 1) + gamma_bits(len(entry["cod"]) + 1)
                + sum(gamma_bits(_dim(w)) for w in (*entry["dom"], *entry["cod"]))
                + hyper_bits(entry["kind"], entry["data"], precision))
        row = rows.setdefault(entry["name"], [entry["kind"], 0.0])
        row[1] += bits
    wires = len(obj["dom"])
    for index, _ in layers:
        entry = boxes[index]
        n_in = len(entry["dom"])
        rows[entry["name"]][1] += choice_bits(len(boxes)) + choice_bits(wires - n_in + 1)
        wires += len(entry["cod"]) - n_in
    return [(HEADER, "", float(header)), *((name, kind, bits) for name, (kind, bits) in rows.items())]


def _dim(wire: str) -> int:
    """The dimension of a wire written ``label:dim``."""
    return int(wire.rsplit(":", 1)[1])
