"""Compiled semantics vs hand-written torch: the cost of running a network through its diagram.

Each case builds a :class:`~compinterp.Model` from a diagram and a hand-written forward
(plain ``F.linear``, ``F.rms_norm``, ``F.scaled_dot_product_attention`` ...) that reads the
same weight tensors, checks that both give the same outputs, then times them interleaved
(alternating which goes first) under ``torch.no_grad()`` and reports medians and their ratio.

    .venv/bin/python benchmarks/bench_semantics.py [--device cpu|cuda] [--repeats N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compinterp.model import Model
from compinterp.syntax import Attention, Bilinear, Diagram, Embed, Norm, Space, Unembed, chain, residual

Weights = Mapping[str, Mapping[str, torch.Tensor]]
TARGET = 1.10
"""The ratio compiled / hand-written that the compiled plan should stay under on CPU."""


@dataclass(frozen=True)
class Case:
    """A network: its diagram, its hand-written forward over the same weights, and an input."""

    name: str
    shape: str
    diagram: Diagram
    by_hand: Callable[[Weights, torch.Tensor], torch.Tensor]
    make_input: Callable[[torch.Generator, torch.device], torch.Tensor]
    repeat_factor: int = 1
    """Time this case ``repeat_factor`` times as often (small cases are fast and noisy)."""
    target: bool = True
    """Whether the CPU target ratio applies (not to the overhead probe)."""


def bilinear_mlp(d: int = 256, hidden: int = 1024, batch: int = 4096, layers: int = 2, classes: int = 10) -> Case:
    """``x -> (x + D(Lx * Rx)) x layers -> W x + b``: residual bilinear layers, then a linear readout."""
    resid = Space("resid", d)
    diagram = chain(*[residual(Bilinear(f"mlp{i}", resid, resid, hidden=hidden)) for i in range(layers)],
                    Unembed("head", resid, Space("logits", classes), bias=True))

    def by_hand(w: Weights, x: torch.Tensor) -> torch.Tensor:
        for i in range(layers):
            m = w[f"mlp{i}"]
            x = x + F.linear(F.linear(x, m["L"]) * F.linear(x, m["R"]), m["D"])
        return F.linear(x, w["head"]["W"], w["head"]["b"])

    return Case("bilinear MLP", f"d={d} hidden={hidden} batch={batch} layers={layers}", diagram, by_hand,
                lambda g, device: torch.randn(batch, d, generator=g).to(device))


def transformer(d: int = 128, heads: int = 4, seq: int = 32, batch: int = 64, layers: int = 2,
                hidden: int = 512, vocab: int = 512, name: str = "transformer", probe: bool = False) -> Case:
    """Pre-norm transformer: embed, per layer ``x + attn(rms(x))`` and ``x + bilinear(rms(x))``, rms, unembed."""
    resid, tokens = Space("resid", d), Space("tokens", vocab)
    blocks = []
    for i in range(layers):
        blocks += [residual(Norm(f"ln_attn{i}", resid) >> Attention(f"attn{i}", resid, heads=heads, causal=True)),
                   residual(Norm(f"ln_mlp{i}", resid) >> Bilinear(f"mlp{i}", resid, resid, hidden=hidden))]
    diagram = chain(Embed("embed", tokens, resid), *blocks, Norm("ln_final", resid), Unembed("unembed", resid, tokens))

    def attention(a: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (F.linear(x, a[w]).view(b, s, heads, -1).transpose(1, 2) for w in ("Wq", "Wk", "Wv"))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.linear(z.transpose(1, 2).reshape(b, s, -1), a["Wo"])

    def by_hand(w: Weights, ids: torch.Tensor) -> torch.Tensor:
        x = F.embedding(ids, w["embed"]["W"])
        for i in range(layers):
            x = x + attention(w[f"attn{i}"], F.rms_norm(x, (d,), w[f"ln_attn{i}"]["weight"], 1e-5))
            h, m = F.rms_norm(x, (d,), w[f"ln_mlp{i}"]["weight"], 1e-5), w[f"mlp{i}"]
            x = x + F.linear(F.linear(h, m["L"]) * F.linear(h, m["R"]), m["D"])
        return F.linear(F.rms_norm(x, (d,), w["ln_final"]["weight"], 1e-5), w["unembed"]["W"])

    return Case(name, f"d={d} heads={heads} seq={seq} batch={batch} layers={layers} hidden={hidden} vocab={vocab}",
                diagram, by_hand, lambda g, device: torch.randint(0, vocab, (batch, seq), generator=g).to(device),
                repeat_factor=20 if probe else 1, target=not probe)


def overhead_probe() -> Case:
    """A tiny transformer, where the plan's fixed per-call cost shows (informational, no target)."""
    return transformer(d=16, heads=2, seq=4, batch=1, hidden=32, vocab=32, name="tiny (probe)", probe=True)


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def summary(seconds: list[float]) -> dict[str, float]:
    """Median, quartiles and minimum, in milliseconds."""
    q1, median, q3 = statistics.quantiles(seconds, n=4)
    return {"median_ms": 1e3 * median, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3, "min_ms": 1e3 * min(seconds)}


