"""The demos' reports in a real browser: headless Chromium loads each offline, without errors, and shows every section.

CI installs Debian's ``chromium`` (``.ci/run``); elsewhere the test is skipped when it is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from matplotlib.image import imread

from compinterp import demo_lm
from compinterp.report import SECTIONS
from compinterp.report.lm import SECTIONS as LM_SECTIONS
from compinterp.tasks import text
from test_demo import BUDGET, run_demo

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                              "(apt-get install -y chromium; .ci/run installs it)")

PROBE_HEAD = """<script>window.__errors = [];
addEventListener("error", e => __errors.push(String(e.message || (e.target && e.target.src) || e)), true);
</script>"""
PROBE_BODY = """<script>addEventListener("load", () => {
  const images = [...document.images];
  const shown = key => { const s = document.getElementById(key); return !!s && s.getBoundingClientRect().height > 0; };
  const result = {errors: __errors, images: images.length,
                  broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
                  sections: SECTIONS.filter(shown),
                  fetched: performance.getEntriesByType("resource").map(r => r.name)
                             .filter(n => !n.startsWith("data:"))};
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});</script>"""


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.getbasetemp() / "demo"
    if not (out / "report.html").exists():
        code, _, stderr = run_demo(out, "--budget", BUDGET)
        assert code == 0, stderr
    return out / "report.html"


def probed(report: Path, sections: Sequence[str], tmp_path: Path) -> tuple[dict[str, Any], str]:
    """What headless Chromium found on ``report`` loaded offline (errors, images, broken images,
    the ``sections`` shown, fetched URLs), and the DOM it rendered."""
    page = report.read_text()
    probe = page.replace("<head>", "<head>" + PROBE_HEAD, 1).replace(
        "</body>", PROBE_BODY.replace("SECTIONS", json.dumps(list(sections))) + "</body>", 1)
    path = tmp_path / "probed.html"
    path.write_text(probe)
    done = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", path.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading: {done.stdout[-500:]}"
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert result["errors"] == [] and result["broken"] == [] and result["fetched"] == []
    assert result["sections"] == list(sections)
    assert result["images"] == page.count("<img ")
    return result, done.stdout


def test_report_loads_offline_without_errors_and_shows_each_section(report: Path, tmp_path: Path) -> None:
    _, dom = probed(report, SECTIONS, tmp_path)
    for title in ("At a glance", "Eigenvectors per digit", "Dictionary features", "Description length"):
        assert title in dom


def test_lm_report_loads_offline_without_errors_and_shows_each_section(tmp_path: Path, one_thread: None) -> None:
    task = text.task(context=32, width=32, heads=4, layers=2, hidden=32, train_bytes=65536, test_bytes=16384)
    demo_lm.run(tmp_path / "lm", task=task, progress=False)
    result, dom = probed(tmp_path / "lm" / "report.html", LM_SECTIONS, tmp_path)
    assert result["images"] >= 3
    for title in ("induction", "transcoder", "Refinement"):
        assert title.lower() in dom.lower()


def test_screenshot_shows_the_page(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    done = chromium(tmp_path, "--window-size=1200,2400", "--hide-scrollbars", f"--screenshot={shot}", report.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    ink = (pixels[..., :3].mean(-1) < 0.5).mean()       # dark pixels: text, plots, diagrams
    assert 0.005 < ink < 0.5 and pixels[..., :3].std() > 0.05
    assert shutil.which(str(CHROMIUM))
