"""Interventions against independent computations: a transformer written by hand with plain torch,
whose hook points can read or replace any value, compared with the cache, hooks, sites and sweeps."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import compinterp as ci
from compinterp.errors import InputError
from compinterp.models import transformer

F64 = torch.float64
VOCAB, T, WIDTH, HEADS, LAYERS = 11, 6, 16, 4, 2
Hook = Callable[[torch.Tensor], torch.Tensor]

# Our names for the hand-written forward's points (the builder's step labels).
RESID = {"pre0": "add#1", "mid0": "add#2", "post0": "add#3", "mid1": "add#4", "post1": "add#5"}


@pytest.fixture(scope="module")
def model() -> ci.Model:
    diagram = transformer(VOCAB, T, ci.Space("logits", VOCAB), width=WIDTH, heads=HEADS, layers=LAYERS, hidden=24)
    return ci.Model(diagram, seed=3, dtype=torch.float64)


def batch(seed: int, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n, T), generator=g), torch.arange(T).expand(n, T)


def by_hand(model: ci.Model, tokens: torch.Tensor, positions: torch.Tensor,
            at: dict[str, Hook] | None = None) -> torch.Tensor:
    """The transformer as plain torch; ``at`` maps a point (``pre0``, ``z1``, ``mid1`` ...) to a function."""
    at = at or {}
    w = {name: model.box_params(name) for name in model.params}

    def point(name: str, x: torch.Tensor) -> torch.Tensor:
        return at[name](x) if name in at else x

    x = point("pre0", F.embedding(tokens, w["embed"]["W"]) + F.embedding(positions, w["pos"]["W"]))
    for i in range(LAYERS):
        a, h = w[f"attn{i}"], F.rms_norm(x, (WIDTH,), w[f"ln_attn{i}"]["weight"], 1e-5)
        q, k, v = (F.linear(h, a[m]).view(*h.shape[:2], HEADS, -1).transpose(1, 2) for m in ("Wq", "Wk", "Wv"))
        z = point(f"z{i}", F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2))
        x = point(f"mid{i}", x + F.linear(z.flatten(-2), a["Wo"]))
        h, m = F.rms_norm(x, (WIDTH,), w[f"ln_mlp{i}"]["weight"], 1e-5), w[f"mlp{i}"]
        x = point(f"post{i}", x + F.linear(F.linear(h, m["L"]) * F.linear(h, m["R"]), m["D"]))
    return F.linear(F.rms_norm(x, (WIDTH,), w["ln_final"]["weight"], 1e-5), w["unembed"]["W"])


def recorded(model: ci.Model, xs: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every hook point's value in the hand-written forward."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Hook:
        def f(x: torch.Tensor) -> torch.Tensor:
            seen[name] = x
            return x
        return f

    points = [*RESID, *(f"z{i}" for i in range(LAYERS))]
    with torch.no_grad():
        by_hand(model, *xs, at={p: keep(p) for p in points})
    return seen


def metric(logits: torch.Tensor) -> torch.Tensor:
    """The mean logit difference of tokens 1 and 2 at the last position."""
    return (logits[:, -1, 1] - logits[:, -1, 2]).mean()


def test_the_hand_written_forward_is_the_model(model: ci.Model) -> None:
    xs = batch(0)
    with torch.no_grad():
        assert torch.allclose(by_hand(model, *xs), model(*xs), atol=1e-10)


def test_cache_equals_the_hand_written_intermediates(model: ci.Model) -> None:
    xs = batch(0)
    cache = model.run_with_cache(*xs)
    want = recorded(model, xs)
    for point, name in RESID.items():
        assert torch.allclose(cache[name], want[point], atol=1e-10), point
    for i in range(LAYERS):
        assert torch.allclose(cache[f"attn{i}.heads"], want[f"z{i}"], atol=1e-10)
    assert torch.allclose(cache["logits"], model(*xs), atol=1e-12)
    assert cache["resid_2"] is cache["add#1"] and not cache["add#1"].requires_grad


def test_cache_by_names_with_gradients(model: ci.Model) -> None:
    xs = batch(1)
    cache = model.run_with_cache(*xs, names=["add#3", "attn1.heads"], grad=True)
    assert sorted(cache) == ["add#3", "attn1.heads"] and cache["add#3"].requires_grad
    with pytest.raises(InputError, match="no wire or box named 'resid_99'"):
        model.run_with_cache(*xs, names=["resid_99"])


def test_cache_streams_batches(model: ci.Model) -> None:
    tokens, positions = batch(2, n=10)
    caches = list(ci.interventions.cache_batches(model, (tokens, positions), names=["add#2"], batch_size=4))
    assert [c["add#2"].shape[0] for c in caches] == [4, 4, 2]
    whole = ci.interventions.stacked(caches)["add#2"]
    assert torch.allclose(whole, model.run_with_cache(tokens, positions)["add#2"], atol=1e-12)


def test_hooks_read_replace_add_and_pass_gradients(model: ci.Model) -> None:
    xs = batch(3)
    seen = []
    with model.hooks({"add#2": seen.append}):
        out = model(*xs)
    assert len(seen) == 1 and torch.allclose(out, model(*xs))
    steer = torch.zeros(WIDTH, dtype=F64, requires_grad=True)
    with model.hooks({"add#2": lambda x: x + steer}):
        metric(model(*xs)).backward()
    with torch.no_grad():
        want = by_hand(model, *xs, at={"mid0": lambda x: x * 0.5})
    with model.hooks({"add#2": lambda x: x * 0.5}):
        assert torch.allclose(model(*xs), want, atol=1e-10)
    assert steer.grad is not None and steer.grad.abs().sum() > 0
    assert model._hooks is None


def test_position_interchange_equals_a_hand_patch(model: ci.Model) -> None:
    base, source = batch(4), batch(5)
    clean = recorded(model, source)["mid1"]

    def patch(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 3] = clean[:, 3]
        return x

    want = by_hand(model, *base, at={"mid1": patch})
    got = ci.intervene(model, base, [ci.patch(ci.Site("add#4", positions=3), *source)])
    assert torch.allclose(got, want, atol=1e-10)


def test_head_interchange_equals_a_hand_patch(model: ci.Model) -> None:
    base, source = batch(6), batch(7)
    clean = recorded(model, source)["z1"]

    def patch(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[:, 1:4, 2] = clean[:, 1:4, 2]
        return z

    want = by_hand(model, *base, at={"z1": patch})
    site = ci.Site("attn1", heads=[2], positions=slice(1, 4))
    assert torch.allclose(ci.intervene(model, base, [ci.patch(site, *source)]), want, atol=1e-10)


def test_subspace_interchange_equals_a_hand_projection(model: ci.Model) -> None:
    base, source = batch(8), batch(9)
    Q = torch.linalg.qr(torch.randn(WIDTH, 3, generator=torch.Generator().manual_seed(0), dtype=F64))[0].T
    clean = recorded(model, source)["mid0"]
    want = by_hand(model, *base, at={"mid0": lambda x: x + (clean - x) @ Q.T @ Q})
    got = ci.intervene(model, base, [ci.patch(ci.Site("add#2", subspace=Q), *source)])
    assert torch.allclose(got, want, atol=1e-10)
    projected = ci.intervene(model, base, [ci.patch(ci.Site("add#2", subspace=Q.T @ Q), *source)])
    assert torch.allclose(projected, want, atol=1e-10)


def test_neuron_interchange_equals_a_hand_patch_batched_or_not(model: ci.Model) -> None:
    base, source = batch(12, n=7), batch(13, n=7)
    clean = recorded(model, source)["mid0"]

    def patch(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[..., [3, 9]] = clean[..., [3, 9]]
        return x

    want = by_hand(model, *base, at={"mid0": patch})
    e = torch.eye(WIDTH, dtype=F64)
    for subspace in (e[[3, 9]], -e[[9, 3]]):  # a basis of coordinate axes, in any order and sign
        interventions = [ci.patch(ci.Site("add#2", subspace=subspace), *source)]
        assert torch.allclose(ci.intervene(model, base, interventions), want, atol=1e-12)
        assert torch.allclose(ci.intervene(model, base, interventions, batch_size=3), want, atol=1e-12)


def test_neuron_patches_written_in_place_touch_no_other_tensor() -> None:
    """A neuron patch writes into the run's own fresh value (a linear map's, a ReLU's) when no gradient flows, and
    never into an input, a source, a value an identity box shares with its input, or a value that needs a gradient."""
    x, h = ci.Space("x", 4), ci.Space("h", 4)
    diagram = ci.chain(ci.Elementwise("identity", x, name="same"), ci.Linear("f", x, h, bias=True),
                       ci.Elementwise("relu", h, name="act"), ci.Linear("g", h, h))
    model = ci.Model(diagram, seed=0, dtype=F64)
    W, b, G = (model.box_params(n)[k].detach() for n, k in (("f", "W"), ("f", "b"), ("g", "W")))
    g = torch.Generator().manual_seed(0)
    base, source = torch.randn(6, 4, generator=g, dtype=F64), torch.randn(6, 4, generator=g, dtype=F64)
    kept = base.clone(), source.clone()
    neuron = torch.eye(4, dtype=F64)[[1]]
    for wire, before in (("x", lambda v: v), ("same", lambda v: v), ("f", lambda v: F.linear(v, W, b)),
                         ("act", lambda v: F.linear(v, W, b).relu())):
        want_h = before(base).clone()
        want_h[:, 1] = before(source)[:, 1]
        rest = {"x": lambda v: F.linear(F.linear(v, W, b).relu(), G), "same": lambda v: F.linear(F.linear(v, W, b).relu(), G),
                "f": lambda v: F.linear(v.relu(), G), "act": lambda v: F.linear(v, G)}[wire]
        got = ci.intervene(model, base, [ci.patch(ci.Site(wire, subspace=neuron), source)], batch_size=4)
        assert torch.allclose(got, rest(want_h), atol=1e-12)
        assert torch.equal(base, kept[0]) and torch.equal(source, kept[1])
    leaf = base.clone().requires_grad_()
    out = ci.intervene(model, leaf, [ci.patch(ci.Site("act", subspace=neuron), source)])
    (grad,) = torch.autograd.grad(out.sum(), leaf)
    mask = torch.ones(4, dtype=F64)
    mask[1] = 0                                         # the patched neuron's gradient is cut, the others flow
    hand_leaf = base.clone().requires_grad_()
    hidden = F.linear(hand_leaf, W, b).relu() * mask + F.linear(source, W, b).relu() * (1 - mask)
    (want,) = torch.autograd.grad(F.linear(hidden, G).sum(), hand_leaf)
    assert torch.allclose(grad, want, atol=1e-12)


def test_several_interventions_at_once_batched_or_not(model: ci.Model) -> None:
    """A whole register and a head from one source, and a position zeroed, in one intervention run."""
    base, source = batch(16, n=5), batch(17, n=5)
    clean = recorded(model, source)

    def heads(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        z[:, :, 1] = clean["z1"][:, :, 1]
        return z

    def zeroed(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[:, 2] = 0
        return x

    want = by_hand(model, *base, at={"mid0": lambda x: clean["mid0"], "z1": heads, "mid1": zeroed})
    interventions = [ci.patch(ci.Site("add#2"), *source), ci.patch(ci.Site("attn1", heads=[1]), *source),
                     ci.zero(ci.Site("add#4", positions=2))]
    for size in (None, 2, 5):
        assert torch.allclose(ci.intervene(model, base, interventions, batch_size=size), want, atol=1e-10)


def test_compiled_runs_equal_the_interpreter_loop(model: ci.Model) -> None:
    """Every kind of run the interventions make (edits, kept values and heads, registers set
    beforehand, early stops), generated code against the interpreter's loop, to the last bit."""
    plan, params = model.plan, model.plan_params()
    xs = batch(14)
    attn, resid = plan.names["attn1"], plan.names["add#2"]
    kept = ci.interventions.run_edited(plan, params, batch(15), keep={resid}, keep_heads={attn})
    runs = [dict(edits={resid: [torch.neg, torch.sin]}, head_edits={attn: [lambda z: z * 2]}, keep={resid, 0},
                 keep_heads={attn}),
            dict(initial={resid: kept[1][resid]}, keep={plan.names["add#4"]}),
            dict(keep={resid}, keep_heads={attn}, until=plan.writer[attn] + 1)]
    for run in runs:
        until, initial = run.pop("until", None), run.pop("initial", None)
        editors = [ci.interventions.Edited(plan, params, **run) for _ in range(2)]
        editors[1].compiled = False
        outs = [editor.run(*xs, initial=initial, until=until) for editor in editors]
        for a, b in zip(*outs):
            assert (a is None and b is None) or torch.equal(a, b)
        for got, want in [(editors[0].values, editors[1].values), (editors[0].heads, editors[1].heads)]:
            assert got.keys() == want.keys() and all(torch.equal(got[r], want[r]) for r in got)


