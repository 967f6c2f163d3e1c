"""Reports: one self-contained HTML file (no network, images inline) and the figures in it.

:mod:`compinterp.report.html` builds pages from sections; :mod:`compinterp.report.figures`
draws the figures headless; :func:`demo_report` renders the demo's results directory.
"""

from compinterp.report.demo import SECTIONS, demo_report
from compinterp.report.html import Section, image, image_file, paragraph, render, table, write

__all__ = ["SECTIONS", "Section", "demo_report", "image", "image_file", "paragraph", "render", "table", "write"]