def bench(case: Case, device: torch.device, repeats: int, warmup: int, seed: int) -> dict[str, Any]:
    """Check that the two forwards agree, then time them in alternating order."""
    model = Model(case.diagram, seed=seed).to(device).eval()
    weights = {name: model.box_params(name) for name in model.params}
    x = case.make_input(torch.Generator().manual_seed(seed), device)
    compiled, by_hand = (lambda: model(x)), (lambda: case.by_hand(weights, x))
    with torch.no_grad():
        torch.testing.assert_close(compiled(), by_hand(), rtol=1e-4, atol=1e-4)
        for _ in range(warmup):
            compiled(), by_hand()
        times: dict[str, list[float]] = {"compiled": [], "hand": []}
        for r in range(repeats * case.repeat_factor):
            order = ("compiled", "hand") if r % 2 == 0 else ("hand", "compiled")
            for which in order:
                times[which].append(timed(compiled if which == "compiled" else by_hand, device))
    result = {"case": case.name, "shape": case.shape, "target_applies": case.target,
              "repeats": repeats * case.repeat_factor, "boxes": len(case.diagram.inside),
              "kernel_calls": len(model.plan.steps), "parameters": model.num_params(),
              "compiled": summary(times["compiled"]), "hand": summary(times["hand"])}
    result["ratio"] = result["compiled"]["median_ms"] / result["hand"]["median_ms"]
    return result


def table(results: list[dict[str, Any]]) -> str:
    """The results side by side, one line per case."""
    head = f"{'case':<15}{'compiled ms':>12}{'hand ms':>10}{'ratio':>8}   {'compiled IQR':<16}{'hand IQR':<16}shape"
    lines = [head, "-" * len(head)]
    for r in results:
        c, h = r["compiled"], r["hand"]
        lines.append(f"{r['case']:<15}{c['median_ms']:>12.3f}{h['median_ms']:>10.3f}{r['ratio']:>8.3f}   "
                     f"{c['q1_ms']:>6.2f}-{c['q3_ms']:<9.2f}{h['q1_ms']:>6.2f}-{h['q3_ms']:<9.2f}{r['shape']}"
                     + ("" if r["target_applies"] else "  (no target)"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=40, help="timed calls of each forward (default 40)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls of each forward first (default 5)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch.set_num_threads for the whole run (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here as JSON")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = (bilinear_mlp(), transformer(), overhead_probe())
    results = [bench(case, device, args.repeats, args.warmup, args.seed) for case in cases]
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {args.threads} threads")
          + f", {args.repeats} interleaved repeats, median; target ratio <= {TARGET} on CPU")
    print(table(results))
    if args.json is not None:
        report = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                  else platform.processor() or platform.machine(), "torch": torch.__version__,
                  "python": platform.python_version(), "threads": args.threads, "repeats": args.repeats,
                  "warmup": args.warmup, "seed": args.seed, "target_ratio_cpu": TARGET, "results": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.json.with_name(args.json.name + ".tmp")
        temporary.write_text(json.dumps(report, indent=2) + "\n")
        temporary.replace(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
