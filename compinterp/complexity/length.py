"""Description length: the bits a reader must be told to rebuild an explanation, term by term.

``structure`` (boxes and wiring), ``parameters`` (every stored number), given data the
``code`` of any sparse layer (a dictionary's features, ``examples * L0 * (b + log2 F)``,
see :mod:`compinterp.complexity.sparse`) and, given a reference model and data, ``error``
(the bits to correct the explanation's outputs to the reference's under a Gaussian noise
model). ``docs/description_length.md`` writes out every term, with a worked example.

>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear
>>> model = Model(Linear("f", Space("x", 4), Space("y", 2)), seed=0)
>>> bits = description_length(model)
>>> round(bits.structure, 3), bits.parameters, bits.error, round(bits.total, 3)
(33.322, 262.0, 0.0, 295.322)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from compinterp.complexity.codes import choice_bits, gamma_bits
from compinterp.complexity.parameters import TensorCode, ordered_keys, parameter_codes
from compinterp.complexity.sparse import Code, measure_codes, sparse_layers
from compinterp.complexity.structure import HEADER, structure_rows
from compinterp.data import as_source, placed, placement
from compinterp.errors import InputError
from compinterp.faithfulness import check
from compinterp.interpretation import Interpretation
from compinterp.interpretation.maps import MAPS as MAPS_BY_KIND
from compinterp.interpretation.maps import Identity
from compinterp.model import Model
from compinterp.semantics import inputs
from compinterp.syntax import Diagram

MAPS = "(maps)"
"""The name of the row holding the number of an interpretation's non-identity wire maps."""

_NO_CODE = "note: the per-example code"
"""How the note saying that sparse layers' code is not counted begins."""

RESOLUTION = 0.01
"""Default resolution ``delta`` of the error term, as a fraction of the reference outputs' standard deviation."""


@dataclass(frozen=True)
class Part:
    """One row of the account: a box (or the diagram's header, or a wire map) and its bits."""

    name: str
    kind: str
    structure: float
    parameters: float
    numbers: int

    def to_json(self) -> dict[str, Any]:
        """``{"name", "kind", "structure", "parameters", "numbers"}``."""
        return {"name": self.name, "kind": self.kind, "structure": self.structure,
                "parameters": self.parameters, "numbers": self.numbers}


