"""Heat maps: a patching sweep (rows x positions or heads) and attention patterns per head, with
token labels, to PNG or SVG files (headless; written atomically by :func:`save_figure`).

>>> import tempfile
>>> import torch
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = draw_patterns(torch.eye(3).expand(2, 3, 3), ["a", "b", "c"], Path(tmp) / "heads.svg")
...     text = path.read_text()
>>> all(label in text for label in ("head 0", "head 1", "query", "key"))
True
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from compinterp.drawing import save_figure
from compinterp.errors import InputError


def heatmap(values: torch.Tensor, rows: Sequence[str], cols: Sequence[str], path: str | os.PathLike[str], *,
            title: str = "", xlabel: str = "position", ylabel: str = "", dpi: float = 100) -> Path:
    """``values`` (rows x cols) as a heat map, diverging around zero, each cell labelled with its value
    when there are few cells."""
    values = _matrix(values, len(rows), len(cols), "heat map")
    figure = Figure(figsize=(1.2 + 0.55 * len(cols), 1.0 + 0.45 * len(rows)))
    ax = figure.add_subplot()
    bound = float(values.abs().max()) or 1.0
    image = ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(cols)), labels=list(cols), fontsize=8)
    ax.set_yticks(range(len(rows)), labels=list(rows), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if values.numel() <= 200:
        for (i, j), v in zip(((i, j) for i in range(len(rows)) for j in range(len(cols))), values.flatten().tolist()):
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6)
    figure.colorbar(image, ax=ax)
    figure.tight_layout()
    return save_figure(figure, path, dpi=dpi, verb="draw a heat map to")


def draw_patterns(patterns: torch.Tensor, tokens: Sequence[str], path: str | os.PathLike[str], *,
                       title: str = "", heads: Sequence[int] | None = None, dpi: float = 100) -> Path:
    """Each head's attention pattern (``heads x T x T``, queries down, keys across) as a grid of heat
    maps labelled with ``tokens``."""
    if not isinstance(patterns, torch.Tensor) or patterns.dim() != 3 or patterns.shape[1] != patterns.shape[2]:
        raise InputError(f"attention patterns must be a heads x T x T tensor, got "
                         f"{tuple(patterns.shape) if isinstance(patterns, torch.Tensor) else type(patterns).__name__}")
    n, t = patterns.shape[0], patterns.shape[1]
    if len(tokens) != t:
        raise InputError(f"{len(tokens)} token labels for patterns over {t} positions")
    names = list(heads) if heads is not None else list(range(n))
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    side = 0.9 + 0.22 * t
    figure = Figure(figsize=(side * cols, side * rows + 0.4))
    for k in range(n):
        ax = figure.add_subplot(rows, cols, k + 1)
        ax.imshow(patterns[k].detach().float().cpu().numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {names[k]}", fontsize=9)
        ax.set_xticks(range(t), labels=list(tokens), fontsize=6, rotation=90)
        ax.set_yticks(range(t), labels=list(tokens), fontsize=6)
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path, dpi=dpi, verb="draw attention patterns to")


def _matrix(values: torch.Tensor, rows: int, cols: int, what: str) -> torch.Tensor:
    """``values`` as a float CPU ``rows x cols`` matrix, or an error naming the shapes."""
    if not isinstance(values, torch.Tensor) or values.numel() != rows * cols:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise InputError(f"a {what} of {rows} rows and {cols} columns needs {rows * cols} values, got {shape}")
    return values.detach().float().cpu().reshape(rows, cols)
