"""Interventions and a patching sweep: compinterp against a hand-written torch loop, pyvene and TransformerLens.

Two workloads, every arm checked for equal results (max abs difference < 1e-4, printed) before
anything is timed, all under ``torch.no_grad()``:

1. **Interchange interventions on a small MLP** (3 -> 16 -> 16 -> 2, ReLU, biases): 10,000
   (base, source) pairs, the base run with hidden layer 1 (the first ReLU's output) taken from
   the source run, (a) the whole layer and (b) one neuron, in batches of 256 and as one batch
   of 10,000. Every arm does the same work: from the 10,000 base and source rows to one tensor of
   10,000 outputs (batches split and outputs joined inside the timed call). Arms:

   * compinterp: ``ci.intervene(model, base, [ci.patch(site, source)], batch_size=size)`` on a ``ci.Model``
     built from Linear / Elementwise boxes, ``site = ci.Site("relu1")`` or, for one neuron,
     ``ci.Site("relu1", subspace=e_i[None])``;
   * hand-written: ``F.linear`` / ``relu`` on the same weights, the source run to the hidden
     layer, the base run with it (or its one neuron) replaced;
   * pyvene (when ``pyvene`` imports): an ``IntervenableModel`` on the same weights in an
     ``nn.Sequential``, one ``VanillaIntervention`` on component ``"1.output"`` (the first
     ``ReLU`` module's output), the whole output or ``subspaces=[[[i]] * batch]`` for the neuron.
     pyvene reads ``model.config`` from the model it wraps, so the plain ``nn.Sequential`` gets
     ``config = None``; its ``unit="pos"`` path needs ``model.device`` and is not used.

2. **Activation-patching sweep** (TransformerLens's per-layer x per-position ``resid_pre``
   patching) on an attention-only transformer (2 layers, d_model 64, 4 heads of 16, n_ctx 32,
   vocabulary 100, RMS norms, learned positions, biases zero, RMS scales ``1 + 0.1 N(0, 1)`` so
   that copying them is checked), batch 16, sequence 24, metric the mean logit difference of
   tokens 1 and 2 at the last position. Every arm produces the 2 x 24 sweep and the clean and
   corrupted metrics (the clean run's cache included in the time):

   * TransformerLens (when ``HookedTransformer`` imports: TransformerLens 3.x; 4.0 removed it):
     ``run_with_cache`` of the clean tokens (``resid_pre`` hooks only), one corrupted forward,
     ``transformer_lens.patching.get_act_patch_resid_pre`` (its tqdm bar disabled);
   * compinterp: ``ci.patching(model, clean, corrupted, ci.grid(model, names, 24), metric)``
     on the same weights, ``names`` the registers feeding each layer's norm (``add#1``,
     ``add#2``, checked against TransformerLens's ``resid_pre``), its default ``group=32``;
     ``compinterp g=8``, informational (no target), the same call with ``group=8``;
   * hand-written: a plain torch forward with a hook point at each layer's input, run once on
     the clean tokens (recording), once on the corrupted ones, and once per (layer, position)
     replacing that position.

Timing: ``--warmup`` untimed calls of every arm, then ``--repeats`` rounds; each round times every
arm once, the order rotating from round to round. Printed per case: median milliseconds (and
quartiles), and the ratios to the fastest peer library and to the hand loop, each the median of
the per-round ratios. Targets (stated, not enforced): compinterp <= 1.0x the fastest peer and
<= 1.3x the hand loop.

    .venv/bin/python benchmarks/bench_interventions.py [--threads 1] [--repeats 15] [--warmup 2] [--device cpu]
        [--json OUT] [--only mlp|patching]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's patching loop draws a tqdm bar

import torch
from torch import nn
from torch.nn import functional as F

import compinterp as ci
from compinterp.syntax import Add, Attention, Elementwise, Embed, Linear, Norm, Space, Unembed, residual

TOLERANCE = 1e-4
TARGET_PEER, TARGET_HAND = 1.0, 1.3
PAIRS, NEURON = 10_000, 5
BATCH, SEQ, VOCAB, D, HEADS, LAYERS, N_CTX = 16, 24, 100, 64, 4, 2, 32
TOKEN_A, TOKEN_B = 1, 2
SMALL_GROUP = 8  # an informational arm: ci.patching with group=8 instead of its default 32


# --------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(arms: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device
            ) -> dict[str, list[float]]:
    """Seconds per call of each arm: ``warmup`` untimed calls, then ``repeats`` rounds with the
    order of the arms rotating from round to round."""
    names = list(arms)
    for _ in range(warmup):
        for name in names:
            arms[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync(device)
            start = time.perf_counter()
            arms[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: dict[str, list[float]], peers: list[str]) -> dict[str, Any]:
    """Medians, quartiles and paired ratios (median over rounds) of compinterp to the fastest
    peer and to the hand loop."""
    def quartiles(xs: list[float]) -> tuple[float, float, float]:
        q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
        return q[0] * 1e3, statistics.median(xs) * 1e3, q[2] * 1e3

    out: dict[str, Any] = {"arms": {}}
    for name, xs in times.items():
        q1, med, q3 = quartiles(xs)
        out["arms"][name] = {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "times_s": xs}
    present = [p for p in peers if p in times]
    fastest = min(present, key=lambda p: statistics.median(times[p])) if present else None
    out["fastest_peer"] = fastest
    for name, xs in times.items():
        arm = out["arms"][name]
        arm["vs_fastest_peer"] = (statistics.median(a / b for a, b in zip(xs, times[fastest]))
                                  if fastest else None)
        arm["vs_hand"] = statistics.median(a / b for a, b in zip(xs, times["hand-written"]))
    ours = out["arms"]["compinterp"]
    out["meets_peer_target"] = None if fastest is None else ours["vs_fastest_peer"] <= TARGET_PEER
    out["meets_hand_target"] = ours["vs_hand"] <= TARGET_HAND
    return out


def table(title: str, result: dict[str, Any]) -> None:
    fastest = result["fastest_peer"]
    print(f"\n{title}")
    print(f"  {'arm':16s}{'median ms':>11s}{'(q1 - q3)':>20s}{'/ fastest peer':>16s}{'/ hand loop':>13s}")
    for name, arm in result["arms"].items():
        peer = "—" if arm["vs_fastest_peer"] is None else f"{arm['vs_fastest_peer']:.3f}"
        spread = f"({arm['q1_ms']:.3f} - {arm['q3_ms']:.3f})"
        print(f"  {name:16s}{arm['median_ms']:11.3f}{spread:>20s}"
              f"{peer:>16s}{arm['vs_hand']:13.3f}")
    ours = result["arms"]["compinterp"]
    verdict = []
    if fastest is not None:
        verdict.append(f"{ours['vs_fastest_peer']:.3f}x {fastest} (target <= {TARGET_PEER}: "
                       f"{'met' if result['meets_peer_target'] else 'MISSED'})")
    else:
        verdict.append("no peer installed")
    verdict.append(f"{ours['vs_hand']:.3f}x the hand loop (target <= {TARGET_HAND}: "
                   f"{'met' if result['meets_hand_target'] else 'MISSED'})")
    print("  compinterp: " + "; ".join(verdict))


def checked(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    diff = float((got.double() - want.double()).abs().max())
    print(f"  check {name:44s} max |diff| = {diff:.2e}")
    assert diff < TOLERANCE, f"{name}: max abs difference {diff} >= {TOLERANCE}"
    return diff


def peer_import(module: str, why: str) -> tuple[Any, str | None]:
    """The module, or ``None`` and the printed reason it is skipped."""
    try:
        return __import__(module, fromlist=["_"]), None
    except Exception as err:  # ImportError, or a peer that fails while importing
        reason = f"{why} skipped: import {module} failed ({type(err).__name__}: {str(err).splitlines()[0]})"
        print(reason)
        return None, reason


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------
# workload 1: interchange interventions on an MLP


def mlp_workload(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).to(device)
    seq.eval()
    w = [(layer.weight.detach(), layer.bias.detach()) for layer in (seq[0], seq[2], seq[4])]
    x, h1, h2, y = Space("x", 3), Space("h1", 16), Space("h2", 16), Space("y", 2)
    diagram = ci.chain(Linear("lin1", x, h1, bias=True), Elementwise("relu", h1, name="relu1"),
                       Linear("lin2", h1, h2, bias=True), Elementwise("relu", h2, name="relu2"),
                       Linear("lin3", h2, y, bias=True))
    params = {f"lin{k + 1}": {"W": W.clone(), "b": b.clone()} for k, (W, b) in enumerate(w)}
    model = ci.Model(diagram, params).to(device)
    g = torch.Generator().manual_seed(1)
    base = torch.randn(PAIRS, 3, generator=g).to(device)
    source = torch.randn(PAIRS, 3, generator=g).to(device)
    e = torch.eye(16, device=device)[NEURON]
    sites = {"layer": ci.Site("relu1"), "neuron": ci.Site("relu1", subspace=e[None])}
    (W1, b1), (W2, b2), (W3, b3) = w

    def rest(h: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(h, W2, b2).relu(), W3, b3)

    def hand(what: str, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        hs = F.linear(s, W1, b1).relu()
        if what == "layer":
            return rest(hs)
        h = F.linear(b, W1, b1).relu()
        h[:, NEURON] = hs[:, NEURON]
        return rest(h)

    pv, skipped = peer_import("pyvene", "pyvene")
    interveners = {}
    if pv is not None:
        seq.config = None  # pyvene reads model.config; a plain torch module has none
        for what in sites:
            interveners[what] = pv.IntervenableModel(
                {"component": "1.output", "intervention": pv.VanillaIntervention()}, model=seq)

    def arms_for(what: str, size: int) -> dict[str, Callable[[], torch.Tensor]]:
        site = sites[what]

        def pairs() -> zip[tuple[torch.Tensor, torch.Tensor]]:
            return zip(base.split(size), source.split(size))

        arms: dict[str, Callable[[], torch.Tensor]] = {
            "compinterp": lambda: ci.intervene(model, base, [ci.patch(site, source)], batch_size=size),
            "hand-written": lambda: torch.cat([hand(what, b, s) for b, s in pairs()]),
        }
        if what in interveners:
            im = interveners[what]
            if what == "layer":
                arms["pyvene"] = lambda: torch.cat([im({"input": b}, [{"input": s}])[1] for b, s in pairs()])
            else:
                arms["pyvene"] = lambda: torch.cat([im({"input": b}, [{"input": s}],
                                                       subspaces=[[[NEURON]] * len(b)])[1] for b, s in pairs()])
        return arms

    results: dict[str, Any] = {"pyvene": version("pyvene"), "skipped": skipped, "cases": {}}
    print(f"\n== 1. interchange interventions, MLP 3-16-16-2, {PAIRS} (base, source) pairs, hidden layer 1 ==")
    with torch.no_grad():
        for what in ("layer", "neuron"):
            for size in (256, PAIRS):
                arms = arms_for(what, size)
                outs = {name: fn() for name, fn in arms.items()}
                case = f"{'whole layer' if what == 'layer' else f'neuron {NEURON}'}, batch {size}"
                diffs = {name: checked(f"{case}: {name} vs hand-written", out, outs["hand-written"])
                         for name, out in outs.items() if name != "hand-written"}
                result = summary(measure(arms, args.repeats, args.warmup, device), ["pyvene"])
                result["max_abs_diff"] = diffs
                results["cases"][case] = result
                table(case, result)
    return results


# --------------------------------------------------------------------------------------------
# workload 2: an activation-patching sweep on an attention-only transformer


def hand_forward(w: dict[str, Any], tokens: torch.Tensor, positions: torch.Tensor,
                 at: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The transformer as plain torch; ``at(layer, x)`` sees (and may replace) each layer's input."""
    x = F.embedding(tokens, w["W_E"]) + F.embedding(positions, w["W_pos"])
    b, t = tokens.shape
    for layer in range(LAYERS):
        if at is not None:
            x = at(layer, x)
        h = F.rms_norm(x, (D,), w["ln"][layer], 1e-5)
        q, k, v = (F.linear(h, W).view(b, t, HEADS, -1).transpose(1, 2) for W in w["qkv"][layer])
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + F.linear(z, w["Wo"][layer])
    return F.linear(F.rms_norm(x, (D,), w["ln_final"], 1e-5), w["W_U"])