def test_ablations_and_steering(model: ci.Model) -> None:
    xs = batch(10)
    zero = by_hand(model, *xs, at={"z0": lambda z: torch.cat([z[:, :, :1] * 0, z[:, :, 1:]], dim=2)})
    assert torch.allclose(ci.intervene(model, xs, [ci.zero(ci.Site("attn0", heads=0))]), zero, atol=1e-10)
    data = batch(11, n=20)
    mean = recorded(model, data)["post0"].mean(0)
    want = by_hand(model, *xs, at={"post0": lambda x: mean.expand_as(x)})
    got = ci.intervene(model, xs, [ci.mean(ci.Site("add#3"), model, data)])
    assert torch.allclose(got, want, atol=1e-10)
    vector = torch.randn(WIDTH, generator=torch.Generator().manual_seed(1), dtype=F64)
    want = by_hand(model, *xs, at={"mid1": lambda x: torch.cat([x[:, :-1], x[:, -1:] + 2 * vector], dim=1)})
    got = ci.intervene(model, xs, [ci.steer(ci.Site("add#4", positions=-1), vector, scale=2.0)])
    assert torch.allclose(got, want, atol=1e-10)
    resampled = ci.intervene(model, xs, [ci.resample(ci.Site("add#3"), seed=4)])
    post = recorded(model, xs)["post0"]
    others = [by_hand(model, *xs, at={"post0": lambda x, s=s: post.roll(s, dims=0)}) for s in range(1, len(post))]
    assert any(torch.allclose(resampled, o, atol=1e-10) for o in others)


