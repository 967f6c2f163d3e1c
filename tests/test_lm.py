"""The induction explanation on a transformer whose induction circuit is set by hand, exactly."""

from __future__ import annotations

import math

import pytest
import torch

import compinterp as ci
from compinterp import lm
from compinterp.models import transformer
from compinterp.tasks import text

V, L, HEADS = 32, 16, 2
T = 2 * L
D = 3 * V + T            # residual layout: token | position | previous token | copied token
TOK, POS, PREV, COPY = 0, V, V + T, 2 * V + T
HEAD_DIM = D // HEADS


def planted() -> ci.Model:
    """Layer 0 head 0 attends to the previous position and writes its token into PREV; layer 1
    head 0 matches the current token against PREV (key 0 pushed away) and copies the key's token
    into COPY, which the unembed reads. Every other head and both MLPs are zero."""
    diagram = transformer(V, T, ci.Space("logits", V), width=D, heads=HEADS, layers=2, hidden=4)
    zeros = {name: {role: torch.zeros(shape) for role, shape in box.param_shapes().items()}
             for name, box in ci.Model(diagram).boxes.items() if box.param_shapes()}
    params = zeros | {f"ln_{k}": {"weight": torch.ones(D)} for k in ("attn0", "mlp0", "attn1", "mlp1", "final")}
    params["embed"]["W"][:, TOK:TOK + V] = torch.eye(V)
    params["pos"]["W"][:, POS:POS + T] = torch.eye(T)
    f0, f1 = math.sqrt(D / 2), math.sqrt(D / 3)          # the RMS norms' gains before each attention
    a0, a1 = 2.0, 2.5
    attn0 = params["attn0"]
    for e in range(T - 1):
        attn0["Wq"][e, POS + e + 1] = a0                  # query i -> one-hot at i - 1
    for e in range(T):
        attn0["Wk"][e, POS + e] = a0                      # key j -> one-hot at j
    for e in range(V):
        attn0["Wv"][e, TOK + e] = 1 / f0
        attn0["Wo"][PREV + e, e] = 1.0
    attn1 = params["attn1"]
    for e in range(V):
        attn1["Wq"][e, TOK + e] = a1                      # the current token ...
        attn1["Wk"][e, PREV + e] = a1                     # ... against each key's previous token
        attn1["Wv"][e, TOK + e] = 1 / f1
        attn1["Wo"][COPY + e, e] = 1.0
    attn1["Wq"][V, POS:POS + T] = a1                      # a constant query ...
    attn1["Wk"][V, POS] = -3 * a1                         # ... that pushes key 0 away
    params["unembed"]["W"][:, COPY:COPY + V] = 2 * torch.eye(V)
    return ci.Model(diagram, params)


@pytest.fixture(scope="module")
def model(one_thread: None) -> ci.Model:
    return planted()


def test_planted_heads_are_found_and_copy(model: ci.Model) -> None:
    data = text.repeated(16, L, seed=0, alphabet=range(V))
    scores = lm.head_scores(model, data, L)
    assert lm.find_heads(scores) == (("attn0", 0), ("attn1", 0))
    assert scores["attn0"]["previous"][0] > 0.99 and scores["attn1"]["induction"][0] > 0.99
    bits = text.bits_per_byte(model, data)
    assert bits[L:T - 1].mean() < 0.1 < bits[1:L - 1].mean()


def test_induction_explanation_scores_near_one_and_control_fails(model: ci.Model) -> None:
    result = lm.explain_induction(model, n=32, length=L, seed=0, alone=True)
    assert result.previous == ("attn0", 0) and result.induction == ("attn1", 0)
    assert result.alone.end_to_end.faithfulness > 0.99
    # the planted model's other heads write nothing, so fixing their patterns alone changes nothing: the weaker
    # claim cannot tell heads that do nothing from the circuit, which is why the circuit's check ablates them
    assert result.alone_control.end_to_end.fvu < 1e-12
    assert result.to_json()["heads_alone"]["explanation"] == result.alone.to_json()
    assert result.control == (("attn0", 1), ("attn1", 1))
    assert result.report.end_to_end.faithfulness > 0.99
    assert result.report.box("attn1").metrics.faithfulness > 0.99
    assert result.control_report.end_to_end.faithfulness < 0.1
    assert result.bits["explanation"]["second"] < 0.1 < result.bits["control"]["second"]
    assert "faithfulness" in str(result) and result.to_json()["previous_head"] == ["attn0", 0]


def test_hypothesis_needs_data_to_ablate_and_names_boxes(model: ci.Model) -> None:
    with pytest.raises(ci.BoxError, match="attn0.*needs data"):
        lm.induction_hypothesis(model, ("attn0", 0), ("attn1", 0), L)
    with pytest.raises(ci.BoxError, match="'attn9'"):
        lm.induction_hypothesis(model, ("attn9", 0), ("attn1", 0), L, ablate_others=False)


def test_induction_pattern_rows_sum_to_one() -> None:
    pattern = torch.tensor(lm.induction_pattern(5))
    assert torch.allclose(pattern.sum(1), torch.ones(10)) and pattern[7, 3] == 1.0
