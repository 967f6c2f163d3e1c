"""What a refinement search returns: the points it evaluated, their Pareto frontier of (bits,
faithfulness) and the refined model with its history of rewrites."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compinterp.complexity import Bits
from compinterp.faithfulness import FaithfulnessReport
from compinterp.model import Model
from compinterp.refinement.base import Rewrite


@dataclass(frozen=True)
class Point:
    """One evaluated model: its bits (structure, parameters and the code of any sparse layer), its
    faithfulness to the original, and the rewrites that made it from the original."""

    bits: float
    faithfulness: float
    history: tuple[Rewrite, ...]

    def to_json(self) -> dict[str, Any]:
        """``{"bits", "faithfulness", "passes"}``, the rewrites as text (``eigen(mlp, k=4)``)."""
        return {"bits": self.bits, "faithfulness": _finite(self.faithfulness),
                "passes": [str(rewrite) for rewrite in self.history]}


class Frontier:
    """The Pareto frontier of (bits, faithfulness): the points no other point beats on both.

    >>> points = [Point(10.0, 0.9, ()), Point(20.0, 0.8, ()), Point(30.0, 1.0, ()), Point(5.0, 0.5, ())]
    >>> [(p.bits, p.faithfulness) for p in Frontier(points)]
    [(5.0, 0.5), (10.0, 0.9), (30.0, 1.0)]
    """

    def __init__(self, points: Iterable[Point], min_faithfulness: float | None = None) -> None:
        kept: list[Point] = []
        for point in sorted(points, key=lambda p: (p.bits, -_order_key(p.faithfulness))):
            if not kept or _order_key(point.faithfulness) > _order_key(kept[-1].faithfulness):
                kept.append(point)
        self.points = tuple(kept)
        self.min_faithfulness = min_faithfulness

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def __repr__(self) -> str:
        return f"<Frontier of {len(self.points)} points>"

    def best(self, min_faithfulness: float) -> Point | None:
        """The point with the fewest bits that keeps ``min_faithfulness``, if any."""
        return next((p for p in self.points if p.faithfulness >= min_faithfulness), None)

    def to_json(self) -> list[dict[str, Any]]:
        """``[{"bits", "faithfulness", "passes"}]``, fewest bits first."""
        return [point.to_json() for point in self.points]

    def plot(self, path: str | os.PathLike[str], *, title: str | None = None) -> Path:
        """Draw the frontier (bits on a log axis against faithfulness, the bar dashed) to a PNG or
        SVG file by its suffix, written atomically; returns the path."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        from compinterp.drawing import save_figure

        figure = Figure(figsize=(6.0, 4.0), facecolor="white")
        axis = figure.add_subplot()
        shown = [p for p in self.points if math.isfinite(p.faithfulness)]
        bits, faith = [p.bits for p in shown], [p.faithfulness for p in shown]
        axis.step(bits, faith, where="post", color="tab:blue", alpha=0.5)
        axis.plot(bits, faith, "o", color="tab:blue", label="frontier")
        if self.min_faithfulness is not None:
            axis.axhline(self.min_faithfulness, color="tab:red", linestyle="--",
                         label=f"bar {self.min_faithfulness:g}")
            chosen = self.best(self.min_faithfulness)
            if chosen is not None:
                axis.plot([chosen.bits], [chosen.faithfulness], "*", color="tab:red", markersize=14, label="chosen")
            floor = self.min_faithfulness - 4 * (1 - self.min_faithfulness)
            if faith and min(faith) < floor:
                axis.set_ylim(bottom=floor, top=1 + 0.2 * (1 - floor))
        if bits and min(bits) > 0:
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(FuncFormatter(lambda bits, _: f"{bits:,.0f}"))
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("description length (bits)")
        axis.set_ylabel("faithfulness (1 - FVU)")
        axis.set_title(title or "refinement frontier")
        axis.grid(True, alpha=0.3)
        axis.legend(loc="lower right")
        figure.tight_layout()
        return save_figure(figure, path, verb="plot to")


