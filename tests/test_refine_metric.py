"""A search under a loss-recovered bar: its scores are the loss recovered that ``check`` reports and that a
hand computation gives, and it refuses what it cannot score."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import compinterp as ci
from compinterp.errors import InputError
from conftest import imported_gpt2


def classifier() -> tuple[ci.Model, torch.Tensor, torch.Tensor]:
    x, h, logits = ci.Space("x", 12), ci.Space("h", 24), ci.Space("logits", 5)
    model = ci.Model(ci.chain(ci.Linear("a", x, h, bias=True), ci.Elementwise("relu", h, name="act"),
                              ci.Unembed("unembed", h, logits)), seed=0, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(512, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        noisy = model(inputs) + 0.5 * torch.randn(512, 5, generator=g, dtype=torch.float64)
    return model, inputs, noisy.argmax(-1)


def by_hand(model: ci.Model, other: ci.Model, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """``(CE_mean - CE_other) / (CE_mean - CE_model)``, the mean logits the ablation."""
    with torch.no_grad():
        mine, theirs = model(inputs), other(inputs)
    ce = lambda logits: F.cross_entropy(logits, labels).item()  # noqa: E731
    ablated = ce(mine.mean(0).expand_as(mine))
    return (ablated - ce(theirs)) / (ablated - ce(mine))


def test_the_bar_reads_the_loss_recovered_of_check_and_of_a_hand_computation() -> None:
    model, inputs, labels = classifier()
    result = ci.refine(model, 0.9, data=(inputs, labels), passes=["lowrank", "prune"], budget=20, progress=False,
                       metric="loss_recovered", quantise=False)
    assert result.metric == "loss_recovered" and result.to_json()["metric"] == "loss_recovered"
    assert result.history, "a loss-recovered bar of 0.9 leaves room to shorten this model"
    reported = ci.check(model, result.model, (inputs, labels), progress=False).end_to_end.loss_recovered
    assert result.faithfulness == pytest.approx(reported, abs=1e-9)
    assert result.faithfulness == pytest.approx(by_hand(model, result.model, inputs, labels), abs=1e-9)
    assert result.faithfulness >= 0.9
    assert all(p.faithfulness < 0.9 or p.bits >= result.refined_bits for p in result.frontier)
    assert "loss recovered" in str(result)
    plain = ci.refine(model, 0.9, data=(inputs, labels), passes=["lowrank", "prune"], budget=20, progress=False,
                      quantise=False)
    assert plain.metric == "faithfulness" and plain.faithfulness == pytest.approx(
        ci.check(model, plain.model, (inputs, labels), progress=False).end_to_end.faithfulness, abs=1e-9)


def test_a_loss_recovered_bar_refuses_what_it_cannot_score() -> None:
    model, inputs, labels = classifier()
    with pytest.raises(InputError, match="metric must be one of faithfulness, loss_recovered, got 'kl'"):
        ci.refine(model, 0.9, data=(inputs, labels), metric="kl", progress=False)
    with pytest.raises(InputError, match="needs data .* not 'exact'|the exact measure has no labels"):
        ci.refine(model, 0.9, data="exact", metric="loss_recovered", progress=False)
    with pytest.raises(InputError, match="labels must be integer class ids"):
        ci.refine(model, 0.9, data=(inputs, labels.double()), metric="loss_recovered", progress=False)


def test_a_loss_recovered_bar_on_an_imported_hf_gpt2() -> None:
    model, data = imported_gpt2()
    result = ci.refine(model, 0.9, data=data, passes=["lowrank", "prune"], budget=8, progress=False,
                       metric="loss_recovered", quantise=False)
    assert result.history and result.faithfulness >= 0.9
    assert result.faithfulness == pytest.approx(
        ci.check(model, result.model, data, progress=False).end_to_end.loss_recovered, abs=1e-9)
