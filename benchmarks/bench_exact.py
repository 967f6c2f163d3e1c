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

Run: ``.venv/bin/python benchmarks/bench_exact.py [--threads T] [--keep 16,64] [--engine]`` (not part
of the test suite). On a CPU shared with other jobs, ``--threads 1`` gives the steadier timings: with
several threads every kernel waits on the slowest, descheduled thread.
"""

from __future__ import annotations

import argparse
import math
import time
from unittest import mock

import torch

from compinterp.faithfulness import exact
from compinterp.faithfulness.exact import closed_form, exact_compare, measures
from compinterp.model import Model
from compinterp.semantics.tensor import tensor_semantics
from compinterp.syntax import Bilinear, Space


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
    e, y = torch.cat(errors), torch.cat(outputs)
    w = (y - y.mean(0)).square().sum(1)
    ratio = e.mean() / w.mean()
    influence = (e - ratio * w) / w.mean()
    return ratio.item(), (influence.std() / math.sqrt(n) / ratio).item()


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
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

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


def frobenius_table(repeats: int) -> None:
    """Frobenius inner products of two bilinear layers: ours, the Wick engine, and the Gram form by hand."""
    from compinterp.faithfulness.exact.chain import squares, wick

    def median(fn) -> float:
        fn()
        times = []
        for _ in range(max(repeats, 5)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def by_hand(a: Model, b: Model) -> torch.Tensor:
        p, q = ({k: v.detach().double() for k, v in m.box_params(m.diagram.boxes[0].name).items()} for m in (a, b))
        LL, RR, LR, RL = p["L"] @ q["L"].T, p["R"] @ q["R"].T, p["L"] @ q["R"].T, p["R"] @ q["L"].T
        return torch.einsum("ch,hg,cg->c", p["D"], (LL * RR + LR * RL) / 2, q["D"])

    print(f"\n{'Frobenius inner product':<26}{'ours':>10}{'engine':>10}{'by hand':>10}{'ours/hand':>11}")
    for d, h in ((16, 32), (64, 256), (256, 1024)):
        a = Model(Bilinear("a", Space("x", d), Space("y", 10), hidden=h), seed=0)
        b = Model(Bilinear("b", Space("x", d), Space("y", 10), hidden=h), seed=1)
        F, G = tensor_semantics(a), tensor_semantics(b)
        assert torch.allclose(measures.frobenius_inner(a, b), by_hand(a, b), rtol=1e-9)
        ours = median(lambda: measures.frobenius_inner(a, b))
        engine = median(lambda: wick([squares(F), squares(G)], "frobenius") / 2)
        hand = median(lambda: by_hand(a, b))
        print(f"{f'd {d}, hidden {h}':<26}{ours * 1e3:>8.2f}ms{engine * 1e3:>8.2f}ms{hand * 1e3:>8.2f}ms"
              f"{ours / hand:>10.2f}x")


if __name__ == "__main__":
    main()
