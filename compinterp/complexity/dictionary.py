"""Bits for dictionaries: the per-example code of a sparse layer, the dictionary's parameters, and the error.

A sparse layer of ``F`` features with ``L0`` active per example is told, example by
example, by naming the active features and their values:

    code = examples * L0 * (b + log2 F)

bits, each active feature costing ``log2 F`` bits for its index and ``b`` for its
value (:mod:`compinterp.complexity.sparse`, the same code that
:func:`~compinterp.complexity.description_length` counts given data). The dictionary's own boxes cost their parameter bits (as in
:func:`~compinterp.complexity.description_length`), and the reconstruction's residual
costs ``error_bits_per_number(fvu)`` per corrected number. See ``docs/dictionary.md``.

>>> code_bits(l0=3, width=32, value_bits=8)
39.0
>>> bits = DictionaryBits(width=32, l0=3.0, value_bits=8, examples=100, code=3900.0, parameters=2000.0,
...                       error=500.0)
>>> bits.total, bits.per_example
(6400.0, 64.0)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from compinterp.complexity.length import (
    RESOLUTION,
    description_length,
    error_bits_per_number,
)
from compinterp.complexity.sparse import code_bits
from compinterp.errors import InputError
from compinterp.model import Model


@dataclass(frozen=True)
class DictionaryBits:
    """A dictionary's description length: ``code`` (all examples), ``parameters`` (its boxes) and ``error``."""

    width: int
    l0: float
    value_bits: int
    examples: int
    code: float
    parameters: float
    error: float

    @property
    def total(self) -> float:
        """``code + parameters + error``."""
        return self.code + self.parameters + self.error

    @property
    def per_example(self) -> float:
        """``total / examples``."""
        return self.total / max(self.examples, 1)

    def to_json(self) -> dict[str, Any]:
        """Every field, and ``total``."""
        return {"width": self.width, "l0": self.l0, "value_bits": self.value_bits, "examples": self.examples,
                "code": self.code, "parameters": self.parameters, "error": self.error, "total": self.total}


def dictionary_bits(explanation: Model, boxes: Iterable[str], *, width: int, l0: float, examples: int,
                    fvu: float, numbers: int, value_bits: int = 8, precision: int = 32,
                    resolution: float = RESOLUTION) -> DictionaryBits:
    """The bits of the dictionary made of ``boxes`` in ``explanation``: its code over ``examples``,
    its boxes' parameter bits at ``precision``, and ``error_bits_per_number(fvu) * numbers * examples``
    for a residual of ``numbers`` values per example."""
    names = set(boxes)
    missing = names - set(explanation.boxes)
    if missing:
        raise InputError(f"dictionary boxes {sorted(missing)} are not in the explanation")
    parameters = sum(p.parameters for p in description_length(explanation, precision).parts if p.name in names)
    return DictionaryBits(width=width, l0=float(l0), value_bits=value_bits, examples=examples,
                          code=examples * code_bits(l0, width, value_bits), parameters=parameters,
                          error=examples * numbers * error_bits_per_number(fvu, resolution))
