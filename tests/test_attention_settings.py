"""The head structure of Attention boxes (kv heads, rotary, scale, window, per-projection biases),
learned positions, and tied parameters: against a by-hand reference, through files, with their errors."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from support import assert_error

import compinterp as ci
from compinterp.errors import BoxError, InputError, ParameterError
from compinterp.frontend.hf import recognised_fraction
from compinterp.semantics.kernels import HEADS, RULES
from compinterp.syntax import (
    KEEP,
    Attention,
    Embed,
    Linear,
    Norm,
    Opaque,
    PosEmbed,
    Space,
    Unembed,
    box_from_json,
    box_to_json,
    chain,
)

R = Space("resid", 12)


def by_hand(box: Attention, p: dict[str, torch.Tensor], x: torch.Tensor, *keep: torch.Tensor) -> torch.Tensor:
    """Attention written out: per-head loops over explicit rotations, shared kv heads and masks."""
    data = box.data
    heads, dh = data["heads"], data["head_dim"]
    kv, rot, base = data.get("kv_heads", heads), data.get("rotary_dim", 0), data.get("rotary_base", 10000.0)
    scale, window, T = data.get("scale", 1 / math.sqrt(dh)), data.get("window", T_MAX), x.shape[-2]

    def project(w: str, b: str, n: int) -> torch.Tensor:
        y = torch.einsum("b t d, o d -> b t o", x, p[w]) + (p[b] if b in p else 0)
        return y.reshape(x.shape[0], T, n, dh)

    def turn(y: torch.Tensor) -> torch.Tensor:
        out = y.clone()
        for t in range(T):
            for i in range(rot // 2):
                angle = t * base ** (-2 * i / rot)
                first, second = (2 * i, 2 * i + 1) if data.get("rotary_interleaved") else (i, i + rot // 2)
                a, b = y[:, t, :, first], y[:, t, :, second]
                out[:, t, :, first] = a * math.cos(angle) - b * math.sin(angle)
                out[:, t, :, second] = b * math.cos(angle) + a * math.sin(angle)
        return out

    def normed(y: torch.Tensor, role: str) -> torch.Tensor:
        if "qk_norm" not in data:
            return y
        return y / (y.square().mean(-1, keepdim=True) + data["qk_norm"]).sqrt() * p[role]

    q, k = turn(normed(project("Wq", "bq", heads), "q_norm")), turn(normed(project("Wk", "bk", kv), "k_norm"))
    v = project("Wv", "bv", kv)
    group = heads // kv
    z = torch.zeros(x.shape[0], T, heads, dh, dtype=x.dtype)
    for h in range(heads):
        logits = torch.einsum("b t e, b s e -> b t s", q[:, :, h], k[:, :, h // group]) * scale
        for t in range(T):
            for s in range(T):
                if data["causal"] and not 0 <= t - s < window:
                    logits[:, t, s] = -math.inf
                for row in range(x.shape[0]):
                    if keep and keep[0][row, s, 0] == 0:
                        logits[row, t, s] = -math.inf
        if keep:
            alone = logits.isinf().all(-1)       # a query that sees no token sees itself
            for row, t in alone.nonzero().tolist():
                logits[row, t, t] = (q[row, t, h] @ k[row, t, h // group]) * scale
        z[:, :, h] = torch.einsum("b t s, b s e -> b t e", logits.softmax(-1), v[:, :, h // group])
    return torch.einsum("b t i, d i -> b t d", z.flatten(-2), p["Wo"]) + (p["bo"] if "bo" in p else 0)


T_MAX = 10**9

BOXES = [
    Attention("plain", R, heads=3),
    Attention("gqa", R, heads=4, kv_heads=2),
    Attention("mqa", R, heads=6, kv_heads=1, bias="qkv", causal=False),
    Attention("rope", R, heads=2, rotary_dim=6, rotary_base=100.0),
    Attention("adjacent", R, heads=2, kv_heads=1, rotary_dim=4, rotary_interleaved=True, bias="qk"),
    Attention("qk_norm", R, heads=4, kv_heads=2, rotary_dim=2, qk_norm=1e-6),
    Attention("partial", R, heads=2, kv_heads=1, rotary_dim=2, scale=0.05, bias="o"),
    Attention("window", R, heads=4, head_dim=5, kv_heads=2, rotary_dim=4, window=3, bias=True),
    Attention("padded", R, heads=3, causal=False, bias=True, padded=True),
    Attention("padded_causal", R, heads=4, kv_heads=2, rotary_dim=2, padded=True),
    Attention("padded_window", R, heads=2, window=2, padded=True),
]


@pytest.mark.parametrize("box", BOXES, ids=lambda box: box.name)
def test_attention_kernel_and_its_head_halves_match_by_hand(box: Attention) -> None:
    g = torch.Generator().manual_seed(0)
    p = {role: torch.randn(shape, generator=g, dtype=torch.float64) for role, shape in box.param_shapes().items()}
    x = torch.randn(2, 7, 12, generator=g, dtype=torch.float64)
    keep = (torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 1, 1, 1]], dtype=torch.float64)[..., None],) \
        if box.data.get("padded") else ()
    (y,) = RULES["Attention"](box)(p, x, *keep)
    torch.testing.assert_close(y, by_hand(box, p, x, *keep))
    assert box_from_json(json.loads(json.dumps(box_to_json(box)))) == box
    heads, out = HEADS["Attention"](box)
    z = heads(p, x, *keep)
    assert z.shape == (2, 7, box.data["heads"], box.data["head_dim"])
    torch.testing.assert_close(out(p, z), y)


def test_attention_settings_are_data_with_defaults_left_out() -> None:
    assert Attention("a", R, heads=3, kv_heads=3, rotary_dim=0, bias="").data == {
        "heads": 3, "head_dim": 4, "causal": True, "bias": False}
    assert Attention("a", R, heads=3, bias="vkqo").data["bias"] is True
    assert Attention("a", R, heads=4, kv_heads=2, bias="vq").param_shapes() == {
        "Wq": (12, 12), "Wk": (6, 12), "Wv": (6, 12), "Wo": (12, 12), "bq": (12,), "bv": (6,)}
    old = {"kind": "Attention", "name": "a", "dom": R.to_json(), "cod": R.to_json(),
           "data": {"heads": 3, "head_dim": 4, "causal": False, "bias": True}}
    assert box_from_json(old) == Attention("a", R, heads=3, causal=False, bias=True)
    assert Attention("a", R, heads=3, padded=True).dom == R @ KEEP


@pytest.mark.parametrize("make, fragments", [
    (lambda: Attention("a", R, heads=4, kv_heads=3), ("Attention box 'a'", "kv_heads", "4")),
    (lambda: Attention("a", R, heads=2, kv_heads=4), ("Attention box 'a'", "kv_heads")),
    (lambda: Attention("a", R, heads=2, rotary_dim=3), ("Attention box 'a'", "rotary_dim", "even", "3")),
    (lambda: Attention("a", R, heads=2, rotary_dim=8), ("Attention box 'a'", "rotary_dim", "6")),
    (lambda: Attention("a", R, heads=2, rotary_dim=2, rotary_base=0), ("Attention box 'a'", "rotary_base")),
    (lambda: Attention("a", R, heads=2, scale=-1.0), ("Attention box 'a'", "scale", "-1.0")),
    (lambda: Attention("a", R, heads=2, window=4, causal=False), ("Attention box 'a'", "window", "causal")),
    (lambda: Attention("a", R, heads=2, bias="qx"), ("Attention box 'a'", "bias", "'qx'")),
    (lambda: PosEmbed("p", R, positions=0), ("PosEmbed box 'p'", "positions", "0")),
])
def test_bad_settings_name_the_box(make, fragments) -> None:
    assert_error(BoxError, make, *fragments)


def test_learned_positions() -> None:
    tokens = Space("tokens", 5)
    model = ci.Model(Embed("embed", tokens, R) >> PosEmbed("pos", R, positions=4), seed=0)
    ids = torch.tensor([[1, 2, 3], [0, 0, 4]])
    p = model.box_params("pos")["W"]
    torch.testing.assert_close(model(ids), model.box_params("embed")["W"][ids] + p[:3])
    assert_error(InputError, lambda: model(torch.zeros(2, 5, dtype=torch.long)), "'pos'", "5", "4 positions")


def tied_model(**kwargs: object) -> ci.Model:
    tokens = Space("tokens", 10)
    diagram = chain(Embed("embed", tokens, R), Linear("mid", R, R), Unembed("unembed", R, tokens, bias=True))
    return ci.Model(diagram, **kwargs)


def test_tied_parameters_are_one_tensor_counted_saved_and_trained_once(tmp_path: Path) -> None:
    model = tied_model(ties={"unembed.W": "embed.W"}, seed=1)
    W = model.box_params("embed")["W"]
    assert model.box_params("unembed")["W"] is W
    copied = copy.deepcopy(model)
    assert copied.ties == model.ties and copied.box_params("unembed")["W"] is copied.box_params("embed")["W"]
    assert model.num_params() == 10 * 12 + 12 * 12 + 10
    model.save(tmp_path / "m")
    back = ci.load(tmp_path / "m")
    assert back.ties == {"unembed.W": "embed.W"} and back.box_params("unembed")["W"] is back.box_params("embed")["W"]
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(back(ids), model(ids))
    assert ci.files.info(tmp_path / "m")["num_params"] == model.num_params()
    optimizer = torch.optim.SGD(back.parameters(), lr=0.1)
    back(ids).square().sum().backward()
    optimizer.step()
    assert back.box_params("unembed")["W"] is back.box_params("embed")["W"]
    given = {"embed": {"W": torch.ones(10, 12)}, "unembed": {"b": torch.zeros(10)}}
    assert torch.equal(tied_model(params=given, ties={"unembed.W": "embed.W"}).box_params("unembed")["W"],
                       torch.ones(10, 12))


@pytest.mark.parametrize("ties, fragments", [
    ({"unembed.W": "embed.X"}, ("tie", "'embed.X'", "box.role")),
    ({"nothing.W": "embed.W"}, ("tie", "'nothing.W'")),
    ({"unembed.W": "mid.W"}, ("'unembed.W'", "'mid.W'", "(10, 12)", "(12, 12)")),
    ({"unembed.W": "embed.W", "embed.W": "unembed.W"}, ("tie", "not tied itself")),
])
def test_bad_ties_name_the_parameter(ties: dict[str, str], fragments: tuple[str, ...]) -> None:
    assert_error(ParameterError, lambda: tied_model(ties=ties), *fragments)


def test_recognised_fraction_counts_opaque_boxes_and_ties_once() -> None:
    tokens = Space("tokens", 10)
    diagram = chain(Embed("embed", tokens, R), Opaque("blob", R, R, module=torch.nn.Linear(12, 12)),
                    Unembed("unembed", R, tokens))
    model = ci.Model(diagram, ties={"unembed.W": "embed.W"})
    assert recognised_fraction(model) == pytest.approx(120 / (120 + 156))


def test_scaled_embeddings_and_offset_norm_scales() -> None:
    tokens, ids = Space("tokens", 5), torch.tensor([[0, 3, 4]])
    diagram = chain(Embed("embed", tokens, R, scale=3.0), Norm("ln", R, norm="rms", eps=1e-6, offset=1.0))
    model = ci.Model(diagram, seed=0)
    assert torch.equal(model.box_params("ln")["weight"], torch.zeros(12))          # 1 + 0: the identity scale
    x = 3.0 * model.box_params("embed")["W"][ids]
    torch.testing.assert_close(model(ids), x / (x.square().mean(-1, keepdim=True) + 1e-6).sqrt())
    for box in diagram.boxes:
        assert box_from_json(json.loads(json.dumps(box_to_json(box)))) == box
    assert Norm("ln", R).data == {"norm": "rms", "eps": 1e-5, "affine": True, "bias": False}
    assert_error(BoxError, lambda: Norm("ln", R, affine=False, offset=1.0), "Norm box 'ln'", "offset")
    assert_error(BoxError, lambda: Embed("e", tokens, R, scale=0), "Embed box 'e'", "scale")


def test_a_scaled_embedding_survives_rewrites_and_tensor_semantics() -> None:
    tokens = Space("tokens", 6)
    model = ci.Model(chain(Embed("embed", tokens, R, scale=3.0), Linear("mid", R, R, bias=True),
                           Unembed("unembed", R, tokens)), seed=0)
    ids = torch.tensor([[1, 2, 5]])
    with torch.no_grad():
        expected = model(ids)
        for rewritten in (ci.lowrank(model, "embed", 6), ci.fuse(model)):
            torch.testing.assert_close(rewritten(ids), expected)
        one_hot = torch.nn.functional.one_hot(ids, 6).double()
        torch.testing.assert_close(ci.tensor_semantics(model)(one_hot), expected.double(), atol=1e-5, rtol=1e-5)
