"""Diagrams as JSON: each distinct box listed once, then the layers as ``[box index, offset]``.

discopy's own ``dumps``/``loads`` fail on our boxes, so compinterp writes its
own format. Reading checks every layer on the way and builds each layer's types
straight from the wires already checked (discopy's own constructors re-check
every wire of every layer, which made a wide diagram quadratic to read): its
cost is the boxes plus one C-level slice per layer. A file's diagram is capped
before anything is built: :data:`MAX_LAYERS` layers and boxes,
:data:`MAX_WIDTH` wires side by side, :data:`MAX_WIRES` wires summed over the
layers.

>>> from compinterp.syntax import Space, Linear, Bilinear, residual
>>> x, y = Space("x", 4), Space("y", 2)
>>> diagram = residual(Bilinear("mlp", x, x, hidden=8)) >> Linear("out", x, y)
>>> obj = diagram_to_json(diagram)
>>> [box["name"] for box in obj["boxes"]], obj["layers"]
(['copy', 'mlp', 'add', 'out'], [[0, 0], [1, 0], [2, 0], [3, 0]])
>>> diagram_from_json(obj) == diagram
True
>>> diagram_from_json(obj | {"layers": [[3, 0], [3, 0]]})
Traceback (most recent call last):
...
compinterp.errors.FormatError: diagram layer 1 (box 'out' (Linear x:4 -> y:2)): needs x:4 at offset 0 but the wires there are y:2
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from discopy import cat
from discopy.monoidal import Layer

from compinterp.disk import MAX_SHOWN, shown
from compinterp.errors import BoxError, CompinterpError, FormatError
from compinterp.syntax.boxes import box_from_json, box_to_json
from compinterp.syntax.diagram import Box, Diagram, Swap
from compinterp.syntax.spaces import Space, Wire

DIAGRAM_FORMAT_VERSION = 1
"""The version of the diagram JSON layout that :func:`diagram_to_json` writes."""
MAX_LAYERS = 100_000
"""The most layers (and the most distinct boxes) a diagram read from JSON may have."""
MAX_WIDTH = 4096
"""The most wires side by side, at any layer, in a diagram read from JSON."""
MAX_WIRES = 2 ** 22
"""The most wires summed over the layers of a diagram read from JSON (what its types cost to hold)."""


def diagram_to_json(diagram: Diagram) -> dict[str, Any]:
    """The diagram as JSON: ``version``, ``dom``, ``cod``, unique ``boxes`` and ``layers``.

    Each layer is ``[i, offset]``: box ``boxes[i]`` with ``offset`` wires to its left.
    """
    if not isinstance(diagram, Diagram):
        raise FormatError(f"can only serialise a compinterp Diagram, got {type(diagram).__name__}")
    boxes: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    layers: list[list[int]] = []
    for offset, box in diagram.walk():
        entry, key = _box_json(box, len(layers))
        if key not in index:
            index[key] = len(boxes)
            boxes.append(entry)
        layers.append([index[key], offset])
    return {"version": DIAGRAM_FORMAT_VERSION, "dom": diagram.dom.to_json(), "cod": diagram.cod.to_json(),
            "boxes": boxes, "layers": layers}


def diagram_from_json(obj: Mapping[str, Any]) -> Diagram:
    """Rebuild a diagram written by :func:`diagram_to_json`, checking every layer.

    Raises :class:`~compinterp.errors.FormatError` naming the layer and box at fault.
    """
    if not isinstance(obj, Mapping):
        raise FormatError(f"a diagram must be a JSON object, got {type(obj).__name__}")
    missing = [key for key in ("dom", "cod", "boxes", "layers") if key not in obj]
    if missing:
        raise FormatError(f"diagram JSON lacks {', '.join(repr(k) for k in missing)}")
    version = obj.get("version", DIAGRAM_FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= DIAGRAM_FORMAT_VERSION:
        raise FormatError(f"diagram JSON has version {shown(version, 40)}; this compinterp reads versions up to "
                          f"{DIAGRAM_FORMAT_VERSION}: upgrade compinterp")
    if not isinstance(obj["boxes"], list) or not isinstance(obj["layers"], list):
        raise FormatError("diagram JSON: 'boxes' and 'layers' must be lists")
    for key in ("boxes", "layers"):
        if len(obj[key]) > MAX_LAYERS:
            raise FormatError(f"diagram JSON has {len(obj[key]):,} {key}; compinterp reads at most {MAX_LAYERS:,}")
    dom, cod = _space(obj["dom"], "the diagram's input"), _space(obj["cod"], "the diagram's output")
    boxes = [_box(entry, i) for i, entry in enumerate(obj["boxes"])]
    wires: list[Wire] = list(dom.wires)
    names: list[str] = [w.name for w in wires]
    current, total = dom, 0
    inside = []
    for j, layer in enumerate(obj["layers"]):
        box, offset = _layer(layer, j, boxes)
        n = len(box.dom)
        here = f"diagram layer {j} ({_named(box)})"
        if offset > len(wires) - n:
            raise FormatError(f"{here}: offset {offset} leaves no room for its {n} input wire(s); "
                              f"the diagram has {len(wires)} wire(s) at this layer")
        if tuple(wires[offset:offset + n]) != box.dom.wires:
            found = " @ ".join(names[offset:offset + n]) or "()"
            raise FormatError(f"{here}: needs {box.dom} at offset {offset} but the wires there are {_cut(found)}")
        wires[offset:offset + n] = box.cod.wires
        names[offset:offset + n] = [w.name for w in box.cod.wires]
        total += len(wires)
        if len(wires) > MAX_WIDTH or total > MAX_WIRES:
            raise FormatError(f"{here}: the diagram grows past {MAX_WIDTH:,} wires side by side or "
                              f"{MAX_WIRES:,} wires over its layers, more than compinterp reads")
        if len(wires) == len(box.cod):              # the box spans the diagram: reuse its own layer
            inside.append(box.inside[0])
            current = box.cod
            continue
        left = _typed(tuple(wires[:offset]), names[:offset])
        right = _typed(tuple(wires[offset + len(box.cod):]), names[offset + len(box.cod):])
        after = _typed(tuple(wires), names)
        inside.append(_layer_of(left, box, right, current, after))
        current = after
    if tuple(wires) != cod.wires:
        raise FormatError(f"diagram JSON: the layers end on {_cut(' @ '.join(names) or '()')} but the output is "
                          f"declared as {_cut(str(cod))}")
    return Diagram(tuple(inside), dom, cod, _scan=False)


def _typed(wires: tuple[Wire, ...], names: list[str]) -> Space:
    """The space of ``wires`` (already checked, named ``names``), built without re-checking each wire:
    what ``Space(*wires)`` gives, at the cost of one slice and one join."""
    space = Space.__new__(Space)
    space.inside = wires
    cat.Ob.__init__(space, " @ ".join(names) or "()")
    return space


def _layer_of(left: Space, box: Box, right: Space, dom: Space, cod: Space) -> Layer:
    """``Layer(left, box, right)`` with its ``dom`` and ``cod`` given (``left @ box.dom @ right`` and
    ``left @ box.cod @ right``, already built), so no type is rebuilt."""
    layer = Layer.__new__(Layer)
    layer.boxes_or_types = (left, box, right)
    name = " @ ".join(part for part in (left.name if left.inside else "", str(box),
                                       right.name if right.inside else "") if part)
    cat.Box.__init__(layer, name, dom, cod)
    return layer


def _box_json(box: Box, j: int) -> tuple[dict[str, Any], str]:
    """``box_to_json`` and its text (the key that finds repeats), or a :class:`FormatError` naming the layer."""
    if not hasattr(box, "to_json") and not isinstance(box, Swap):
        raise FormatError(f"diagram layer {j}: {_named(box)} is a plain {type(box).__name__}, not one of "
                          "compinterp's box kinds, so it cannot be written to a file")
    entry = box_to_json(box)
    try:
        return entry, json.dumps(entry, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise FormatError(f"diagram layer {j}: {_named(box)} has data that is not JSON: {err}") from None


def _names(names: Any, what: str) -> None:
    """Check that ``names`` is a list of strings, else a :class:`FormatError` saying whose it was."""
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise FormatError(f"diagram JSON: {what} must be a list of wire names like 'resid:64', got {shown(names)}")


def _space(names: Any, what: str) -> Space:
    """A space from its JSON wire names, or a :class:`FormatError` saying whose it was."""
    _names(names, what)
    try:
        return Space.from_json(names)
    except BoxError as err:
        raise FormatError(f"diagram JSON: {what}: {err}") from None


def _box(entry: Any, i: int) -> Box:
    """Box ``i`` of the JSON box list, or a :class:`FormatError` naming it."""
    name = entry.get("name") if isinstance(entry, dict) else None
    here = f"diagram box {i} ({shown(name, 60)})"
    if not isinstance(entry, dict) or not {"kind", "name", "dom", "cod"} <= set(entry):
        raise FormatError(f"{here}: a box needs 'kind', 'name', 'dom' and 'cod', got {shown(entry)}")
    if not isinstance(entry.get("data", {}), dict):
        raise FormatError(f"{here}: 'data' must be a JSON object, got {shown(entry['data'])}")
    _names(entry["dom"], f"box {i} ({shown(name, 60)}) input")
    _names(entry["cod"], f"box {i} ({shown(name, 60)}) output")
    try:
        box = box_from_json(entry)
    except CompinterpError as err:
        raise FormatError(f"{here}: {_cut(str(err))}") from None
    except (TypeError, ValueError, ArithmeticError, RecursionError) as err:
        raise FormatError(f"{here}: its data does not fit a {shown(entry['kind'], 40)} box "
                          f"({type(err).__name__}: {_cut(str(err))})") from None
    return box


def _named(box: Box) -> str:
    """``box 'up' (Linear resid:64 -> hidden:256)``."""
    return f"box '{box.name}' ({box.kind} {box.dom} -> {box.cod})"


def _layer(layer: Any, j: int, boxes: list[Box]) -> tuple[Box, int]:
    """The box and offset of layer ``j``, checked to be a valid index and a non-negative integer."""
    ok = (isinstance(layer, list) and len(layer) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in layer))
    if not ok:
        raise FormatError(f"diagram layer {j}: expected [box index, offset], got {shown(layer)}")
    i, offset = layer
    if not 0 <= i < len(boxes):
        raise FormatError(f"diagram layer {j}: box index {i} is out of range (there are {len(boxes)} boxes)")
    if offset < 0:
        raise FormatError(f"diagram layer {j} ({_named(boxes[i])}): negative offset {offset}")
    return boxes[i], offset


def _cut(message: str) -> str:
    """An error message quoting file content, cut to a line a reader can take in."""
    message = " ".join(message.split())
    return message if len(message) <= 2 * MAX_SHOWN else message[:2 * MAX_SHOWN - 3] + "..."