def test_patching_grid_equals_a_loop_of_single_hand_patches(model: ci.Model) -> None:
    clean, corrupted = batch(12), batch(13)
    points = ["pre0", "mid0", "post1"]
    sweep = ci.patching(model, clean, corrupted, ci.grid(model, [RESID[p] for p in points], T), metric, group=5)
    values = recorded(model, clean)
    for i, point in enumerate(points):
        for t in range(T):
            def patch(x: torch.Tensor, t: int = t, point: str = point) -> torch.Tensor:
                x = x.clone()
                x[:, t] = values[point][:, t]
                return x
            with torch.no_grad():
                want = metric(by_hand(model, *corrupted, at={point: patch}))
            assert abs(float(sweep.values[i, t]) - float(want)) < 1e-9, (point, t)
    assert sweep.values.shape == (3, T) and sweep.rows == tuple(RESID[p] for p in points)
    with torch.no_grad():
        assert abs(sweep.clean - float(metric(model(*clean)))) < 1e-9
        assert abs(sweep.corrupted - float(metric(model(*corrupted)))) < 1e-9


def test_every_head_sweep_equals_a_loop_of_head_patches(model: ci.Model) -> None:
    clean, corrupted = batch(14), batch(15)
    sweep = ci.patching(model, clean, corrupted, ci.every_head(model), metric, group=3)
    values = recorded(model, clean)
    for layer in range(LAYERS):
        for h in range(HEADS):
            def patch(z: torch.Tensor, layer: int = layer, h: int = h) -> torch.Tensor:
                z = z.clone()
                z[:, :, h] = values[f"z{layer}"][:, :, h]
                return z
            with torch.no_grad():
                want = metric(by_hand(model, *corrupted, at={f"z{layer}": patch}))
            assert abs(float(sweep.values[layer, h]) - float(want)) < 1e-9


