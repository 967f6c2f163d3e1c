"""``compinterp demo`` end to end: every number it reports is recomputed here from the files it wrote.

The demo runs once per session (shared with the browser test) with a smaller refinement
budget than the default, so the file stays fast; everything else is the real demo.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import compinterp as ci
from compinterp.cli import main
from compinterp.complexity import description_length
from compinterp.interpretation import Interpretation
from compinterp.report import SECTIONS
from compinterp.report.html import number
from compinterp.tasks import digits

BUDGET = "40"


def run_demo(out: Path, *args: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["demo", "--out", str(out), *args])
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.getbasetemp() / "demo"
    printed: dict[str, Any] = {}
    if not (out / "report.html").exists():
        code, stdout, stderr = run_demo(out, "--budget", BUDGET, "--json")
        assert code == 0, stderr
        printed = json.loads(stdout)
    return out, json.loads((out / "results.json").read_text()), printed


def fvu(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``sum ||y_M - y_E||^2 / sum ||y_M - mean y_M||^2``, by hand, in float64."""
    reference, other = reference.double(), other.double()
    return ((reference - other).square().sum() / (reference - reference.mean(0)).square().sum()).item()


def test_demo_writes_everything_it_promises(demo: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    out, numbers, printed = demo
    if printed:
        assert printed == numbers | {"report": str(out / "report.html")}
    for name in ("diagram.json", "weights.safetensors", "meta.json", "train.json"):
        assert (out / "model" / name).is_file()
    assert (out / "refined" / "diagram.json").is_file() and (out / "explanation").is_dir()
    for path in numbers["figures"].values():
        assert (out / path).stat().st_size > 1000
    assert 0 < numbers["seconds"]["total"] < 600


def test_accuracy_and_explanation_recomputed(demo: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    out, numbers, _ = demo
    model = ci.load(out / "model")
    x, y = digits.load("test")
    with torch.no_grad():
        logits = model(x)
    assert (logits.argmax(-1) == y).sum().item() / len(y) == pytest.approx(numbers["model"]["test_accuracy"])
    assert numbers["model"]["test_accuracy"] >= 0.95

    explanation = Interpretation.load(out / "explanation", model)
    e = numbers["explanation"]
    with torch.no_grad():
        guess = explanation.explanation(x)
    assert fvu(logits, guess) == pytest.approx(e["data"]["end_to_end"]["fvu"], rel=1e-4)
    assert (guess.argmax(-1) == y).sum().item() / len(y) == pytest.approx(e["accuracy"])
    row = next(r for r in e["data"]["boxes"] if r["box"] == "mlp")
    assert row["fvu"] == pytest.approx(fvu(logits, guess), rel=1e-4)     # unembed is exact, so mlp carries it all

    # exact under N(0, I), against a Monte-Carlo estimate
    z = torch.randn(200_000, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        mc = fvu(model.double()(z), explanation.explanation.double()(z))
    assert mc == pytest.approx(e["exact"]["end_to_end"]["fvu"], abs=0.01)


def test_eigen_explanation_keeps_the_largest_eigenvalues(demo: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    """Each digit's quadratic form Q_c, built by hand: its eigenvalues are the report's, and the explanation
    drops exactly the smallest: ``||Q_c - Q_c^(k)||_F^2 = sum of the dropped lambda^2``."""
    out, numbers, _ = demo
    model = ci.load(out / "model")
    p = {k: v.detach().double() for k, v in model.box_params("mlp").items()}
    U = model.box_params("unembed")["W"].detach().double()
    B = torch.einsum("oh,hi,hj->oij", p["D"], p["L"], p["R"])
    Q = torch.einsum("co,oij->cij", U, (B + B.transpose(1, 2)) / 2)
    lam = torch.linalg.eigvalsh(Q)
    top = lam.gather(1, lam.abs().argsort(1, descending=True))
    shown = torch.tensor(numbers["eigenvectors"]["eigenvalues"], dtype=torch.float64)
    assert torch.allclose(top[:, :shown.shape[1]], shown, atol=1e-6)
    k = numbers["explanation"]["k"]
    e = Interpretation.load(out / "explanation", model).explanation
    q = e.box_params(f"mlp_eigen{k}")
    V, D = q["L"].detach().double(), q["D"].detach().double()
    assert torch.equal(q["L"], q["R"])
    kept = torch.einsum("ch,hi,hj->cij", D, V, V)
    dropped = top[:, k:].square().sum(1)
    assert torch.allclose((Q - kept).square().sum((1, 2)), dropped, rtol=1e-3, atol=1e-6)


def test_refinement_recomputed(demo: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    out, numbers, _ = demo
    r = numbers["refinement"]
    model, refined = ci.load(out / "model"), ci.load(out / "refined")
    x, _ = digits.load("train")
    xt, yt = digits.load("test")
    with torch.no_grad():
        assert 1 - fvu(model(x), refined(x)) == pytest.approx(r["faithfulness"], abs=1e-4)
        assert 1 - fvu(model(xt), refined(xt)) == pytest.approx(r["held_out"]["end_to_end"]["faithfulness"], abs=1e-4)
        assert (refined(xt).argmax(-1) == yt).sum().item() / len(yt) == pytest.approx(r["held_out_accuracy"])
    assert r["faithfulness"] >= r["min_faithfulness"] == 0.99
    assert description_length(out / "refined").model == pytest.approx(r["refined_bits"])
    assert description_length(out / "model").model == pytest.approx(r["original_bits"])
    assert r["ratio"] == pytest.approx(r["original_bits"] / r["refined_bits"]) and r["ratio"] > 2


def test_dictionary_recomputed(demo: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    """The TopK SAE on the wire out, saved in ``dictionary/``: its reconstruction, sparsity, code bits and
    top features recomputed by hand from the weights on the held-out digits."""
    out, numbers, _ = demo
    d = numbers["dictionary"]
    model, refined = ci.load(out / "model"), ci.load(out / "dictionary")
    assert (d["box"], d["wire"], d["kind"]) == ("mlp", "out:64", "topk")
    assert [b.name for b in refined.diagram.boxes] == ["mlp", "mlp_enc", "mlp_relu", "mlp_topk", "mlp_dec", "unembed"]
    x, y = digits.load("test")
    p = {k: v.detach().double() for k, v in model.box_params("mlp").items()}
    enc, dec = ({k: v.detach().double() for k, v in refined.box_params(name).items()} for name in ("mlp_enc", "mlp_dec"))
    h = (x.double() @ p["L"].T) * (x.double() @ p["R"].T) @ p["D"].T             # the wire out
    pre = (h @ enc["W"].T + enc["b"]).relu()
    kth = pre.sort(-1, descending=True).values[:, d["k"] - 1:d["k"]]
    z = torch.where((pre >= kth) & (pre > 0), pre, 0.0)                            # TopK, by hand
    recon = z @ dec["W"].T + dec["b"]
    assert 1 - fvu(h, recon) == pytest.approx(d["local"], abs=1e-4)
    with torch.no_grad():
        logits, guess = model(x), refined(x)
    assert 1 - fvu(logits, guess) == pytest.approx(d["end_to_end"], abs=1e-4)
    assert (guess.argmax(-1) == y).sum().item() / len(y) == pytest.approx(d["held_out_accuracy"])
    l0 = (z != 0).sum(-1).double().mean().item()
    assert l0 == pytest.approx(d["l0"]) and l0 <= d["k"]
    assert d["bits"]["code"] == pytest.approx(len(y) * l0 * (8 + math.log2(d["width"])))
    assert d["model_bits"]["code"] == pytest.approx(d["bits"]["code"])
    assert d["model_bits"]["with_dictionary"] == pytest.approx(description_length(refined).model + d["bits"]["code"])
    assert d["model_bits"]["original"] == pytest.approx(description_length(model).model)
    U = model.box_params("unembed")["W"].detach().double()
    assert len(d["features"]) == 6
    for f in d["features"]:
        i, fired = f["index"], z[:, f["index"]] != 0
        assert f["active"] == int(fired.sum()) > 0
        top, shown = z[:, i].sort(descending=True), min(6, f["active"])
        assert f["top_values"] == pytest.approx(top.values[:shown].tolist(), rel=1e-4)
        assert f["top_labels"] == y[top.indices[:shown]].tolist()
        assert f["direction"] == pytest.approx(dec["W"][:, i].tolist(), abs=1e-6)
        effect = (z[fired, i, None] * dec["W"][:, i]).mean(0) @ U.T               # downstream of out is linear
        assert f["effect"] == pytest.approx(effect.tolist(), abs=1e-3)


def test_report_has_every_section_and_is_self_contained(demo: tuple[Path, dict[str, Any], dict[str, Any]]) -> None:
    out, numbers, _ = demo
    page = (out / "report.html").read_text()
    positions = [page.index(f'<section id="{key}">') for key in SECTIONS]
    assert positions == sorted(positions)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) >= 8 and all(s.startswith("data:image/") for s in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page
    assert f"{numbers['refinement']['ratio']:.1f}x" in page
    assert f"{numbers['model']['test_accuracy']:.4f}" in page
    section = page[page.index('<section id="dictionary">'):page.index('<section id="description-length">')]
    assert "<h2>Dictionary features</h2>" in section and section.count("<img ") == 2
    assert number(numbers["dictionary"]["local"]) in section and number(numbers["dictionary"]["end_to_end"]) in section
    for f in numbers["dictionary"]["features"]:
        assert f"<td>{' '.join(str(label) for label in f['top_labels'])}</td>" in section


def test_a_second_run_reuses_the_model(demo: tuple[Path, dict[str, Any], dict[str, Any]], tmp_path: Path) -> None:
    out, numbers, _ = demo
    again = tmp_path / "again"
    shutil.copytree(out / "model", again / "model")
    code, stdout, stderr = run_demo(again, "--budget", "3", "--json")
    assert code == 0, stderr
    second = json.loads(stdout)
    assert second["model"]["reused"] is True
    assert second["model"]["test_accuracy"] == numbers["model"]["test_accuracy"]


def test_demo_errors_are_one_line(tmp_path: Path) -> None:
    code, _, err = run_demo(tmp_path / "a", "--k", "0")
    assert code == 1 and err == "compinterp: error: k must be an integer from 1 to 64, got 0\n"
    (tmp_path / "file").write_text("x")
    code, _, err = run_demo(tmp_path / "file")
    assert code == 1 and err.startswith("compinterp: error: cannot write the demo to") and err.count("\n") == 1
    code, out, _ = run_demo(tmp_path, "--help")
    assert code == 0 and "example:\n  compinterp demo --out runs/demo" in out
