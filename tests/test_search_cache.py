"""The search's caches change no result: the bits it keeps for every candidate (and every quantised width it
priced without building the model) equal a fresh description length, a candidate's kept quadratic forms give
the same comparison as forms computed afresh, and the sampled screen of ``grid_width`` answers as a full scan."""

from __future__ import annotations

import pytest
import torch
from tqdm.auto import tqdm

from compinterp.complexity import Reference, description_length, quantise
from compinterp.complexity.parameters import WIDTHS, grid_width
from compinterp.complexity.quantise import quantise_tensor
from compinterp.model import Model
from compinterp.refinement.passes import default_passes
from compinterp.refinement.search import _Search
from compinterp.syntax import Bilinear, Linear, Space

pytestmark = pytest.mark.usefixtures("one_thread")

X, Y = Space("x", 8), Space("y", 3)


def searched(model: Model) -> _Search:
    """A greedy search of ``model`` at bar 0.99, exact, default passes, run to the end."""
    with tqdm(disable=True) as bar, torch.random.fork_rng():
        torch.manual_seed(0)
        search = _Search(Reference(model, "exact"), default_passes(), 0.99, 200, True, 32, bar)
        search.run(1)
    return search


H = Space("h", 5)


@pytest.mark.parametrize("model", [Model(Bilinear("mlp", X, Y, hidden=16), seed=0),
                                   Model(Bilinear("mlp", X, H, hidden=12) >> Linear("out", H, Y), seed=1)],
                         ids=["bilinear", "bilinear-linear"])
def test_cached_bits_equal_fresh_description_lengths(model: Model) -> None:
    search = searched(model)
    assert search.evaluated > 5 and search.widths
    for candidate, bits in search.known.values():
        assert bits == description_length(candidate, 32)
    for (_, width), (candidate, bits) in search.widths.items():
        assert bits == description_length(quantise(candidate, width), 32)


def test_kept_forms_compare_as_fresh_ones() -> None:
    model = Model(Bilinear("mlp", X, Y, hidden=16), seed=0)
    reference = Reference(model, "exact")
    candidate = quantise(Model(Bilinear("mlp", X, Y, hidden=16), seed=2), 4)
    assert reference.forms(model) is reference.own
    assert reference.compare(candidate, reference.forms(candidate)) == reference.compare(candidate)
    assert reference.compare(model) == reference.compare(model, reference.own)


def full_scan(tensor: torch.Tensor) -> int | None:
    """``grid_width`` by its definition: every width tried on every entry."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    t = tensor.detach().reshape(-1).to(torch.float64)
    top = t.abs().max().item()
    if top == 0 or not torch.isfinite(t).all():
        return None
    tolerance = 8 * torch.finfo(tensor.dtype).eps * top
    for width in WIDTHS:
        scale = top / (2 ** (width - 1) - 1)
        if ((t / scale).round() * scale - t).abs().max().item() <= tolerance:
            return width
    return None


def test_grid_width_screen_answers_as_a_full_scan() -> None:
    gen = torch.Generator().manual_seed(0)
    widths = []
    for trial in range(600):
        shape = [(7,), (10, 40), (40, 16), (1,)][trial % 4]
        dtype = [torch.float32, torch.float64, torch.float16][trial % 3]
        t = torch.randn(*shape, generator=gen, dtype=torch.float64)
        width = WIDTHS[trial % len(WIDTHS)]
        kind = trial % 5
        if kind == 1:                           # on a grid
            t = quantise_tensor(t, width)
        elif kind == 2:                         # mostly zeros, on a grid or not
            t = quantise_tensor(t, width) * (torch.rand(*shape, generator=gen) < 0.1)
        elif kind == 3:                         # a grid perturbed by about the tolerance, either side
            t = quantise_tensor(t, width) + torch.randn(*shape, generator=gen, dtype=torch.float64) * 10.0 ** -(
                4 + trial % 13)
        elif kind == 4:                         # one entry off the grid
            t = quantise_tensor(t, width)
            t.view(-1)[-1] += 1e-3
        t = t.to(dtype)
        widths.append(grid_width(t))
        assert widths[-1] == full_scan(t), (trial, shape, dtype, kind)
    assert None in widths and len(set(widths)) > 6
    for special in (torch.tensor([1.0, float("nan")]), torch.tensor([float("inf"), 0.5]), torch.zeros(3)):
        assert grid_width(special) is None