def test_attribution_patching_agrees_with_exact_patching(model: ci.Model, tmp_path) -> None:
    clean, corrupted = batch(16), batch(17)
    sites = ci.grid(model, ["add#1", "add#2", "add#3", "add#4"], T)
    estimate = ci.attribution_patching(model, clean, corrupted, sites, metric, check=24)
    exact = ci.patching(model, clean, corrupted, sites, metric)
    correlation = float(torch.corrcoef(torch.stack([estimate.values.flatten(), exact.values.flatten()]))[0, 1])
    assert correlation > 0.9
    assert estimate.agreement is not None and estimate.agreement > 0.9 and estimate.checked == 24
    assert abs(estimate.corrupted - exact.corrupted) < 1e-9
    assert exact.plot(tmp_path / "sweep.png").stat().st_size > 1000


def test_sites_refuse_what_does_not_fit(model: ci.Model) -> None:
    xs = batch(18)
    with pytest.raises(InputError, match="heads need an attention box's output"):
        ci.intervene(model, xs, [ci.zero(ci.Site("add#2", heads=1))])
    with pytest.raises(InputError, match="head 7 is out of range: there are 4 heads"):
        ci.intervene(model, xs, [ci.zero(ci.Site("attn0", heads=7))])
    with pytest.raises(InputError, match="position 9 is out of range"):
        ci.intervene(model, xs, [ci.zero(ci.Site("add#2", positions=9))])
    with pytest.raises(InputError, match="neither orthonormal rows nor an orthogonal projection"):
        ci.Site("add#2", subspace=2 * torch.eye(WIDTH, dtype=F64)[:2])
    with pytest.raises(InputError, match="subspace has dimension 3 but the wire is resid:16"):
        ci.intervene(model, xs, [ci.zero(ci.Site("add#2", subspace=torch.eye(3)))])
    flat = ci.Model(ci.Linear("f", ci.Space("x", 3), ci.Space("y", 2)))
    with pytest.raises(InputError, match="positions need a sequence axis"):
        ci.intervene(flat, torch.ones(4, 3), [ci.zero(ci.Site("f", positions=0))])
