"""A self-contained HTML page: escaped text, tables and images inlined as base64 ``data:`` URIs.

The page loads nothing from anywhere: its style is inline, it has no scripts, and
every image is carried in the file itself, so it opens the same offline, from a
mail attachment or from a CI artefact.

>>> page = render("Demo", [Section("model", "The model", paragraph("x < y & z"))])
>>> "<section id=\\"model\\">" in page, "x &lt; y &amp; z" in page, "http" in page
(True, True, False)
>>> table(["box", "bits"], [["mlp", 12.5]]).split("<tbody>")[1]
'<tr><td>mlp</td><td class="num">12.5000</td></tr></tbody></table>'
>>> [number(v) for v in (19980.2, 0.980501, 3e-7, 1797, -0.5)]
['19,980', '0.9805', '3.00e-07', '1,797', '-0.5000']
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compinterp.errors import FormatError
from compinterp.disk import write_atomically

MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
"""The image files :func:`image_file` inlines, by suffix."""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } .subtitle { color: #555; margin-top: 0; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4em 1.2em; }
section { border-top: 1px solid #ddd; padding-top: 0.6em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
.key { font-size: 1.15em; } .key b { font-variant-numeric: tabular-nums; }
"""


@dataclass(frozen=True)
class Section:
    """One section of a page: ``key`` is its HTML id (and anchor), ``body`` its HTML."""

    key: str
    title: str
    body: str


def paragraph(text: str) -> str:
    """A paragraph of plain text (escaped)."""
    return f"<p>{html.escape(text)}</p>"


def code(text: str) -> str:
    """Preformatted text (escaped): commands, tables printed by the library."""
    return f"<pre>{html.escape(text)}</pre>"


def items(texts: Sequence[str]) -> str:
    """A bulleted list of plain texts (escaped)."""
    return "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in texts) + "</ul>"


def number(value: float, digits: int = 4) -> str:
    """A number as the report's text writes it: integers, and floats from 1,000 up, with thousands
    separators and no decimals; other floats with ``digits`` decimals (scientific when they would
    show as zero)."""
    if isinstance(value, int) or not math.isfinite(value):
        return f"{value:,}" if isinstance(value, int) else str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if value != 0 and abs(value) < 0.5 * 10 ** -digits:
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, digits: int = 4) -> str:
    """A table; numbers are right-aligned and written by :func:`number` (``digits`` decimals)."""
    def cell(value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"<td>{html.escape('n/a' if value is None else str(value))}</td>"
        return f'<td class="num">{number(value, digits)}</td>'

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image(data: bytes, mime: str, alt: str, caption: str = "") -> str:
    """A figure holding an image inlined as a base64 ``data:`` URI, with alt text and a caption.

    >>> image(b"<svg/>", "image/svg+xml", "a box")
    '<figure><img src="data:image/svg+xml;base64,PHN2Zy8+" alt="a box"></figure>'
    """
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}">{cap}</figure>'


def image_file(path: str | os.PathLike[str], alt: str, caption: str = "") -> str:
    """:func:`image` of a PNG, SVG or JPEG file."""
    path = Path(path)
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise FormatError(f"cannot inline {path}: images must end in {', '.join(MIME)}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FormatError(f"cannot inline {path}: {err.strerror or err}") from None
    return image(data, mime, alt, caption)


def render(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The whole page: title, a table of contents, then each section under its id."""
    keys = [s.key for s in sections]
    if len(set(keys)) != len(keys):
        raise FormatError(f"report sections need distinct ids, got {keys}")
    toc = "".join(f'<li><a href="#{html.escape(s.key)}">{html.escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{html.escape(s.key)}"><h2>{html.escape(s.title)}</h2>{s.body}</section>'
                   for s in sections)
    sub = f'<p class="subtitle">{html.escape(subtitle)}</p>' if subtitle else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><h1>{html.escape(title)}</h1>{sub}<nav><ul>{toc}</ul></nav>{body}</body></html>\n")


def write(path: str | os.PathLike[str], page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a partial file renamed into place); returns the path."""
    return write_atomically(path, lambda partial: partial.write_text(page, encoding="utf-8"))
