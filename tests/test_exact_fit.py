"""The exact check under a Gaussian fitted to data (``check(..., data="exact", fit=data)``, ``--fit``) against
Monte Carlo under the same Gaussian, and the errors bad fit data gives."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from compinterp.cli import main
from compinterp.data import gaussian
from compinterp.errors import InputError
from compinterp.faithfulness import check
from compinterp.faithfulness.exact.measures import GaussianFit
from compinterp.model import Model
from compinterp.syntax import Bilinear, Embed, Linear, Space, chain, residual

X, H, Y = Space("x", 6), Space("h", 6), Space("y", 3)


def network(seed: int, hidden: int = 8) -> Model:
    return Model(chain(Linear("embed", X, H, bias=True), residual(Bilinear("mlp", H, H, hidden=hidden, bias=True)),
                       Linear("out", H, Y)), seed=seed)


def truncated(model: Model, keep: int) -> Model:
    """The same network with all but ``keep`` hidden units of the bilinear layer removed."""
    params = {name: {role: value.detach().clone() for role, value in model.box_params(name).items()}
              for name in ("embed", "mlp", "out")}
    mlp = params["mlp"]
    params["mlp"] = {"L": mlp["L"][:keep], "R": mlp["R"][:keep], "l": mlp["l"][:keep], "r": mlp["r"][:keep],
                     "D": mlp["D"][:, :keep], "d": mlp["d"]}
    return Model(chain(Linear("embed", X, H, bias=True), residual(Bilinear("mlp", H, H, hidden=keep, bias=True)),
                       Linear("out", H, Y)), params)


def skewed(n: int, seed: int) -> torch.Tensor:
    """Correlated, off-centre, unequally scaled input vectors (not Gaussian: uniform noise mixed)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(6, 6, generator=gen) * torch.linspace(0.2, 1.5, 6)
    return (torch.rand(n, 6, generator=gen) - 0.5) * 3 @ mix.T + torch.linspace(-1.0, 1.0, 6)


def monte_carlo_fvu(model: Model, other: Model, mean: torch.Tensor, cov: torch.Tensor,
                    n: int) -> tuple[float, float]:
    """FVU from ``n`` samples of ``N(mean, cov)`` drawn here with plain torch, and its standard error (delta method
    for the ratio of two means)."""
    gen = torch.Generator().manual_seed(7)
    root = torch.linalg.cholesky(cov)
    x = mean + torch.randn(n, mean.shape[0], generator=gen, dtype=torch.float64) @ root.T
    with torch.no_grad():
        y, z = model(x.float()).double(), other(x.float()).double()
    e, w = (y - z).square().sum(1), (y - y.mean(0)).square().sum(1)
    ratio = e.mean() / w.mean()
    influence = (e - ratio * w) / w.mean()
    return ratio.item(), influence.std().item() / math.sqrt(n)


def test_fitted_exact_check_equals_monte_carlo_under_the_same_gaussian() -> None:
    model = network(0)
    small = truncated(model, 3)
    data = skewed(4000, seed=1)
    report = check(model, small, "exact", fit=data)
    mean, cov = data.double().mean(0), torch.cov(data.double().T)
    assert report.exact and report.samples == 0
    assert report.data == "N(mean, cov) fitted to 4,000 samples" and report.note.startswith(report.data)
    fvu, se = monte_carlo_fvu(model, small, mean, cov, 400_000)
    assert abs(report.end_to_end.fvu - fvu) < 4 * se
    standard = check(model, small, "exact")
    assert standard.data == "N(0, I)" and abs(standard.end_to_end.fvu - fvu) > 20 * se
    given = GaussianFit(mean, cov, 4000)
    assert check(model, small, fit=given).end_to_end.fvu == pytest.approx(report.end_to_end.fvu, rel=1e-9)


def test_fit_streams_over_batches_and_ranks_alike() -> None:
    model = network(1)
    data = skewed(1000, seed=2)
    whole = check(model, truncated(model, 2), "exact", fit=data, batch_size=1000)
    streamed = check(model, truncated(model, 2), "exact", fit=data, batch_size=64)
    assert streamed.end_to_end.fvu == pytest.approx(whole.end_to_end.fvu, rel=1e-9)


def test_bad_fit_data_names_the_wire() -> None:
    model = network(2)
    with pytest.raises(InputError, match=r"^fit data: batch 0: wire x:6 takes \(samples, 6\), but the data has shape "
                                         r"\(100, 5\): its last axis must be 6$"):
        check(model, model, "exact", fit=torch.randn(100, 5))
    with pytest.raises(InputError, match=r"^fit= sets the Gaussian of the exact check: give it with data='exact'"):
        check(model, model, gaussian(100), fit=torch.randn(100, 6))
    with pytest.raises(InputError, match=r"mean \(5,\) and cov \(5, 5\); the inputs x:6 need \(6,\) and \(6, 6\)"):
        check(model, model, "exact", fit=GaussianFit(torch.zeros(5), torch.eye(5), 10))
    with pytest.raises(InputError, match=r"fit data: 1 sample\(s\) of x:6"):
        check(model, model, "exact", fit=torch.randn(1, 6))
    tok = Space("tok", 5)
    lm = Model(Embed("emb", tok, H) >> Linear("out", H, Y), seed=0)
    with pytest.raises(InputError, match=r"^fit: wire tok:5 takes tokens \(it feeds Embed box 'emb'\)"):
        check(lm, lm, "exact", fit=torch.randint(5, (10,)))


def test_cli_check_exact_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = network(3)
    small = truncated(model, 4)
    model.save(tmp_path / "a")
    small.save(tmp_path / "b")
    data = skewed(500, seed=3)
    torch.save(data, tmp_path / "fit.pt")
    args = ["check", str(tmp_path / "a"), str(tmp_path / "b"), "--fit", str(tmp_path / "fit.pt"), "--json"]
    assert main([*args, "--data", "exact"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["exact"] is True and out["data"] == f"N(mean, cov) fitted to 500 samples of {tmp_path / 'fit.pt'}"
    assert out["end_to_end"]["fvu"] == pytest.approx(check(model, small, fit=data).end_to_end.fvu, rel=1e-9)
    assert main(args) == 0                      # --fit implies --data exact
    assert json.loads(capsys.readouterr().out)["end_to_end"]["fvu"] == pytest.approx(out["end_to_end"]["fvu"])
    assert main([*args, "--data", "gaussian:100"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("compinterp: error: fit= sets the Gaussian of the exact check") and err.count("\n") == 1