@dataclass(frozen=True)
class Bits:
    """A description length in bits, each term separately; ``total`` is their sum.

    ``error`` is ``error_per_example * examples`` (0 without a reference); an example is
    one output vector. ``parts`` splits structure and parameters by box; ``codes`` holds the
    code of each sparse layer (none without data).
    """

    structure: float
    parameters: float
    error: float = 0.0
    precision: int = 32
    parts: tuple[Part, ...] = ()
    error_per_example: float | None = None
    examples: int = 0
    resolution: float | None = None
    fvu: float | None = None
    notes: tuple[str, ...] = ()
    codes: tuple[Code, ...] = ()

    @property
    def code(self) -> float:
        """The bits of ``codes``, all sparse layers together."""
        return sum((c.bits for c in self.codes), 0.0)

    @property
    def total(self) -> float:
        """``structure + parameters + code + error``."""
        return self.structure + self.parameters + self.code + self.error

    @property
    def model(self) -> float:
        """``structure + parameters + code``: what a reader is told before the correction (the explanation
        and, example by example, the features of its sparse layers)."""
        return self.structure + self.parameters + self.code

    def with_codes(self, codes: tuple[Code, ...]) -> Bits:
        """These bits with the code term of ``codes`` (the notes that it was not counted dropped)."""
        notes = tuple(note for note in self.notes if not note.startswith(_NO_CODE))
        return replace(self, codes=tuple(codes), notes=notes)

    def to_json(self) -> dict[str, Any]:
        """The terms as JSON (an infinite error is ``null``)::

            {"structure", "parameters", "code", "error", "total", "precision", "error_per_example",
             "examples", "resolution", "fvu", "parts": [{"name", "kind", "structure", "parameters",
             "numbers"}], "codes": [{"box", "width", "l0", "examples", "value_bits", "bits"}], "notes"}
        """
        def finite(value: float | None) -> float | None:
            return None if value is None or not math.isfinite(value) else value

        return {"structure": self.structure, "parameters": self.parameters, "code": self.code,
                "error": finite(self.error), "total": finite(self.total), "precision": self.precision,
                "error_per_example": finite(self.error_per_example), "examples": self.examples,
                "resolution": self.resolution, "fvu": finite(self.fvu),
                "parts": [part.to_json() for part in self.parts], "codes": [c.to_json() for c in self.codes],
                "notes": list(self.notes)}

    def __str__(self) -> str:
        header = ("part", "kind", "structure", "parameters", "numbers")
        rows = [(p.name, p.kind, f"{p.structure:,.1f}", f"{p.parameters:,.1f}", f"{p.numbers:,}") for p in self.parts]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
        lines = [f"description length (numbers at {self.precision} bits unless quantised)"]
        for row in (header, *rows):
            lines.append("  ".join([*(c.ljust(w) for c, w in zip(row[:2], widths)),
                                    *(c.rjust(w) for c, w in zip(row[2:], widths[2:]))]))
        lines += ["", f"structure   {self.structure:>14,.1f} bits", f"parameters  {self.parameters:>14,.1f} bits"]
        for c in self.codes:
            lines.append(f"code        {c.bits:>14,.1f} bits ({c.box}: L0 {c.l0:.3g} of {c.width} features at "
                         f"{c.value_bits} + log2 {c.width} bits each, x {c.examples:,} examples)")
        if self.error_per_example is None:
            lines.append(f"error       {0.0:>14,.1f} bits (no reference)")
        else:
            lines.append(f"error       {self.error:>14,.1f} bits ({self.error_per_example:,.2f} per example x "
                         f"{self.examples:,}, FVU {self.fvu:.4g}, resolution {self.resolution:g} sd)")
        lines.append(f"total       {self.total:>14,.1f} bits")
        lines += list(self.notes)
        return "\n".join(lines)


def description_length(model_or_explanation: Model | Interpretation | str | os.PathLike[str], precision: int = 32,
                       reference: Model | None = None, data: Any = None, *, resolution: float = RESOLUTION,
                       examples: int | None = None, batch_size: int = 256,
                       device: str | torch.device | None = None) -> Bits:
    """The description length of a model, an interpretation (its explanation and wire maps),
    or a model saved at a path (read without unpickling anything).

    Args:
        precision: bits per stored number that is not on a uniform grid.
        reference: a model to correct the outputs to; with ``data`` (anything
            :func:`compinterp.check` takes, or ``"exact"``) this adds the error term.
        data: with a model that has sparse layers (decoders reading a ``features`` wire),
            the data its ``code`` term is measured on (not ``"exact"``), with or without
            a reference.
        resolution: ``delta``, the precision the corrected outputs must reach, as a
            fraction of the reference outputs' standard deviation.
        examples: how many examples the error term is for with ``"exact"`` (default 1);
            with data it is the number of output vectors checked.
    """
    if isinstance(model_or_explanation, (str, os.PathLike)):
        diagram, tensors = _saved(Path(model_or_explanation))
        maps: list[tuple[str, str, dict[str, torch.Tensor]]] = []
        wires: int | None = None
        explanation: Model | Interpretation | None = None
    elif isinstance(model_or_explanation, Interpretation):
        explanation = model_or_explanation
        diagram, tensors = explanation.explanation.diagram, explanation.explanation.params.state_dict()
        maps = [(wire, m.kind, m.state_dict()) for wire, m in explanation.maps.items() if not isinstance(m, Identity)]
        wires = len(explanation.maps)
    elif isinstance(model_or_explanation, Model):
        explanation = model_or_explanation
        diagram, tensors, maps, wires = explanation.diagram, explanation.params.state_dict(), [], None
    else:
        raise InputError(f"description_length() takes a Model, an Interpretation or a saved model's directory, "
                         f"got {type(model_or_explanation).__name__}")
    bits, sparse = _account(diagram, tensors, maps, wires, precision, data)
    exact = isinstance(data, str) and data == "exact"
    if reference is None and data is not None and (not sparse or exact):
        alone = "data='exact' has no examples to code its sparse layers" if sparse else \
            "data alone only measures the code of sparse layers, and this model has none"
        raise InputError("data was given without a reference model: the error term compares the explanation "
                         f"with a reference, pass reference=... ({alone})")
    if reference is not None and explanation is None:
        raise InputError("the error term needs the explanation itself: load the model first, then pass it")
    if reference is not None and data is None:
        raise InputError("a reference model was given without data: pass data=... (a tensor, gaussian:N, "
                         "digits ...) or data='exact'")
    if sparse and data is not None and not exact:
        if explanation is None:
            raise InputError("the code of sparse layers is measured by running the model: load it first, then "
                             "pass it")
        bits = bits.with_codes(codes_on(explanation, data, batch_size=batch_size, device=device))
    if reference is None:
        return bits
    return _with_error(bits, explanation, reference, data, resolution, examples, batch_size, device)


