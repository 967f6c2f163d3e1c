"""Drawing diagrams to PNG or SVG files, headless.

discopy lays the diagram out; its matplotlib backend then paints on a figure
of our own (never pyplot's), so drawing opens no window and changes no global
state. Wires are labelled ``space:dim``, boxes with their name and, where the
name does not already say it, their kind; the figure grows with the diagram.

>>> import tempfile
>>> from compinterp.syntax import Space, Linear, Bilinear, residual
>>> x = Space("resid", 8)
>>> diagram = residual(Bilinear("mlp", x, x, hidden=16)) >> Linear("out", x, Space("logits", 3))
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = draw(diagram, Path(tmp) / "model.svg")
...     text = path.read_text()
>>> all(label in text for label in ("resid:8", "logits:3", "mlp", "Bilinear", "out"))
True
"""

from __future__ import annotations

import os
from math import sqrt
from pathlib import Path
from typing import Any

import matplotlib
from discopy import monoidal, symmetric
from discopy.drawing.backend import Matplotlib
from matplotlib.figure import Figure

from compinterp.errors import BoxError, FormatError
from compinterp.disk import write_atomically
from compinterp.syntax import Box, Diagram, Elementwise, Swap

FORMATS = (".png", ".svg")
"""The file suffixes :func:`draw` writes."""

COLORS = {"Attention": "red", "Bilinear": "green", "Gated": "green", "Mul": "green", "Opaque": "yellow"}
"""Fill colour of a box by kind (discopy colour names); other kinds are white."""


def draw(diagram_or_model: Any, path: str | os.PathLike[str], *, kinds: bool = True,
         figsize: tuple[float, float] | None = None, fontsize: float = 10, dpi: float = 100,
         wire_labels: bool = True) -> Path:
    """Draw a diagram (or a model's diagram) to ``path``, PNG or SVG by its suffix; returns the path.

    Args:
        kinds: label boxes with their kind as well as their name.
        figsize: width and height in inches; by default about 2 inches per wire
            across and 0.75 inch per layer down.
        fontsize: size of the labels, in points.
        dpi: resolution of a PNG.
        wire_labels: label the wires with their space (``resid:64``).
    """
    diagram = getattr(diagram_or_model, "diagram", diagram_or_model)
    if not isinstance(diagram, Diagram):
        raise BoxError(f"draw() takes a compinterp Diagram or Model, got {type(diagram_or_model).__name__}")
    path = figure_target(path, "draw to")
    return save_figure(_figure(_relabelled(diagram, kinds), figsize, fontsize, wire_labels), path, dpi=dpi,
                       verb="draw to")


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: float = 100,
                verb: str = "save a figure to") -> Path:
    """Write a matplotlib ``figure`` to a PNG or SVG file by its suffix, atomically (a partial file
    renamed into place, so a failure leaves what was there); returns the path. SVGs keep their text
    as text and carry no date, so the same figure gives the same file."""
    path = figure_target(path, verb)
    suffix = path.suffix.lower()
    metadata = {"Date": None} if suffix == ".svg" else None

    def savefig(partial: Path) -> None:
        with matplotlib.rc_context({"svg.fonttype": "none"}):
            figure.savefig(partial, format=suffix[1:], dpi=dpi, facecolor="white", metadata=metadata)

    return write_atomically(path, savefig, verb)


def figure_target(path: str | os.PathLike[str], verb: str = "save a figure to") -> Path:
    """``path`` as a Path, if it names a PNG or SVG file in an existing directory (checked before any work is
    done to make the figure)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise FormatError(f"cannot {verb} {path}: the file name must end in .png or .svg, not {suffix or 'nothing'!r}")
    if not path.parent.is_dir():
        raise FormatError(f"cannot {verb} {path}: the directory {path.parent} does not exist")
    return path


def label(box: Box, kinds: bool = True) -> str:
    """A box's label: its name, then its kind (or function) on a second line where that adds something.

    >>> from compinterp.syntax import Space, Linear, Elementwise
    >>> x = Space("x", 2)
    >>> label(Linear("up", x, x)), label(Elementwise("relu", x)), label(Elementwise("relu", x, name="act"))
    ('up\\nLinear', 'relu', 'act\\nrelu')
    """
    if not kinds or type(box) is Box or box.spider:
        return box.name
    detail = box.data.get("fn", box.kind) if isinstance(box, Elementwise) else box.kind
    return box.name if box.name.lower() == detail.lower() else f"{box.name}\n{detail}"


def _relabelled(diagram: Diagram, kinds: bool) -> symmetric.Diagram:
    """A plain discopy copy of ``diagram`` whose boxes carry our labels and colours, built layer by layer."""
    layers = []
    for left, box, right in diagram.inside:
        if isinstance(box, Swap):
            shown = symmetric.Swap(box.left, box.right)
        else:
            shown = symmetric.Box(box.name, box.dom, box.cod, drawing_name=label(box, kinds),
                                  color=COLORS.get(box.kind, "white"))
        layers.append(monoidal.Layer(left, shown, right))
    return symmetric.Diagram(tuple(layers), diagram.dom, diagram.cod, _scan=False)


def _figure(diagram: symmetric.Diagram, figsize: tuple[float, float] | None, fontsize: float,
            wire_labels: bool) -> Figure:
    """Lay ``diagram`` out with discopy and paint it on a new figure."""
    drawing = diagram.to_drawing()
    drawing.add_box_corners()
    width, height = drawing.width, drawing.height
    if figsize is None:
        figsize = (max(4.0, 2.0 * (width + 1)), max(2.0, 0.75 * (height + 1)))
    figure = Figure(figsize=figsize, facecolor="white")
    axis = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    painter = Matplotlib(axis=axis)
    params = {"fontsize": fontsize, "wire_labels": wire_labels,
              "nodesize": round(1 / sqrt(max(width, height, 0.01)), 3)}
    painter.draw_boundary(drawing, **params)
    painter.draw_wires(drawing, **params)
    painter.draw_boxes(drawing, **params)
    axis.set_aspect("auto")
    axis.margins(0.05, 0.02)
    axis.axis("off")
    return figure