def metric(logits: torch.Tensor) -> torch.Tensor:
    """The mean logit difference of tokens 1 and 2 at the last position."""
    return (logits[:, -1, TOKEN_A] - logits[:, -1, TOKEN_B]).mean()


def patching_workload(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    tl_patching, skipped = None, None
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens import patching as tl_patching
    except Exception as err:  # not installed; or 4.x, which raises ImportError for HookedTransformer
        installed = version("transformer-lens")
        hint = ("TransformerLens 4.0 removed it: pip install 'transformer-lens<4'" if installed
                else "pip install 'transformer-lens<4'")
        skipped = (f"TransformerLens skipped: HookedTransformer does not import ({type(err).__name__}: "
                   f"{str(err).splitlines()[0]}); {hint}")
        print(skipped)

    g = torch.Generator().manual_seed(0)
    if tl_patching is not None:
        import warnings
        cfg = HookedTransformerConfig(n_layers=LAYERS, d_model=D, n_heads=HEADS, d_head=D // HEADS, n_ctx=N_CTX,
                                      d_vocab=VOCAB, attn_only=True, normalization_type="RMS",
                                      positional_embedding_type="standard", act_fn="relu", seed=0,
                                      device=str(device))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            tl = HookedTransformer(cfg)
        tl.eval()
        assert cfg.eps == 1e-5, f"TransformerLens's RMS eps is {cfg.eps}, our Norm's default 1e-5"
        with torch.no_grad():
            for block in tl.blocks:
                for bias in (block.attn.b_Q, block.attn.b_K, block.attn.b_V, block.attn.b_O):
                    bias.zero_()
            tl.unembed.b_U.zero_()
            for ln in [block.ln1 for block in tl.blocks] + [tl.ln_final]:
                ln.w.copy_(1 + 0.1 * torch.randn(D, generator=g))
        W_E, W_pos, W_U = tl.W_E, tl.W_pos, tl.W_U
        ln = [block.ln1.w for block in tl.blocks]
        W_Q, W_K, W_V, W_O = ([getattr(block.attn, n) for block in tl.blocks] for n in ("W_Q", "W_K", "W_V", "W_O"))
        ln_final = tl.ln_final.w
    else:  # the same shapes, seeded, in TransformerLens's layout
        def r(*shape: int, scale: float = 0.05) -> torch.Tensor:
            return (scale * torch.randn(*shape, generator=g)).to(device)
        W_E, W_pos, W_U = r(VOCAB, D), r(N_CTX, D), r(D, VOCAB)
        ln = [1 + r(D, scale=0.1) for _ in range(LAYERS)]
        W_Q, W_K, W_V = ([r(HEADS, D, D // HEADS) for _ in range(LAYERS)] for _ in range(3))
        W_O = [r(HEADS, D // HEADS, D) for _ in range(LAYERS)]
        ln_final = 1 + r(D, scale=0.1)

    inner = D  # heads x d_head
    tokens, positions, resid, logits = Space("tokens", VOCAB), Space("positions", N_CTX), Space("resid", D), \
        Space("logits", VOCAB)
    diagram = ci.chain((Embed("embed", tokens, resid) @ Embed("pos", positions, resid)) >> Add(resid),
                       *[residual(Norm(f"ln{l}", resid) >> Attention(f"attn{l}", resid, heads=HEADS))
                         for l in range(LAYERS)],
                       Norm("ln_final", resid), Unembed("unembed", resid, logits))
    c = lambda t: t.detach().clone().contiguous()  # noqa: E731
    params: dict[str, dict[str, torch.Tensor]] = {"embed": {"W": c(W_E)}, "pos": {"W": c(W_pos)},
                                                  "ln_final": {"weight": c(ln_final)}, "unembed": {"W": c(W_U.T)}}
    for l in range(LAYERS):
        params[f"ln{l}"] = {"weight": c(ln[l])}
        params[f"attn{l}"] = {"Wq": c(W_Q[l].permute(0, 2, 1).reshape(inner, D)),
                              "Wk": c(W_K[l].permute(0, 2, 1).reshape(inner, D)),
                              "Wv": c(W_V[l].permute(0, 2, 1).reshape(inner, D)),
                              "Wo": c(W_O[l].reshape(inner, D).T)}
    model = ci.Model(diagram, params).to(device)
    w = {"W_E": params["embed"]["W"], "W_pos": params["pos"]["W"], "W_U": params["unembed"]["W"],
         "ln": [params[f"ln{l}"]["weight"] for l in range(LAYERS)], "ln_final": params["ln_final"]["weight"],
         "qkv": [[params[f"attn{l}"][k] for k in ("Wq", "Wk", "Wv")] for l in range(LAYERS)],
         "Wo": [params[f"attn{l}"]["Wo"] for l in range(LAYERS)]}

    # The registers feeding each layer: the input of the step labelled ln<l>.
    plan = model.plan
    writer = {step.outs[0]: plan.labels[t] for t, step in enumerate(plan.steps)}
    names = [writer[plan.steps[plan.labels.index(f"ln{l}")].ins[0]] for l in range(LAYERS)]
    print(f"\n== 2. activation patching, resid_pre x position, attention-only transformer "
          f"(layers {LAYERS}, d {D}, heads {HEADS}), batch {BATCH}, seq {SEQ} ==")
    print(f"  compinterp sites: the registers {names} (the inputs of ln0, ln1) x positions 0..{SEQ - 1}")

    clean_tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g).to(device)
    corrupted_tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g).to(device)
    pos = torch.arange(SEQ, device=device).expand(BATCH, SEQ)
    clean, corrupted = (clean_tokens, pos), (corrupted_tokens, pos)
    results: dict[str, Any] = {"transformer_lens": version("transformer-lens"), "skipped": skipped, "names": names}

    def ours() -> tuple[torch.Tensor, float, float]:
        sweep = ci.patching(model, clean, corrupted, ci.grid(model, names, SEQ), metric)
        return sweep.values, sweep.clean, sweep.corrupted

    def hand() -> tuple[torch.Tensor, float, float]:
        seen: list[torch.Tensor] = []
        top = float(metric(hand_forward(w, clean_tokens, pos, lambda l, x: seen.append(x) or x)))
        low = float(metric(hand_forward(w, corrupted_tokens, pos)))
        values = torch.empty(LAYERS, SEQ)
        for layer in range(LAYERS):
            for t in range(SEQ):
                def patch(l: int, x: torch.Tensor, layer: int = layer, t: int = t) -> torch.Tensor:
                    if l != layer:
                        return x
                    x = x.clone()
                    x[:, t] = seen[layer][:, t]
                    return x
                values[layer, t] = float(metric(hand_forward(w, corrupted_tokens, pos, patch)))
        return values, top, low

    def ours_small_groups() -> tuple[torch.Tensor, float, float]:
        sweep = ci.patching(model, clean, corrupted, ci.grid(model, names, SEQ), metric, group=SMALL_GROUP)
        return sweep.values, sweep.clean, sweep.corrupted

    arms: dict[str, Callable[[], tuple[torch.Tensor, float, float]]] = {
        "compinterp": ours, "hand-written": hand, f"compinterp g={SMALL_GROUP}": ours_small_groups}
    if tl_patching is not None:
        def resid_pre(name: str) -> bool:
            return name.endswith("hook_resid_pre")

        def transformer_lens() -> tuple[torch.Tensor, float, float]:
            clean_logits, cache = tl.run_with_cache(clean_tokens, names_filter=resid_pre)
            low = float(metric(tl(corrupted_tokens)))
            values = tl_patching.get_act_patch_resid_pre(tl, corrupted_tokens, cache, metric)
            return values, float(metric(clean_logits)), low
        arms["TransformerLens"] = transformer_lens

    with torch.no_grad():
        want = hand_forward(w, clean_tokens, pos)
        diffs = {"logits: compinterp vs hand-written": checked("logits: compinterp vs hand-written",
                                                               model(*clean), want)}
        cache = ci.run_with_cache(model, *clean, names=names)
        if tl_patching is not None:
            tl_logits, tl_cache = tl.run_with_cache(clean_tokens)
            diffs["logits: TransformerLens vs hand-written"] = checked("logits: TransformerLens vs hand-written",
                                                                       tl_logits, want)
            for l, name in enumerate(names):
                key = f"{name} vs TL blocks.{l}.hook_resid_pre"
                diffs[key] = checked(key, cache[name], tl_cache[f"blocks.{l}.hook_resid_pre"])
        outs = {name: fn() for name, fn in arms.items()}
        ref = outs["hand-written"]
        for name, (values, top, low) in outs.items():
            if name != "hand-written":
                key = f"sweep: {name} vs hand-written"
                diffs[key] = checked(key, values.reshape(LAYERS, SEQ).cpu(), ref[0])
                diffs[f"clean/corrupted: {name}"] = checked(f"clean, corrupted metric: {name}",
                                                             torch.tensor([top, low]), torch.tensor(ref[1:]))
        result = summary(measure(arms, args.repeats, args.warmup, device), ["TransformerLens"])
    result["max_abs_diff"] = diffs
    case = f"resid_pre patching sweep, {LAYERS} layers x {SEQ} positions, batch {BATCH}"
    results["cases"] = {case: result}
    table(case, result)
    return results


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls of every arm first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, metavar="OUT", help="write every number to OUT")
    parser.add_argument("--only", choices=["mlp", "patching"], default=None, help="run one workload")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} rounds (+{args.warmup} warm-up), {platform.machine()} {os.cpu_count()} cores; "
          f"targets: compinterp <= {TARGET_PEER}x the fastest peer, <= {TARGET_HAND}x the hand loop")
    out: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "repeats": args.repeats, "warmup": args.warmup, "cpu_count": os.cpu_count(),
                           "date": time.strftime("%Y-%m-%d"),
                           "targets": {"vs_fastest_peer": TARGET_PEER, "vs_hand": TARGET_HAND}}
    if args.only in (None, "mlp"):
        out["interventions"] = mlp_workload(args, device)
    if args.only in (None, "patching"):
        out["patching"] = patching_workload(args, device)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