def diagram_length(diagram: Diagram, tensors: Mapping[str, torch.Tensor], precision: int = 32) -> Bits:
    """:func:`description_length` of a model of ``diagram`` whose ``params.state_dict()`` is ``tensors``
    (``{"box.role": tensor}``), without building the model: for candidates that may never be run.

    >>> from compinterp.model import Model
    >>> from compinterp.syntax import Space, Linear
    >>> model = Model(Linear("f", Space("x", 4), Space("y", 2)), seed=0)
    >>> diagram_length(model.diagram, model.params.state_dict()) == description_length(model)
    True
    """
    return _account(diagram, tensors, [], None, precision, None)[0]


def _account(diagram: Diagram, tensors: Mapping[str, torch.Tensor],
             maps: list[tuple[str, str, dict[str, torch.Tensor]]], wires: int | None, precision: int,
             data: Any) -> tuple[Bits, list[str]]:
    """The structure and parameter terms (no code, no error) and the names of the sparse layers, whose code is
    noted as not counted when there is no data (or it is ``"exact"``)."""
    parts, notes = _parts(diagram, tensors, maps, wires, precision)
    sparse = [box.name for box in sparse_layers(diagram)]
    exact = isinstance(data, str) and data == "exact"
    if sparse and (data is None or exact):
        notes.append(f"{_NO_CODE} of the sparse layer(s) {', '.join(sparse)} is not counted: "
                     + ("data='exact' has no examples to code" if exact else "give data=... to measure it"))
    return Bits(structure=sum(p.structure for p in parts), parameters=sum(p.parameters for p in parts),
                precision=precision, parts=tuple(parts), notes=tuple(notes)), sparse


def error_bits_per_number(fvu: float, resolution: float = RESOLUTION) -> float:
    """``max(0, 1/2 log2(2 pi e fvu / resolution^2))``: bits per output number to correct a Gaussian
    residual of variance ``sigma^2 = fvu * var`` at resolution ``delta = resolution * sd``.

    >>> round(error_bits_per_number(0.01), 4)
    5.369
    >>> error_bits_per_number(0.0)
    0.0
    """
    if not resolution > 0:
        raise InputError(f"the error resolution must be positive, got {resolution!r}")
    if fvu <= 0:
        return 0.0
    if math.isinf(fvu):
        return math.inf
    return max(0.0, 0.5 * math.log2(2 * math.pi * math.e * fvu / resolution ** 2))


