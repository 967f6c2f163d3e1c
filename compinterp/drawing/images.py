"""Vectors over pixels as images: a bilinear layer's eigenvectors per output, red positive, blue negative.

>>> import tempfile, torch
>>> values = torch.tensor([[2.0, -1.0], [1.5, 0.5]])
>>> vectors = torch.randn(2, 2, 64)
>>> with tempfile.TemporaryDirectory() as tmp:
...     draw_eigenvectors(values, vectors, Path(tmp) / "eig.png", side=8).read_bytes()[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure

from compinterp.drawing import save_figure
from compinterp.errors import FormatError


def eigenvector_figure(values: torch.Tensor, vectors: torch.Tensor, *, side: int,
                       names: Sequence[str] | None = None) -> Figure:
    """A grid of eigenvectors as ``side x side`` images: row ``c`` holds output ``c``'s eigenvectors
    ``vectors[c, m]`` (red positive, blue negative, each on its own symmetric scale), titled with
    their eigenvalues ``values[c, m]``."""
    classes, k = values.shape
    if vectors.shape != (classes, k, side * side):
        raise FormatError(f"eigenvectors of shape {tuple(vectors.shape)} do not fit {classes} outputs x {k} "
                          f"components of {side}x{side} images")
    names = list(names) if names is not None else [str(c) for c in range(classes)]
    figure = Figure(figsize=(1.35 * k + 0.6, 1.45 * classes), facecolor="white")
    grid = figure.subplots(classes, k, squeeze=False)
    for c in range(classes):
        for m in range(k):
            axis = grid[c][m]
            image = vectors[c, m].detach().double().cpu().reshape(side, side)
            scale = float(image.abs().max()) or 1.0
            axis.imshow(image.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"λ = {float(values[c, m]):+.3g}", fontsize=8)
            if m == 0:
                axis.set_ylabel(names[c], rotation=0, labelpad=14, fontsize=11, va="center")
    figure.tight_layout(pad=0.4)
    return figure


def draw_eigenvectors(values: torch.Tensor, vectors: torch.Tensor, path: str | os.PathLike[str], *, side: int,
                      names: Sequence[str] | None = None, dpi: float = 100) -> Path:
    """:func:`eigenvector_figure` written to ``path`` (PNG or SVG)."""
    return save_figure(eigenvector_figure(values, vectors, side=side, names=names), path, dpi=dpi,
                       verb="draw eigenvectors to")
