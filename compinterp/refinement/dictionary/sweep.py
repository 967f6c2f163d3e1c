"""The width and sparsity sweep: every setting of a dictionary pass, scored by faithfulness and bits.

For each candidate, the pass trains a dictionary; :func:`compinterp.check` measures
the local square (the reconstruction of the box's output, or the transcoder's
imitation of the box) and the end-to-end square; the bits are the dictionary's code
``L0 (b + log2 F)`` per example, its parameters and the error at the bar's scope.
:func:`best` is the fewest bits that keep the bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compinterp.complexity import codes_on
from compinterp.complexity.dictionary import DictionaryBits, dictionary_bits
from compinterp.errors import InputError
from compinterp.faithfulness import check
from compinterp.faithfulness.report import FaithfulnessReport
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.dictionary.base import DictionaryPass
from compinterp.refinement.dictionary.core import Dictionary

SCOPES = ("local", "end_to_end")
"""Which square the bar (and the error bits) is measured on."""


@dataclass(frozen=True)
class SweepPoint:
    """One trained setting: its rewrite, measured ``l0``, local and end-to-end faithfulness, and bits."""

    rewrite: Rewrite
    l0: float
    local: float
    end_to_end: float
    bits: DictionaryBits
    model: Model

    def to_json(self) -> dict[str, Any]:
        """The rewrite, ``l0``, both faithfulnesses and the bits."""
        return {"rewrite": self.rewrite.to_json(), "l0": self.l0, "local": self.local,
                "end_to_end": self.end_to_end, "bits": self.bits.to_json()}


def local_row(report: FaithfulnessReport, box: str) -> float:
    """The local faithfulness of ``box`` (its first use) in ``report``."""
    for row in report.boxes:
        if row.box == box or row.box == f"{box}#0":
            return row.metrics.faithfulness
    raise InputError(f"the report has no square for box '{box}'")


def sweep(model: Model, dictionary_pass: DictionaryPass, data: Any, *, scope: str = "local",
          value_bits: int = 8, precision: int = 32, batch_size: int = 256,
          device: str | torch.device | None = None) -> list[SweepPoint]:
    """Train and score every candidate of ``dictionary_pass`` on ``model``, evaluated on ``data``."""
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return [score(model, dictionary_pass, rewrite, dictionary_pass.fit(model, rewrite), data, scope=scope,
                  value_bits=value_bits, precision=precision, batch_size=batch_size, device=device)
            for rewrite in dictionary_pass.candidates(model)]


def score(model: Model, dictionary_pass: DictionaryPass, rewrite: Rewrite, dictionary: Dictionary, data: Any, *,
          scope: str = "local", value_bits: int = 8, precision: int = 32, batch_size: int = 256,
          device: str | torch.device | None = None) -> SweepPoint:
    """One trained ``dictionary`` (of ``dictionary_pass`` for ``rewrite``) checked and scored on ``data``."""
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    interpretation = dictionary_pass.interpret(model, rewrite, dictionary)
    report = check(model, interpretation, data, batch_size=batch_size, device=device, logits=False, progress=False)
    local = local_row(report, rewrite.box)
    box = model.boxes[rewrite.box]
    fvu, numbers = (1 - local, box.cod.dim) if scope == "local" else (report.end_to_end.fvu, sum(model.cod.dims))
    explanation = interpretation.explanation
    own = [b for b in explanation.boxes if b.startswith(f"{rewrite.box}_")]
    code = next(c for c in codes_on(interpretation, data, batch_size=batch_size, device=device) if c.box in own)
    l0, examples = code.l0, code.examples
    bits = dictionary_bits(explanation, own, width=rewrite.settings["width"], l0=l0, examples=examples,
                           fvu=max(fvu, 0.0), numbers=numbers, value_bits=value_bits, precision=precision)
    return SweepPoint(rewrite, l0, local, report.end_to_end.faithfulness, bits, explanation)


def best(points: Sequence[SweepPoint], min_faithfulness: float, scope: str = "local") -> SweepPoint | None:
    """The point with the fewest bits whose ``scope`` faithfulness is at least ``min_faithfulness``."""
    kept = [p for p in points if (p.local if scope == "local" else p.end_to_end) >= min_faithfulness]
    return min(kept, key=lambda p: p.bits.total, default=None)

