"""One CP fit's time and error: the cost that bounds the refinement search (``bench_refine.py``) below.

For each hidden width (with the rank the search chooses there: 32 / 48 / 64 / 64 at 64 / 256 / 1024 / 4096) a
bilinear MLP is trained on the digits as ``bench_refine.py`` trains it (not timed), then
``compinterp.refinement.passes.cp.fit`` is run ``--repeats`` times for ``--steps`` L-BFGS steps from the same
start (the box's spectrum and targets made once, as the search makes them), and the minimum and median time,
the time per step and the fit's relative error ``||B_sym - C_sym||_F^2 / ||B_sym||_F^2`` are printed. Not part of
the tests; run by hand:

    .venv/bin/python benchmarks/bench_fit.py [--widths 64,256,1024] [--steps 200] [--repeats 7] [--threads 1]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time

import torch

from bench_refine import sync, train
from compinterp.refinement.passes._common import Factors, frobenius_sq, params64

RANKS = {64: 32, 256: 48, 1024: 64, 4096: 64}
"""The rank the default search chooses at each hidden width (``bench_refine.py``)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256,1024", help="hidden widths, one model each")
    parser.add_argument("--ranks", default=None, help="the rank per width (default: the search's choices)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7, help="timed fits per width (after one untimed)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the whole run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be at least 1")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cp = importlib.import_module("compinterp.refinement.passes.cp")
    widths = [int(w) for w in args.widths.split(",")]
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else [RANKS.get(w, 64) for w in widths]
    if len(ranks) != len(widths):
        parser.error(f"--ranks gives {len(ranks)} ranks for {len(widths)} widths")
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps")
    print(f"{'hidden':>6}  {'rank':>4}  {'min':>8}  {'median':>8}  {'per step':>8}  {'rel. error':>10}")
    for hidden, rank in zip(widths, ranks, strict=True):
        model = train(hidden, args.epochs, device)
        target = Factors.of(model.boxes["mlp"], params64(model, "mlp"))
        prepared = cp.Prepared(target)
        U, W, A = cp.fit(target, rank, args.steps, prepared=prepared, progress=False)
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            cp.fit(target, rank, args.steps, prepared=prepared, progress=False)
            sync(device)
            times.append(time.perf_counter() - start)
        error = cp.cp_loss(target, U, W, A).item() / frobenius_sq(target).item()
        print(f"{hidden:>6}  {rank:>4}  {min(times) * 1e3:>6.1f}ms  {statistics.median(times) * 1e3:>6.1f}ms  "
              f"{min(times) / args.steps * 1e3:>6.3f}ms  {error:>10.3e}")


if __name__ == "__main__":
    main()
