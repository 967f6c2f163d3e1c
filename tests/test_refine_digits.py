"""Acceptance for issue 5: refining a bilinear MLP trained on sklearn's digits.

The model (pixels:64 -> Bilinear, hidden 64 -> digits:10) is trained here with Adam from
a fixed seed. The held-out digits are split in two: the search sees one half, and the
refined model is re-checked, independently, on the other half. The search uses the
library's default passes except CP (a fit per setting, too slow for a test; the
benchmark runs it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from compinterp.complexity import description_length
from compinterp.faithfulness import check
from compinterp.model import Model, load
from compinterp.refinement.passes import CP, PASSES, default_passes
from compinterp.refinement.search import RefineResult, refine
from compinterp.syntax import Bilinear, Space
from compinterp.tasks import digits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained() -> Model:
    x, y = digits.load("train")
    model = Model(Bilinear("mlp", Space("pixels", 64), Space("digits", 10), hidden=64), seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)
    for _ in range(20):
        perm = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), 128):
            rows = perm[start:start + 128]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


@pytest.fixture(scope="module")
def halves() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    x, y = digits.load("test")
    half = len(x) // 2
    return (x[:half], y[:half]), (x[half:], y[half:])


@pytest.fixture(scope="module")
def result(trained: Model, halves: tuple) -> RefineResult:
    (search, _), _ = halves
    passes = [p for p in default_passes() if p.name != "cp"]
    return refine(trained, 0.99, data=search, passes=passes, progress=False)


def accuracy(model: Model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def test_the_model_is_trained(trained: Model) -> None:
    assert accuracy(trained, *digits.load("test")) >= 0.95


def test_refined_model_is_faithful_on_unseen_digits_and_4x_shorter(trained: Model, halves: tuple,
                                                                    result: RefineResult, tmp_path: Path) -> None:
    _, (verify, labels) = halves
    assert result.faithfulness >= 0.99
    recheck = check(trained, result.model, (verify, labels), progress=False).end_to_end
    assert recheck.faithfulness >= 0.99 and recheck.n == len(verify)
    original, refined = description_length(trained).model, description_length(result.model).model
    assert (original, refined) == (pytest.approx(result.original_bits), pytest.approx(result.refined_bits))
    assert original >= 4 * refined
    assert accuracy(result.model, verify, labels) >= accuracy(trained, verify, labels) - 0.02
    passes = [rewrite.pass_name for rewrite in result.history]
    assert "eigen" in passes and passes[-1] == "quantise"
    again = load(result.model.save(tmp_path / "refined"))
    assert torch.equal(again(verify), result.model(verify))
    assert description_length(tmp_path / "refined").model == pytest.approx(refined)


def test_frontier_is_non_dominated_and_respects_the_bar(result: RefineResult) -> None:
    points = list(result.frontier)
    assert all(a.bits < b.bits and a.faithfulness < b.faithfulness for a, b in zip(points, points[1:]))
    chosen = result.frontier.best(0.99)
    assert chosen.bits == result.refined_bits and chosen.faithfulness >= 0.99
    assert all(p.faithfulness < 0.99 for p in points if p.bits < chosen.bits)


def test_every_pass_that_removes_parameters_shortens_the_description(trained: Model) -> None:
    before = description_length(trained).total
    checked = set()
    for name, cls in PASSES.items():
        p = CP(steps=10) if cls is CP else cls()
        for rewrite in p.candidates(trained):
            smaller = p.apply(trained, rewrite)
            if smaller.num_params() < trained.num_params():
                assert description_length(smaller).total < before, str(rewrite)
                checked.add(name)
    assert {"eigen", "prune", "cp"} <= checked
