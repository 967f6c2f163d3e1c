"""``check(..., data="exact")``: the exact path of the checker agrees with the data path and says why not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compinterp.cli import main
from compinterp.data import gaussian
from compinterp.faithfulness import check
from compinterp.faithfulness.exact import ExactError, exact_compare
from compinterp.interpretation import Interpretation, maps
from compinterp.model import Model
from compinterp.semantics.tensor import NotPolynomialError
from compinterp.syntax import Bilinear, Linear, Norm, Space, chain, residual

X, H, Y = Space("x", 6), Space("h", 6), Space("y", 3)


def network(seed: int, hidden: int = 8) -> Model:
    return Model(chain(Linear("embed", X, H, bias=True), residual(Bilinear("mlp", H, H, hidden=hidden)),
                       Linear("out", H, Y)), seed=seed)


def truncated(model: Model, keep: int) -> Model:
    """The same network with all but ``keep`` hidden units of the bilinear layer removed."""
    params = {name: {role: value.detach().clone() for role, value in model.box_params(name).items()}
              for name in ("embed", "mlp", "out")}
    params["mlp"] = {"L": params["mlp"]["L"][:keep], "R": params["mlp"]["R"][:keep], "D": params["mlp"]["D"][:, :keep]}
    return Model(chain(Linear("embed", X, H, bias=True), residual(Bilinear("mlp", H, H, hidden=keep)),
                       Linear("out", H, Y)), params)


def test_exact_report_matches_exact_compare_and_the_data_path() -> None:
    model = network(0)
    small = truncated(model, 1)
    exact = check(model, small, "exact")
    direct = exact_compare(model, small)
    assert exact.exact and exact.samples == 0 and exact.boxes == ()
    assert exact.end_to_end.fvu == pytest.approx(direct.fvu, rel=1e-12)
    assert 1e-3 < exact.end_to_end.fvu < 1
    sampled = check(model, small, gaussian(100_000, seed=1), batch_size=20_000, progress=False)
    assert sampled.end_to_end.fvu == pytest.approx(exact.end_to_end.fvu, rel=0.05)
    assert sampled.end_to_end.rel_l2 == pytest.approx(exact.end_to_end.rel_l2, rel=0.05)
    assert "N(0, I)" in exact.note and "exact" in str(exact)


def test_identity_interpretation_is_exactly_faithful() -> None:
    model = network(1)
    report = check(model, Interpretation(model), "exact")
    assert report.exact and report.end_to_end.fvu == pytest.approx(0.0, abs=1e-12)


def test_exact_needs_identity_maps_on_the_boundary() -> None:
    model = network(2)
    flip = maps.linear(-torch.eye(3))
    interpretation = Interpretation(model, boxes={"out": Linear("out", H, Y)}, wires={"y": flip})
    with pytest.raises(ExactError, match=r"wire y:3 is mapped by .*needs identity maps"):
        check(model, interpretation, "exact")


def test_non_polynomial_boxes_are_named() -> None:
    model = Model(Norm("ln", X) >> Linear("out", X, Y))
    with pytest.raises(NotPolynomialError, match=r"box 'ln' \(Norm x:6 -> x:6\) is not polynomial"):
        check(model, model, "exact")


def test_cli_check_exact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = network(3)
    model.save(tmp_path / "a")
    truncated(model, 4).save(tmp_path / "b")
    assert main(["check", str(tmp_path / "a"), str(tmp_path / "b"), "--data", "exact", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exact"] is True
    assert out["end_to_end"]["fvu"] == pytest.approx(exact_compare(model, truncated(model, 4)).fvu, rel=1e-9)
    assert main(["check", str(tmp_path / "a"), str(tmp_path / "b"), "--data", "gaussian:2000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exact"] is False