@dataclass(frozen=True)
class RefineResult:
    """What :func:`refine` found: the refined ``model``, the ``frontier`` of everything evaluated,
    the ``history`` of rewrites from the original to the model, and its bits and faithfulness.

    ``faithfulness`` is measured on the search data (``search_data``), which chose the model (with
    ``metric="loss_recovered"``, it and the bar are the loss recovered, :func:`~compinterp.refinement.refine`);
    ``held_out`` is the check of the refined model on held-out data, when there was some, and
    ``held_out_note`` says how the data was split (or why nothing was held out)."""

    model: Model
    frontier: Frontier
    history: tuple[Rewrite, ...]
    original_bits: float
    refined_bits: float
    faithfulness: float
    min_faithfulness: float
    exact: bool
    evaluated: int
    bits: Bits = field(repr=False)
    checks: int = 0
    """How many of the ``evaluated`` models were checked (the rest were scored in closed form)."""
    held_out: FaithfulnessReport | None = None
    held_out_note: str = ""
    search_data: str = ""
    metric: str = "faithfulness"
    """What ``faithfulness``, ``min_faithfulness`` and the frontier's scores hold."""

    @property
    def ratio(self) -> float:
        """``original_bits / refined_bits``: how many times shorter the refined model is."""
        return self.original_bits / self.refined_bits

    @property
    def held_out_faithfulness(self) -> float | None:
        """The refined model's end-to-end faithfulness on the held-out data, if any."""
        return None if self.held_out is None else self.held_out.end_to_end.faithfulness

    def to_json(self) -> dict[str, Any]:
        """The result as JSON::

            {"original_bits", "refined_bits", "ratio", "faithfulness", "min_faithfulness", "exact", "metric",
             "search_data", "held_out_faithfulness": float | null, "held_out_note",
             "held_out": null | {the check report of the refined model on the held-out data},
             "evaluated", "frontier": [{"bits", "faithfulness", "passes"}],
             "history": [{"pass", "box", "settings"}], "description_length": {...}}
        """
        held = self.held_out_faithfulness
        return {"original_bits": self.original_bits, "refined_bits": self.refined_bits, "ratio": self.ratio,
                "faithfulness": self.faithfulness, "min_faithfulness": self.min_faithfulness, "exact": self.exact,
                "metric": self.metric,
                "search_data": self.search_data, "held_out_faithfulness": None if held is None else _finite(held),
                "held_out_note": self.held_out_note,
                "held_out": None if self.held_out is None else self.held_out.to_json(),
                "evaluated": self.evaluated, "frontier": self.frontier.to_json(),
                "history": [rewrite.to_json() for rewrite in self.history],
                "description_length": self.bits.to_json()}

    def __str__(self) -> str:
        how = "exact" if self.exact else "on the search data"
        name = self.metric.replace("_", " ")
        lines = [f"refined: {self.original_bits:,.0f} -> {self.refined_bits:,.0f} bits ({self.ratio:.2f}x shorter), "
                 f"{name} {self.faithfulness:.6f} ({how}; bar {self.min_faithfulness:g}), "
                 f"{self.evaluated} models evaluated"]
        if self.held_out is not None:
            end = self.held_out.end_to_end
            recovered = "" if self.metric == "faithfulness" or end.loss_recovered is None else \
                f", loss recovered {end.loss_recovered:.6f}"
            lines.append(f"held out: faithfulness {end.faithfulness:.6f}{recovered} on "
                         f"{self.held_out.samples:,} samples the search did not see ({self.held_out_note})")
        elif self.held_out_note:
            lines.append(self.held_out_note)
        lines += ["history: " + (" >> ".join(str(r) for r in self.history) or "(none: nothing shortened the model)"),
                  f"frontier (bits, {name} {how}, rewrites):"]
        lines += [f"  {p.bits:>14,.0f}  {p.faithfulness:>10.6f}  {' >> '.join(str(r) for r in p.history) or '(original)'}"
                  for p in self.frontier]
        return "\n".join(lines)


def _order_key(value: float) -> float:
    """A faithfulness for ordering: NaN counts as the worst."""
    return -math.inf if math.isnan(value) else value


def _finite(value: float) -> float | None:
    """``value``, or ``None`` when it is not finite (JSON has no infinities)."""
    return value if math.isfinite(value) else None
