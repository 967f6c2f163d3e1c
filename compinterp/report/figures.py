"""The report's figures, drawn headless on matplotlib figures of our own (never pyplot's).

>>> import tempfile
>>> from pathlib import Path
>>> from compinterp.drawing import save_figure
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = save_figure(sweep_figure([1, 2, 4], {"held out": [0.5, 0.8, 0.95]}, bar=0.9), Path(tmp) / "sweep.png")
...     path.read_bytes()[:4]
b'\\x89PNG'
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from compinterp.errors import FormatError


def sweep_figure(ks: Sequence[int], curves: dict[str, Sequence[float]], *, bar: float | None = None,
                 xlabel: str = "eigenvectors kept per class (k)") -> Figure:
    """Faithfulness against ``k`` (log-2 axis), one line per measure in ``curves``, the bar dashed."""
    figure = Figure(figsize=(6.0, 3.6), facecolor="white")
    axis = figure.add_subplot()
    for label, ys in curves.items():
        axis.plot(list(ks), list(ys), "o-", label=label)
    if bar is not None:
        axis.axhline(bar, color="tab:red", linestyle="--", label=f"bar {bar:g}")
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(ks), [str(k) for k in ks])
    axis.set_xlabel(xlabel)
    axis.set_ylabel("faithfulness (1 - FVU)")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def bits_figure(rows: Sequence[tuple[str, float, float]]) -> Figure:
    """Description lengths as horizontal bars on a log axis, one per ``(label, structure bits,
    parameter bits)``, each labelled with its total and its two terms."""
    figure = Figure(figsize=(7.5, 0.65 * len(rows) + 1.2), facecolor="white")
    axis = figure.add_subplot()
    totals = [s + p for _, s, p in rows]
    axis.barh([r[0] for r in rows], totals, color="tab:blue")
    for y, (total, (_, structure, parameters)) in enumerate(zip(totals, rows)):
        axis.text(total * 1.1, y, f"{total:,.0f} bits  ({structure:,.0f} structure + {parameters:,.0f} parameters)",
                  va="center", fontsize=8)
    axis.set_xscale("log")
    axis.set_xlim(left=min(totals) / 3, right=max(totals) * 40)
    axis.invert_yaxis()
    axis.set_xlabel("description length, bits (log scale)")
    axis.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def feature_figure(directions: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor], captions: Sequence[Sequence[str]],
                   effects: Sequence[torch.Tensor], names: Sequence[str], *, side: int, top: int) -> Figure:
    """One row per dictionary feature: its decoder direction (bars over the wire's coordinates), its
    ``top`` top-activating inputs as ``side x side`` grey images (captioned; fewer when it fired on
    fewer), and its mean effect on each output when removed (bars, one per class), labelled ``names``."""
    rows = len(names)
    if not rows or not len(directions) == len(inputs) == len(captions) == len(effects) == rows:
        raise FormatError(f"a feature figure needs one direction, input set, caption set and effect per feature; "
                          f"got {len(directions)}, {len(inputs)}, {len(captions)}, {len(effects)} for {rows}")
    figure = Figure(figsize=(2.6 + 1.05 * top + 2.8, 1.3 * rows + 0.4), facecolor="white")
    grid = figure.add_gridspec(rows, top + 2, width_ratios=[2.4, *[1] * top, 2.6])
    for r in range(rows):
        axis = figure.add_subplot(grid[r, 0])
        direction = directions[r].detach().double().cpu()
        axis.bar(range(direction.numel()), direction.numpy(), width=1.0,
                 color=["tab:red" if v >= 0 else "tab:blue" for v in direction.tolist()])
        axis.set_xticks([])
        axis.tick_params(labelsize=6)
        axis.set_ylabel(names[r], rotation=0, ha="right", va="center", fontsize=8)
        if r == 0:
            axis.set_title("decoder direction", fontsize=8)
        for m in range(top):
            axis = figure.add_subplot(grid[r, 1 + m])
            axis.set_axis_off()
            if m < len(inputs[r]):
                image = inputs[r][m].detach().double().cpu().reshape(side, side)
                axis.imshow(image.numpy(), cmap="gray_r", interpolation="nearest")
                axis.set_title(captions[r][m], fontsize=7)
        axis = figure.add_subplot(grid[r, top + 1])
        effect = effects[r].detach().double().cpu()
        axis.bar(range(effect.numel()), effect.numpy(),
                 color=["tab:green" if v >= 0 else "tab:gray" for v in effect.tolist()])
        axis.axhline(0, color="black", linewidth=0.5)
        axis.set_xticks(range(effect.numel()), [str(c) for c in range(effect.numel())], fontsize=6)
        axis.tick_params(axis="y", labelsize=6)
        if r == 0:
            axis.set_title("effect on each logit", fontsize=8)
    figure.tight_layout(pad=0.4)
    return figure
