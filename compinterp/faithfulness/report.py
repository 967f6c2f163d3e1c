"""The faithfulness report: per-box squares, worst first, and the square of the whole diagram.

>>> row = BoxRow("mlp", "Bilinear", "x:4", "x:4", Metrics(fvu=0.25, rel_l2=0.5, cosine=0.9, n=10))
>>> report = FaithfulnessReport(Metrics(fvu=0.1, rel_l2=0.3, cosine=0.95, n=10), (row,), samples=10)
>>> report.worst_box, report.end_to_end.faithfulness
('mlp', 0.9)
>>> FaithfulnessReport.from_json(report.to_json()) == report
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from compinterp.errors import BoxError, FormatError

_LOGIT_FIELDS = ("kl", "top1", "loss_recovered", "ce_model", "ce_explanation", "ce_ablated", "accuracy_model",
                 "accuracy_explanation")

NEGATIVE = ("faithfulness below 0 (FVU above 1): the explanation's outputs are further from the model's than the "
            "model's own mean output is; predicting that constant would do better")
"""The line a report prints under a negative faithfulness."""


@dataclass(frozen=True)
class Metrics:
    """How far one square is from commuting, over ``n`` output vectors.

    ``fvu = E||y_M - y_E||^2 / E||y_M - E y_M||^2`` (squared norms summed over the
    output dimensions), ``rel_l2 = sqrt(E||y_M - y_E||^2 / E||y_M||^2)``, ``cosine`` the
    mean cosine similarity of ``y_M`` and ``y_E`` (1 when both are zero). For logits:
    ``kl = E KL(softmax y_M || softmax y_E)``, ``top1`` the fraction of equal argmaxes,
    and ``loss_recovered = (m(E) - m(ablated)) / (m(M) - m(ablated))``, where the ablated
    prediction is the mean logit vector of the model and ``m`` is minus the
    cross-entropy against labels (``ce_*``), or without labels minus the KL from the model.
    With labels, ``accuracy_model`` and ``accuracy_explanation`` are the fractions of argmaxes
    equal to the label. Faithfulness ``1 - fvu`` falls below 0 when the explanation is further
    from the model than the model's mean output is.
    """

    fvu: float
    rel_l2: float
    cosine: float
    n: int
    kl: float | None = None
    top1: float | None = None
    loss_recovered: float | None = None
    ce_model: float | None = None
    ce_explanation: float | None = None
    ce_ablated: float | None = None
    accuracy_model: float | None = None
    accuracy_explanation: float | None = None

    @property
    def faithfulness(self) -> float:
        """``1 - fvu``: 1 when the square commutes."""
        return 1.0 - self.fvu

    def to_json(self) -> dict[str, Any]:
        """The metrics as JSON; an infinite or undefined value is ``null``."""
        out = {"faithfulness": _finite(self.faithfulness)}
        out |= {f.name: _finite(getattr(self, f.name)) for f in fields(self)}
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Metrics:
        """Inverse of :meth:`to_json` (``null`` error metrics read back as infinite)."""
        try:
            return cls(fvu=_number(obj["fvu"]), rel_l2=_number(obj["rel_l2"]), cosine=_number(obj["cosine"]),
                       n=int(obj["n"]), **{k: obj.get(k) for k in _LOGIT_FIELDS})
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"bad metrics in a faithfulness report: {type(err).__name__}: {err}") from None


@dataclass(frozen=True)
class BoxRow:
    """The local square of one box of the model (``box`` is ``name``, or ``name#k`` for its k-th use)."""

    box: str
    kind: str
    dom: str
    cod: str
    metrics: Metrics

    def to_json(self) -> dict[str, Any]:
        """``{"box", "kind", "dom", "cod", "faithfulness", "fvu", "rel_l2", "cosine", "n", ...}``."""
        return {"box": self.box, "kind": self.kind, "dom": self.dom, "cod": self.cod} | self.metrics.to_json()


@dataclass(frozen=True)
class FaithfulnessReport:
    """The result of :func:`compinterp.check`: ``boxes`` sorted worst first (largest FVU), and
    ``end_to_end``, the square of the whole diagram. ``exact`` says whether the numbers
    come from the weights alone (no data); ``intervention`` describes an interchange, if any;
    ``note`` says what was approximated or left out; ``data`` what the numbers were measured on."""

    end_to_end: Metrics
    boxes: tuple[BoxRow, ...]
    samples: int
    exact: bool = False
    intervention: dict[str, Any] | None = None
    note: str | None = None
    data: str | None = None

    @property
    def worst_box(self) -> str | None:
        """The box whose square is furthest from commuting; ``None`` when every box is exact."""
        if not self.boxes or (self.boxes[0].metrics.fvu == 0 and self.boxes[0].metrics.rel_l2 == 0):
            return None
        return self.boxes[0].box

    def box(self, name: str) -> BoxRow:
        """The row of box ``name``."""
        for row in self.boxes:
            if row.box == name:
                return row
        raise BoxError(f"no box '{name}' in this report; its boxes: {', '.join(r.box for r in self.boxes) or 'none'}")

    def to_json(self) -> dict[str, Any]:
        """The report as JSON; infinite or undefined numbers are ``null``::

            {"exact": bool, "samples": int, "data": str | null,
             "end_to_end": {"faithfulness", "fvu", "rel_l2", "cosine", "n",
                            "kl", "top1", "loss_recovered", "ce_model", "ce_explanation", "ce_ablated",
                            "accuracy_model", "accuracy_explanation"},
             "boxes": [{"box", "kind", "dom", "cod", "faithfulness", "fvu", "rel_l2", "cosine", "n", ...}],
             "worst_box": str | null, "intervention": null | {"wire", "output", "space"},
             "note": str | null}
        """
        return {"exact": self.exact, "samples": self.samples, "data": self.data,
                "end_to_end": self.end_to_end.to_json(), "boxes": [row.to_json() for row in self.boxes],
                "worst_box": self.worst_box, "intervention": self.intervention, "note": self.note}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FaithfulnessReport:
        """Inverse of :meth:`to_json`."""
        try:
            rows = tuple(BoxRow(r["box"], r["kind"], r["dom"], r["cod"], Metrics.from_json(r)) for r in obj["boxes"])
            return cls(Metrics.from_json(obj["end_to_end"]), rows, int(obj["samples"]), bool(obj.get("exact", False)),
                       obj.get("intervention"), obj.get("note"), obj.get("data"))
        except (KeyError, TypeError) as err:
            raise FormatError(f"bad faithfulness report JSON: missing or malformed {err}") from None

    def __str__(self) -> str:
        e = self.end_to_end
        head = "exact" if self.exact else f"{self.samples:,} samples" + (f" of {self.data}" if self.data else "")
        lines = [f"faithfulness report ({head})"]
        if self.intervention:
            lines[0] += f", interchange on {self.intervention['wire']} output {self.intervention['output']}"
        table = [("", "faithful", "FVU", "rel L2", "cosine"), ("end to end", *_cells(e))]
        table += [(f"{r.box} ({r.kind})", *_cells(r.metrics)) for r in self.boxes]
        widths = [max(len(row[i]) for row in table) for i in range(5)]
        for j, row in enumerate(table):
            lines.append("  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]))
            if j == 1 and self.boxes:
                lines.append("boxes, worst first:")
        extra = []
        if e.kl is not None:
            extra.append(f"  KL {e.kl:.4g}  top-1 agreement {e.top1:.4f}  loss recovered "
                         f"{_fmt(e.loss_recovered, '.4f')}")
        if e.accuracy_model is not None:
            extra.append(f"  accuracy on the labels: model {e.accuracy_model:.4f}, explanation "
                         f"{_fmt(e.accuracy_explanation, '.4f')}")
        lines[3:3] = extra
        if self.boxes:
            lines.append(f"worst box: {self.worst_box or 'none (every square commutes)'}")
        if any(m.faithfulness < 0 for m in (e, *(r.metrics for r in self.boxes))):
            lines.append(NEGATIVE)
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def _cells(m: Metrics) -> tuple[str, str, str, str]:
    return _fmt(m.faithfulness, ".6f"), _fmt(m.fvu, ".3e"), _fmt(m.rel_l2, ".3e"), _fmt(m.cosine, ".6f")


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _finite(value: Any) -> Any:
    """``value``, or ``None`` for an infinite or NaN float."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _number(value: Any) -> float:
    """A JSON number, ``null`` meaning infinite."""
    return math.inf if value is None else float(value)
