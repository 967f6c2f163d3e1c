"""Exact check against a Monte-Carlo check of the same accuracy, side by side in one run.

The model is one bilinear layer (d=256, hidden 1024, 10 outputs); the explanations are its
per-output eigendecompositions truncated to the top ``keep`` eigenvectors (symmetric
bilinear layers, DESIGN §2). Both checks measure the FVU of an explanation under
``x ~ N(0, I)``:

* exact: :func:`compinterp.faithfulness.exact.exact_compare`, from the weights (for this one-stage
  layer, the closed form on the per-output quadratic forms ``A_c``; ``--engine`` also times the
  general Wick engine on the same pair, side by side);
* Monte Carlo: batches of Gaussian inputs through both models (the data-based way),
  with as many samples as a pilot run says are needed for a relative standard error of
  ``target`` (1e-3) on the FVU (delta method for the ratio of two means).

With ``--engine`` it also times Frobenius inner products ``<sym F_c, sym G_c>_F`` of two random bilinear
layers at several sizes: :func:`~compinterp.faithfulness.exact.frobenius_inner` (one stage: the units'
Gram matrices), the general Wick engine, and the closed Gram form written out by hand in torch
(``sum (D_A^T D_B) * K``), side by side.

With ``--closure`` it measures the Gaussian closure (:mod:`compinterp.faithfulness.exact.closure`) on 3-stage
nets (three residual bilinear layers with biases, d -> d, and a read-out to 10 outputs; the explanation keeps the
first 3/4 of every layer's hidden units), where the exact path falls back to Monte Carlo: the closure's FVU
against a reference Monte-Carlo FVU from ``--reference`` samples (its standard error beside it), the closure's
time (``exact_compare(..., closure=True)``), and the time of the library's Monte-Carlo fallback
(``exact_compare(..., samples=n)``) at matched accuracy, ``n`` set so that its relative standard error equals the
closure's relative error; and the fallback at its default ``MC_SAMPLES``.

Run: ``.venv/bin/python benchmarks/bench_exact.py [--threads T] [--keep 16,64] [--engine] [--closure]`` (not part
of the test suite). On a CPU shared with other jobs, ``--threads 1`` gives the steadier timings: with
several threads every kernel waits on the slowest, descheduled thread.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from unittest import mock

import torch

from compinterp.faithfulness import exact
from compinterp.faithfulness.exact import closed_form, exact_compare, measures
from compinterp.model import Model
from compinterp.semantics.tensor import tensor_semantics
from compinterp.syntax import Bilinear, Linear, Space, chain, residual


def eigen_explanation(model: Model, keep: int) -> Model:
    """Per output ``c``, the top-``keep`` eigenvectors of ``B_c = sym(L^T diag(D_c) R)`` as a symmetric layer."""
    p = {k: v.detach().double() for k, v in model.box_params("mlp").items()}
    outputs = p["D"].shape[0]
    rows, weights = [], torch.zeros(outputs, outputs * keep, dtype=torch.float64)
    for c in range(outputs):
        B = p["L"].T @ (p["D"][c][:, None] * p["R"])
        lam, vec = torch.linalg.eigh((B + B.T) / 2)
        top = lam.abs().argsort(descending=True)[:keep]
        rows.append(vec[:, top].T)
        weights[c, c * keep:(c + 1) * keep] = lam[top]
    V = torch.cat(rows)
    box = Bilinear("mlp", model.dom, model.cod, hidden=outputs * keep)
    return Model(box, {"mlp": {"L": V.float(), "R": V.float(), "D": weights.float()}})


def monte_carlo(model: Model, expl: Model, n: int, batch: int, seed: int,
                device: torch.device) -> tuple[float, float]:
    """FVU from ``n`` Gaussian samples (forward passes in the models' float32 on ``device``, sums in
    float64), with its relative standard error (delta method for the ratio of two means)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    errors, outputs = [], []
    with torch.no_grad():
        for start in range(0, n, batch):
            x = torch.randn(min(batch, n - start), model.dom.dim, generator=gen, device=device)
            y, z = model(x).double(), expl(x).double()
            errors.append((y - z).square().sum(1))
            outputs.append(y)
    return fvu_estimate(torch.cat(errors), torch.cat(outputs))


