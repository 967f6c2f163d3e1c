"""The search: it keeps the bar (re-checked independently), its frontier is non-dominated, it is
deterministic for a seed, it respects its budget, and description length drops when a pass
removes parameters.

The passes here are written in this file (a hidden-unit truncation and a random one), so the
search is tested against the ``Pass`` protocol alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from compinterp.complexity import description_length, grid_width
from compinterp.errors import InputError
from compinterp.faithfulness import check
from compinterp.model import Model
from compinterp.refinement.base import Rewrite, substitute
from compinterp.refinement.search import Frontier, Point, refine
from compinterp.semantics.tensor import NotPolynomialError
from compinterp.syntax import Bilinear, Elementwise, Linear, Space

pytestmark = pytest.mark.usefixtures("one_thread")

X, Y = Space("x", 8), Space("y", 3)


class Truncate:
    """Keep the ``keep`` hidden units of a Bilinear box with the largest ``|D_h| |L_h| |R_h|``."""

    name = "truncate"

    def candidates(self, model: Model) -> list[Rewrite]:
        out = []
        for name, box in model.boxes.items():
            if box.kind == "Bilinear" and box.data["hidden"] > 1:
                h = box.data["hidden"]
                out += [Rewrite(self.name, name, {"keep": k}) for k in range(h - 1, 0, -1)]
        return out

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        p = {k: v.detach() for k, v in model.box_params(rewrite.box).items()}
        score = p["D"].norm(dim=0) * p["L"].norm(dim=1) * p["R"].norm(dim=1)
        top = score.argsort(descending=True)[:rewrite.settings["keep"]].sort().values
        box = model.boxes[rewrite.box]
        new = Bilinear(f"{rewrite.box}_t", box.dom, box.cod, hidden=len(top))
        return substitute(model, {rewrite.box: new}, {new.name: {"L": p["L"][top], "R": p["R"][top],
                                                                  "D": p["D"][:, top]}})


class RandomDrop(Truncate):
    """Keep ``keep`` hidden units chosen at random (torch's global generator)."""

    name = "random_drop"

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        p = {k: v.detach() for k, v in model.box_params(rewrite.box).items()}
        top = torch.randperm(p["L"].shape[0])[:rewrite.settings["keep"]].sort().values
        box = model.boxes[rewrite.box]
        new = Bilinear(f"{rewrite.box}_r", box.dom, box.cod, hidden=len(top))
        return substitute(model, {rewrite.box: new}, {new.name: {"L": p["L"][top], "R": p["R"][top],
                                                                  "D": p["D"][:, top]}})


def decaying(hidden: int = 16, seed: int = 0) -> Model:
    """A Bilinear layer whose hidden units matter less and less (so truncation has a real trade-off)."""
    model = Model(Bilinear("mlp", X, Y, hidden=hidden), seed=seed)
    D = model.box_params("mlp")["D"].detach() * 0.7 ** torch.arange(hidden)
    return Model(model.diagram, {"mlp": {"L": model.box_params("mlp")["L"].detach(),
                                         "R": model.box_params("mlp")["R"].detach(), "D": D}})


def hand_fvu(model: Model, other: Model, x: torch.Tensor) -> float:
    with torch.no_grad():
        y, z = model(x).double(), other(x).double()
    return ((y - z) ** 2).sum().item() / ((y - y.mean(0)) ** 2).sum().item()


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return torch.randn(1000, 8, generator=gen), torch.randn(1000, 8, generator=gen)


def test_description_length_drops_when_a_pass_removes_parameters() -> None:
    model, p = decaying(), Truncate()
    before = description_length(model).total
    for rewrite in p.candidates(model):
        smaller = p.apply(model, rewrite)
        assert smaller.num_params() < model.num_params()
        assert description_length(smaller).total < before, str(rewrite)


@pytest.mark.parametrize("bar", [0.9, 0.99, 0.999])
def test_the_search_keeps_the_bar_on_data_it_did_not_see(data: tuple[torch.Tensor, torch.Tensor],
                                                         bar: float) -> None:
    search, held_out = data
    model = decaying()
    result = refine(model, bar, data=search, passes=[Truncate()], progress=False)
    assert result.faithfulness >= bar and result.refined_bits < result.original_bits
    assert 1 - hand_fvu(model, result.model, search) == pytest.approx(result.faithfulness, abs=1e-6)
    assert check(model, result.model, held_out, progress=False).end_to_end.faithfulness >= bar - 0.02
    assert result.refined_bits == pytest.approx(description_length(result.model).model)
    truncated = [r for r in result.history if r.pass_name == "truncate"]
    assert truncated and result.history[-1].pass_name == "quantise"
    width = result.history[-1].settings["bits"]
    assert all(grid_width(t) is not None and grid_width(t) <= width for t in result.model.params.state_dict().values())


def test_exact_search_is_checked_exactly_and_by_monte_carlo() -> None:
    model = decaying()
    result = refine(model, 0.99, data="exact", passes=[Truncate()], progress=False)
    assert result.exact and result.faithfulness >= 0.99
    assert check(model, result.model, "exact").end_to_end.faithfulness == pytest.approx(result.faithfulness, abs=1e-9)
    x = torch.randn(200_000, 8, generator=torch.Generator().manual_seed(6))
    assert 1 - hand_fvu(model, result.model, x) == pytest.approx(result.faithfulness, abs=2e-3)


def test_frontier_is_non_dominated_and_holds_the_result(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    result = refine(decaying(), 0.99, data=data[0], passes=[Truncate()], beam=2, progress=False)
    points = list(result.frontier)
    assert len(points) >= 3
    for a in points:
        for b in points:
            if a is not b:
                assert not (b.bits <= a.bits and b.faithfulness >= a.faithfulness), (a, b)
    chosen = result.frontier.best(0.99)
    assert (chosen.bits, chosen.faithfulness) == (result.refined_bits, result.faithfulness)
    assert [str(r) for r in chosen.history] == [str(r) for r in result.history]
    assert any(p.faithfulness < 0.99 for p in points)              # what the bar cut off is shown too


@given(st.lists(st.tuples(st.integers(1, 50), st.floats(-1, 1)), min_size=1, max_size=30))
def test_frontier_of_any_points(pairs: list[tuple[int, float]]) -> None:
    points = [Point(float(b), f, ()) for b, f in pairs]
    frontier = list(Frontier(points))
    for p in points:                      # every point is matched or beaten by one on the frontier
        assert any(q.bits <= p.bits and q.faithfulness >= p.faithfulness for q in frontier)
    for q in frontier:                    # and nothing beats a frontier point
        assert not any((p.bits <= q.bits and p.faithfulness > q.faithfulness)
                       or (p.bits < q.bits and p.faithfulness >= q.faithfulness) for p in points)


def test_deterministic_for_a_seed(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    state = torch.get_rng_state()
    runs = [refine(decaying(), 0.95, data=data[0], passes=[RandomDrop()], seed=s, progress=False).to_json()
            for s in (1, 1, 2)]
    assert torch.equal(torch.get_rng_state(), state)           # the caller's random state is untouched
    assert json.dumps(runs[0]) == json.dumps(runs[1])
    assert runs[0]["frontier"] != runs[2]["frontier"]


def test_budget_beam_and_no_quantisation(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = decaying()
    only_root = refine(model, 0.99, data=data[0], passes=[Truncate()], budget=1, progress=False)
    assert only_root.model is model and only_root.history == () and only_root.evaluated == 1
    assert only_root.faithfulness == 1.0 and only_root.refined_bits == only_root.original_bits
    small = refine(model, 0.99, data=data[0], passes=[Truncate()], budget=7, progress=False)
    assert small.evaluated == 7 and small.faithfulness >= 0.99
    greedy = refine(model, 0.99, data=data[0], passes=[Truncate()], quantise=False, progress=False)
    beam = refine(model, 0.99, data=data[0], passes=[Truncate()], quantise=False, beam=3, progress=False)
    assert all(r.pass_name == "truncate" for r in greedy.history + beam.history)
    assert beam.evaluated >= greedy.evaluated and beam.faithfulness >= 0.99 and greedy.faithfulness >= 0.99
    assert greedy.refined_bits < greedy.original_bits


def test_non_polynomial_models_use_data(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    model = Model(Linear("up", X, X) >> Elementwise("relu", X) >> Linear("down", X, Y), seed=0)
    with pytest.raises(NotPolynomialError, match="box 'relu' .* is not polynomial.*give data instead"):
        refine(model, 0.99, data="exact", passes=[], progress=False)
    result = refine(model, 0.99, data=data[0], passes=[], progress=False)
    assert result.faithfulness >= 0.99 and not result.exact and result.history[0].pass_name == "quantise"


def test_json_and_plot(data: tuple[torch.Tensor, torch.Tensor], tmp_path: Path) -> None:
    result = refine(decaying(), 0.99, data=data[0], passes=[Truncate()], progress=False)
    obj = json.loads(json.dumps(result.to_json()))
    assert {"original_bits", "refined_bits", "faithfulness", "frontier", "history"} <= set(obj)
    assert set(obj["frontier"][0]) == {"bits", "faithfulness", "passes"}
    assert obj["history"][0]["pass"] == "truncate" and obj["ratio"] == pytest.approx(result.ratio)
    assert "history: truncate(mlp" in str(result)
    png, svg = result.frontier.plot(tmp_path / "f.png"), result.frontier.plot(tmp_path / "f.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "<svg" in svg.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "f.svg"]          # no partial files left
    with pytest.raises(Exception, match=r"cannot plot to .*f\.jpg: the file name must end in \.png or \.svg"):
        result.frontier.plot(tmp_path / "f.jpg")


def test_bad_arguments() -> None:
    model = decaying()
    with pytest.raises(InputError, match="min_faithfulness must be a number from 0 to 1, got 1.5"):
        refine(model, 1.5, passes=[])
    with pytest.raises(InputError, match="budget must be a positive integer, got 0"):
        refine(model, budget=0, passes=[])
    with pytest.raises(InputError, match="passes must be a list of passes or pass names, got the string 'eigen'"):
        refine(model, passes="eigen")
    with pytest.raises(InputError, match="is not a rewrite pass: it needs name, candidates"):
        refine(model, passes=[object()])
    with pytest.raises(InputError, match="refine\\(\\) takes a compinterp Model, got str"):
        refine("model")
