"""Head and subspace hypotheses: a head built to attend to the previous token, a planted subspace,
and the attention patterns they are checked against, computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import compinterp as ci
from compinterp.errors import BoxError

T, VOCAB, TOK = 6, 10, 8
D = TOK + T
RESID = ci.Space("resid", D)


def previous_token_model(seed: int = 0) -> ci.Model:
    """Tokens and one-hot positions side by side in the stream; head 0 of ``attn`` attends from
    position ``i`` to ``i - 1`` (its query at ``i`` is the key of ``i - 1``, scaled up), head 1 is random."""
    g = torch.Generator().manual_seed(seed)
    diagram = ci.chain((ci.Embed("embed", ci.Space("tokens", VOCAB), RESID)
                        @ ci.Embed("pos", ci.Space("positions", T), RESID)) >> ci.Add(RESID),
                       ci.residual(ci.Attention("attn", RESID, heads=2, head_dim=T)),
                       ci.Unembed("unembed", RESID, ci.Space("logits", VOCAB)))
    embed = torch.cat([torch.randn(VOCAB, TOK, generator=g), torch.zeros(VOCAB, T)], 1)
    pos = torch.cat([torch.zeros(T, TOK), torch.eye(T)], 1)
    shift = torch.zeros(T, T)
    shift[torch.arange(T - 1), torch.arange(1, T)] = 80.0
    wq = torch.cat([torch.cat([torch.zeros(T, TOK), shift], 1), torch.randn(T, D, generator=g)])
    wk = torch.cat([torch.cat([torch.zeros(T, TOK), torch.eye(T)], 1), torch.randn(T, D, generator=g)])
    params = {"embed": {"W": embed}, "pos": {"W": pos},
              "attn": {"Wq": wq, "Wk": wk, "Wv": torch.randn(2 * T, D, generator=g),
                       "Wo": torch.randn(D, 2 * T, generator=g)},
              "unembed": {"W": torch.randn(VOCAB, D, generator=g)}}
    return ci.Model(diagram, params)


def tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, T), generator=g), torch.arange(T).expand(n, T)


def test_attention_patterns_equal_a_hand_softmax() -> None:
    model = previous_token_model()
    xs = tokens(4, 0)
    patterns = ci.attention_patterns(model, *xs, box="attn")
    p = model.box_params("attn")
    x = model.run_with_cache(*xs, names=["add#1"])["add#1"]
    q = (x @ p["Wq"].T).view(4, T, 2, T).transpose(1, 2)
    k = (x @ p["Wk"].T).view(4, T, 2, T).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / T ** 0.5
    want = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    assert torch.allclose(patterns, want, atol=1e-6)
    previous = F.one_hot((torch.arange(T) - 1).clamp(min=0), T).float()
    assert torch.allclose(patterns[:, 0], previous.expand(4, T, T), atol=1e-6)


def test_a_previous_token_head_is_faithful_and_a_wrong_head_is_not(tmp_path) -> None:
    model = previous_token_model()
    data = tokens(256, 1)
    right = ci.check(model, ci.heads_follow(model, {"attn": {0: "previous"}}), data, progress=False)
    wrong = ci.check(model, ci.heads_follow(model, {"attn": {1: "previous"}}), data, progress=False)
    assert right.box("attn").metrics.faithfulness > 0.999
    assert right.end_to_end.faithfulness > 0.999 and right.end_to_end.top1 == 1.0
    assert wrong.box("attn").metrics.faithfulness < 0.9
    assert wrong.end_to_end.faithfulness < right.end_to_end.faithfulness - 0.1
    hypothesis = ci.heads_follow(model, {"attn": {0: "previous"}})
    fixed = ci.attention_patterns(hypothesis.explanation, *tokens(2, 2), box="attn_fixed")
    assert torch.equal(fixed[:, 0], F.one_hot((torch.arange(T) - 1).clamp(min=0), T).float().expand(2, T, T))
    picture = ci.drawing.heatmaps.draw_patterns(fixed[0], [f"t{i}" for i in range(T)], tmp_path / "heads.png")
    assert picture.stat().st_size > 1000


def test_a_matrix_pattern_equals_its_named_twin() -> None:
    model = previous_token_model()
    matrix = F.one_hot((torch.arange(T) - 1).clamp(min=0), T).tolist()
    named = ci.heads_follow(model, {"attn": {0: "previous"}}).explanation
    given = ci.heads_follow(model, {"attn": {0: matrix}}).explanation
    xs = tokens(8, 3)
    assert torch.allclose(named(*xs), given(*xs), atol=1e-6)
    assert ci.Model.__name__ and ci.load  # exported names stay importable
    with pytest.raises(BoxError, match="heads are 0 to 1"):
        ci.heads_follow(model, {"attn": {5: "previous"}})
    with pytest.raises(BoxError, match="must be one of previous, first, self, uniform"):
        ci.heads_follow(model, {"attn": {0: "next"}})
    with pytest.raises(BoxError, match="no attention box named 'unembed'"):
        ci.heads_follow(model, {"unembed": {0: "previous"}})


def test_only_through_a_planted_subspace() -> None:
    g = torch.Generator().manual_seed(0)
    x, h = ci.Space("x", 4), ci.Space("h", 6)
    basis = torch.linalg.qr(torch.randn(6, 6, generator=g))[0].T
    kept, dropped = basis[:2], basis[2:]
    enc = torch.randn(6, 4, generator=g)
    model = ci.Model(ci.Linear("enc", x, h) >> ci.Linear("dec", h, ci.Space("y", 3)),
                     {"enc": {"W": enc}, "dec": {"W": torch.randn(3, 2, generator=g) @ kept}})
    data = torch.randn(500, 4, generator=g)
    good = ci.check(model, ci.only_through(model, {"enc": kept}, data=data), data, progress=False)
    bad = ci.check(model, ci.only_through(model, {"enc": dropped[:2]}, data=data), data, progress=False)
    assert good.end_to_end.faithfulness > 1 - 1e-9
    assert bad.end_to_end.faithfulness < 0.5
    hand = (data @ enc.T) @ dropped[:2].T @ dropped[:2] + (data @ enc.T).mean(0) @ (torch.eye(6) - dropped[:2].T @ dropped[:2])
    interp = ci.only_through(model, {"enc": dropped[:2]}, data=data)
    assert torch.allclose(interp.explanation(data), hand @ model.box_params("dec")["W"].T, atol=1e-4)
    with pytest.raises(BoxError, match="not orthonormal"):
        ci.only_through(model, {"enc": 2 * kept})