def fvu_estimate(errors: torch.Tensor, outputs: torch.Tensor) -> tuple[float, float]:
    """The Monte-Carlo FVU ``mean ||y - z||^2 / mean ||y - mean y||^2`` from each sample's squared error and
    reference output, and its relative standard error (by the ratio estimator's influence function)."""
    w = (outputs - outputs.mean(0)).square().sum(1)
    ratio = errors.mean() / w.mean()
    influence = (errors - ratio * w) / w.mean()
    return ratio.item(), (influence.std() / math.sqrt(len(errors)) / ratio).item()


def timed(model: Model, expl: Model, repeats: int) -> tuple[exact.ExactResult, float]:
    """The exact check and its median time over ``repeats`` runs after a warm-up (as the pilot run
    warms up the Monte-Carlo check); every run does its full work (nothing is kept between calls)."""
    exact_compare(model, expl)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = exact_compare(model, expl)
        times.append(time.perf_counter() - start)
    return result, sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--outputs", type=int, default=10)
    parser.add_argument("--keep", type=str, default="16,64,128", help="eigenvectors kept per output, one run each")
    parser.add_argument("--target", type=float, default=1e-3, help="relative accuracy of the Monte-Carlo FVU")
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=5,
                        help="exact timings taken after a warm-up (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the whole run")
    parser.add_argument("--device", default="cpu", help="torch device of the Monte-Carlo forward passes")
    parser.add_argument("--engine", action="store_true",
                        help="also time the exact check with the closed form for one stage switched off")
    parser.add_argument("--closure", action="store_true",
                        help="also measure the Gaussian closure against Monte Carlo on 3-stage nets")
    parser.add_argument("--closure-sizes", default="16x32,32x64,64x128,128x256",
                        help="--closure: DxHIDDEN of the nets, comma-separated")
    parser.add_argument("--reference", type=int, default=2 ** 18,
                        help="--closure: samples of the reference Monte-Carlo FVU")
    parser.add_argument("--only-closure", action="store_true", help="run the --closure section alone")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.only_closure:
        closure_table(_sizes(args.closure_sizes), args.reference, args.repeats)
        return
    model = Model(Bilinear("mlp", Space("x", args.dim), Space("y", args.outputs), hidden=args.hidden), seed=0)
    print(f"bilinear layer d={args.dim}, hidden={args.hidden}, outputs={args.outputs}, x ~ N(0, I); "
          f"torch threads: {torch.get_num_threads()}")
    print(f"{'explanation':<14}{'check':<13}{'FVU':>12}{'rel. error':>12}{'samples':>10}{'seconds':>10}")
    for keep in map(int, args.keep.split(",")):
        expl = eigen_explanation(model, keep)
        closed = closed_form.closed_form_pays([tensor_semantics(model), tensor_semantics(expl)],
                                              [(0, 0), (0, 1), (1, 1)])
        result, exact_s = timed(model, expl, args.repeats)
        if args.engine:
            with mock.patch.object(measures, "closed_form_pays", return_value=False):
                engine, engine_s = timed(model, expl, args.repeats)
        pilot = 2 ** 15
        on_device = model.to(device), expl.to(device)
        _, pilot_se = monte_carlo(*on_device, pilot, args.batch, seed=1, device=device)
        n = math.ceil(pilot * (pilot_se / args.target) ** 2)
        start = time.perf_counter()
        fvu_mc, se_mc = monte_carlo(*on_device, n, args.batch, seed=2, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        mc_s = time.perf_counter() - start
        model, expl = model.cpu(), expl.cpu()
        name = f"top-{keep} eig"
        print(f"{name:<14}{'exact':<13}{result.fvu:>12.6f}{'float64':>12}{'-':>10}{exact_s:>10.3f}"
              f"   ({'closed form, one stage' if closed else 'Wick engine'})")
        if args.engine:
            print(f"{name:<14}{'exact, Wick':<13}{engine.fvu:>12.6f}{'float64':>12}{'-':>10}{engine_s:>10.3f}"
                  f"   (closed form off: {engine_s / exact_s:.1f}x the time)")
        print(f"{name:<14}{'Monte Carlo':<13}{fvu_mc:>12.6f}{se_mc:>12.1e}{n:>10,}{mc_s:>10.3f}")
        print(f"{name:<14}exact is {mc_s / exact_s:.1f}x faster (target >= 20x); Monte Carlo is off the exact FVU by "
              f"{abs(fvu_mc - result.fvu) / result.fvu:.1e} (relative)")
    if args.engine:
        frobenius_table(args.repeats)
    if args.closure:
        closure_table(_sizes(args.closure_sizes), args.reference, args.repeats)


def _sizes(text: str) -> list[tuple[int, int]]:
    """``16x32,32x64`` as ``[(16, 32), (32, 64)]``."""
    return [(int(d), int(h)) for d, h in (size.split("x") for size in text.split(","))]


def deep_pair(d: int, hidden: int, stages: int = 3, seed: int = 0) -> tuple[Model, Model]:
    """``stages`` residual bilinear layers with biases on ``d`` and a read-out to 10 outputs, and the same net with
    every layer cut to its first ``3 hidden / 4`` units."""
    x, y = Space("x", d), Space("y", 10)

    def net(width: int, params: dict | None) -> Model:
        layers = [residual(Bilinear(f"b{i}", x, x, hidden=width, bias=True)) for i in range(stages)]
        return Model(chain(*layers, Linear("out", x, y)), params, seed=seed)

    model = net(hidden, None)
    keep = 3 * hidden // 4
    params = {name: {role: t.detach().clone() for role, t in model.box_params(name).items()} for name in model.params}
    for i in range(stages):
        p = params[f"b{i}"]
        params[f"b{i}"] = {**{r: p[r][:keep] for r in ("L", "R", "l", "r")}, "D": p["D"][:, :keep], "d": p["d"]}
    return model, net(keep, params)


def sampled_fvu(model: Model, expl: Model, n: int, seed: int) -> tuple[float, float]:
    """FVU from ``n`` samples of ``N(0, I)`` through the float64 tensor semantics, and its relative standard error
    (delta method for the ratio of two means)."""
    F, G = tensor_semantics(model, torch.float64), tensor_semantics(expl, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    errors, outputs = [], []
    for start in range(0, n, 8192):
        z = torch.randn(min(8192, n - start), F.in_dim, dtype=torch.float64, generator=gen)
        padded = torch.cat([torch.ones(z.shape[0], 1, dtype=torch.float64), z], 1)
        a, b = F.apply(padded), G.apply(padded)
        errors.append((a - b).square().sum(1))
        outputs.append(a)
    return fvu_estimate(torch.cat(errors), torch.cat(outputs))


def closure_table(sizes: list[tuple[int, int]], reference: int, repeats: int) -> None:
    """The Gaussian closure on 3-stage nets: its error against a reference Monte-Carlo FVU, and its time against
    the Monte-Carlo fallback at matched accuracy and at its default sample count."""
    def median(fn) -> tuple[exact.ExactResult, float]:
        result, times = fn(), []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return result, sorted(times)[len(times) // 2]

    print("\n3 residual bilinear stages (degree 8), explanation: the first 3/4 of every layer's units; x ~ N(0, I)")
    print(f"{'d x hidden':<12}{'reference FVU':>22}{'closure FVU':>13}{'rel. error':>11}{'closure':>10}"
          f"{'MC samples':>12}{'MC':>10}{'MC/closure':>11}{'MC default':>12}{'default SE':>11}")
    for d, hidden in sizes:
        model, expl = deep_pair(d, hidden)
        fvu, se = sampled_fvu(model, expl, reference, seed=1)
        closed, closure_s = median(lambda: exact_compare(model, expl, closure=True))
        error = abs(closed.fvu - fvu) / fvu
        matched = math.ceil(reference * (se / max(error, se)) ** 2)      # no finer than the reference resolves
        _, mc_s = median(lambda: exact_compare(model, expl, samples=matched))
        _, default_s = median(lambda: exact_compare(model, expl))
        default_se = se * math.sqrt(reference / exact.MC_SAMPLES)
        print(f"{f'{d} x {hidden}':<12}{f'{fvu:.5f} +- {fvu * se:.5f}':>22}{closed.fvu:>13.5f}{error:>11.2%}"
              f"{closure_s * 1e3:>8.1f}ms{matched:>12,}{mc_s * 1e3:>8.1f}ms{mc_s / closure_s:>10.2f}x"
              f"{default_s:>11.2f}s{default_se:>11.2%}")


def frobenius_table(repeats: int) -> None:
    """Frobenius inner products of two bilinear layers: ours, the Wick engine, and the Gram form by hand,
    timed in interleaved rounds, the order rotating, after one warm-up call each: the median times of at least 9
    rounds, and the median of the rounds' ratios ours / by hand (the two calls of one round)."""
    from compinterp.faithfulness.exact.chain import squares, wick

    def by_hand(a: Model, b: Model) -> torch.Tensor:
        p, q = ({k: v.detach().double() for k, v in m.box_params(m.diagram.boxes[0].name).items()} for m in (a, b))
        LL, RR, LR, RL = p["L"] @ q["L"].T, p["R"] @ q["R"].T, p["L"] @ q["R"].T, p["R"] @ q["L"].T
        return torch.einsum("ch,hg,cg->c", p["D"], (LL * RR + LR * RL) / 2, q["D"])

    rounds = max(repeats, 9)
    print(f"\n{'Frobenius inner product':<26}{'ours':>10}{'engine':>10}{'by hand':>10}{'ours/hand':>11}"
          f"   ({rounds} interleaved rounds, medians; load average {os.getloadavg()[0]:.2f})")
    for d, h in ((16, 32), (64, 256), (256, 1024)):
        a = Model(Bilinear("a", Space("x", d), Space("y", 10), hidden=h), seed=0)
        b = Model(Bilinear("b", Space("x", d), Space("y", 10), hidden=h), seed=1)
        F, G = tensor_semantics(a), tensor_semantics(b)
        assert torch.allclose(measures.frobenius_inner(a, b), by_hand(a, b), rtol=1e-9)
        arms = {"ours": lambda: measures.frobenius_inner(a, b),
                "engine": lambda: wick([squares(F), squares(G)], "frobenius") / 2,
                "hand": lambda: by_hand(a, b)}
        times: dict[str, list[float]] = {name: [] for name in arms}
        for fn in arms.values():
            fn()
        order = list(arms)
        for r in range(rounds):
            for name in order[r % 3:] + order[:r % 3]:      # each arm in turn first (none always after the engine)
                start = time.perf_counter()
                arms[name]()
                times[name].append(time.perf_counter() - start)
        ours, engine, hand = (sorted(t)[rounds // 2] for t in times.values())
        ratio = sorted(mine / theirs for mine, theirs in zip(times["ours"], times["hand"]))[rounds // 2]
        print(f"{f'd {d}, hidden {h}':<26}{ours * 1e3:>8.2f}ms{engine * 1e3:>8.2f}ms{hand * 1e3:>8.2f}ms"
              f"{ratio:>10.2f}x")


if __name__ == "__main__":
    main()
