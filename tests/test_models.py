"""Model builders: each diagram computes what the same architecture written by hand in torch computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from compinterp.errors import BoxError
from compinterp.model import Model
from compinterp.models import bilinear_mlp, chi_net, embedding, transformer
from compinterp.semantics.tensor import tensor_semantics, why_not_polynomial
from compinterp.syntax import Space


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def params(model: Model, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.box_params(name).items()}


def bilinear(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``D ((L x + l) * (R x + r)) + d`` as an einsum over named axes."""
    left = torch.einsum("hi,ni->nh", p["L"], x) + p.get("l", 0)
    right = torch.einsum("hi,ni->nh", p["R"], x) + p.get("r", 0)
    return torch.einsum("oh,nh->no", p["D"], left * right) + p.get("d", 0)


@pytest.mark.parametrize("residual_stream", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_bilinear_mlp_matches_hand_written(residual_stream: bool, bias: bool) -> None:
    diagram = bilinear_mlp(Space("pixels", 12), Space("logits", 5), width=8, hidden=6,
                           residual_stream=residual_stream, bias=bias)
    model = Model(diagram, seed=3)
    x = torch.randn(9, 12, generator=seeded())
    h = x @ params(model, "embed")["W"].T
    y = bilinear(params(model, "mlp"), h) + (h if residual_stream else 0)
    expected = y @ params(model, "unembed")["W"].T
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert [w.name for w in diagram.cod.wires] == ["logits:5"]
    assert ("out:8" in {w.name for _, b in diagram.walk() for w in b.cod.wires}) is not residual_stream


def test_token_inputs_are_embedded_and_summed() -> None:
    diagram = bilinear_mlp(Space("a", 7) @ Space("b", 7), Space("logits", 7), width=8, hidden=4, tokens=True)
    model = Model(diagram, seed=0)
    a, b = torch.randint(0, 7, (20,), generator=seeded(0)), torch.randint(0, 7, (20,), generator=seeded(1))
    h = params(model, "embed_a")["W"][a] + params(model, "embed_b")["W"][b]
    expected = bilinear(params(model, "mlp"), h) @ params(model, "unembed")["W"].T
    assert torch.allclose(model(a, b), expected, atol=1e-5)


def test_chi_net_is_a_deep_polynomial() -> None:
    depth = 3
    model = Model(chi_net(Space("x", 5), Space("y", 3), width=6, hidden=4, depth=depth), seed=1)
    x = torch.randn(7, 5, generator=seeded())
    h = x @ params(model, "embed")["W"].T
    for k in range(depth):
        h = h + bilinear(params(model, f"layer{k}"), h)
    assert torch.allclose(model(x), h @ params(model, "unembed")["W"].T, atol=1e-5)
    assert why_not_polynomial(model) is None
    assert tensor_semantics(model).degree == 2 ** depth
    # along a line t -> f(t x) the network is a polynomial of degree 2 ** depth exactly: its finite
    # differences of that order are constant and the next order vanishes
    n = 2 ** depth
    ts = torch.arange(n + 2.0, dtype=torch.float64)
    line = torch.stack([model.double()(t * 4 * x[:1].double())[0] for t in ts])
    top, next_ = torch.diff(line, n=n, dim=0), torch.diff(line, n=n + 1, dim=0)
    assert torch.allclose(top[0], top[1]) and top.abs().max() > 1e-6 * line.abs().max()
    assert next_.abs().max() < 1e-9 * line.abs().max()


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def test_transformer_matches_hand_written() -> None:
    vocab, seq, width, heads = 11, 4, 8, 2
    model = Model(transformer(vocab, seq, Space("logits", 5), width=width, heads=heads, layers=2, hidden=12), seed=2)
    tokens = torch.randint(0, vocab, (3, seq), generator=seeded())
    positions = torch.arange(seq).expand(3, seq)
    h = params(model, "embed")["W"][tokens] + params(model, "pos")["W"][positions]
    mask = torch.ones(seq, seq).tril().bool()
    for k in range(2):
        p = params(model, f"attn{k}")
        x = rms(h, params(model, f"ln_attn{k}")["weight"])
        q, key, v = (torch.einsum("ed,nsd->nse", p[w], x).unflatten(-1, (heads, -1)) for w in ("Wq", "Wk", "Wv"))
        scores = torch.einsum("nshe,nthe->nhst", q, key) / (width // heads) ** 0.5
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        z = torch.einsum("nhst,nthe->nshe", weights, v).flatten(-2)
        h = h + z @ p["Wo"].T
        x = rms(h, params(model, f"ln_mlp{k}")["weight"])
        h = h + bilinear(params(model, f"mlp{k}"), x.reshape(-1, width)).reshape(h.shape)
    expected = rms(h, params(model, "ln_final")["weight"]) @ params(model, "unembed")["W"].T
    out = model(tokens, positions)
    assert out.shape == (3, seq, 5)
    assert torch.allclose(out, expected, atol=1e-4)
    # causal: the first position's output does not depend on later tokens
    changed = tokens.clone()
    changed[:, 1:] = (changed[:, 1:] + 1) % vocab
    assert torch.allclose(model(changed, positions)[:, 0], out[:, 0], atol=1e-5)
    assert not torch.allclose(model(changed, positions)[:, -1], out[:, -1], atol=1e-3)


def test_the_transformer_trains_like_a_module() -> None:
    model = Model(transformer(5, 3, Space("logits", 5), width=8, heads=2, layers=1, hidden=8), seed=0)
    tokens = torch.randint(0, 5, (16, 3), generator=seeded())
    loss = F.cross_entropy(model(tokens, torch.arange(3).expand(16, 3))[:, -1], tokens[:, 0])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_builder_errors_name_the_problem() -> None:
    x = Space("x", 4)
    with pytest.raises(BoxError, match="chi_net depth must be a positive integer, got 0"):
        chi_net(x, x, width=4, hidden=4, depth=0)
    with pytest.raises(BoxError, match="transformer layers must be a positive integer, got 0"):
        transformer(5, 3, x, width=8, heads=2, layers=0, hidden=8)
    with pytest.raises(BoxError, match=r"input wires x:4 @ x:4 need distinct labels"):
        embedding(x @ x, Space("resid", 4))
    with pytest.raises(BoxError, match="is not divisible into 3 heads"):
        transformer(5, 3, x, width=8, heads=3, layers=1, hidden=8)