def _with_error(bits: Bits, explanation: Model | Interpretation, reference: Model, data: Any, resolution: float,
                examples: int | None, batch_size: int, device: str | torch.device | None) -> Bits:
    """``bits`` with the error term of ``explanation`` against ``reference`` on ``data``."""
    report = check(reference, explanation, data, batch_size=batch_size, device=device, logits=False, progress=False)
    fvu = report.end_to_end.fvu
    if isinstance(data, str) and data == "exact":
        count = 1 if examples is None else examples
    else:
        if examples is not None:
            raise InputError("examples= is for the exact path; with data the error is for every output vector "
                             "checked")
        count = report.end_to_end.n
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise InputError(f"examples must be a non-negative integer, got {count!r}")
    per_example = sum(reference.cod.dims) * error_bits_per_number(fvu, resolution)
    return replace(bits, error=per_example * count if count else 0.0, error_per_example=per_example, examples=count,
                   resolution=resolution, fvu=fvu)


def codes_on(explanation: Model | Interpretation, data: Any, *, batch_size: int = 256,
             device: str | torch.device | None = None) -> tuple[Code, ...]:
    """The sparse layers' codes of ``explanation`` (its model, moved to ``device``) measured on ``data``."""
    model = explanation.explanation if isinstance(explanation, Interpretation) else explanation
    if isinstance(explanation, Interpretation) and model.dom != explanation.source.dom:
        raise InputError(f"the code of sparse layers is measured on the model's inputs, but this interpretation "
                         f"maps them ({explanation.source.dom} -> {model.dom}): measure it on the explanation "
                         "model with its own inputs")
    device, dtype = placement(model, device)
    model.to(device)
    batches = (placed(batch, len(model.dom), device, dtype)
               for batch in as_source(data).batches(batch_size, inputs(model.plan)))
    return measure_codes(model, batches)


def _parts(diagram: Diagram, tensors: Mapping[str, torch.Tensor], maps: list[tuple[str, str, dict[str, torch.Tensor]]],
           wires: int | None, precision: int) -> tuple[list[Part], list[str]]:
    """The rows of the account: the diagram's header, each box, then (for an interpretation) the
    number of wire maps and each non-identity map."""
    tensors = dict(tensors)
    keys = ordered_keys(diagram, tensors)
    owner = {key: key.split(".", 1)[0] for key in keys}
    for wire, _, state in maps:
        for role in sorted(state):
            key = f"sigma[{wire}].{role}"
            tensors[key], owner[key] = state[role], f"sigma[{wire}]"
            keys.append(key)
    codes = parameter_codes(tensors, keys, precision)
    own: dict[str, list[TensorCode]] = {}
    for key in keys:
        own.setdefault(owner[key], []).append(codes[key])

    def part(name: str, kind: str, structure: float) -> Part:
        mine = own.get(name, [])
        return Part(name, kind, structure, sum(c.bits for c in mine), sum(c.numbers for c in mine))

    parts = [part(name, kind, bits) if name != HEADER else Part(name, kind, bits, 0.0, 0)
             for name, kind, bits in structure_rows(diagram, precision)]
    notes = []
    if any(box.opaque for _, box in diagram.walk()):
        notes.append("note: an Opaque box's code is not counted, only its spaces and its module's tensors")
    if wires is not None:
        parts.append(Part(MAPS, "", float(gamma_bits(len(maps) + 1)), 0.0, 0))
        for wire, kind, _ in maps:
            parts.append(part(f"sigma[{wire}]", f"{kind} map", choice_bits(wires) + choice_bits(len(MAPS_BY_KIND))))
        if any(kind == "function" for _, kind, _ in maps):
            notes.append("note: a function map's code is not counted")
    return parts, notes


def _saved(path: Path) -> tuple[Diagram, dict[str, torch.Tensor]]:
    """The diagram and weights of a saved model, every checksum verified, nothing unpickled."""
    from compinterp.files import read_weights

    return read_weights(path)
