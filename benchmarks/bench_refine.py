"""The search's time against the time of one exact check, and how it grows with hidden width.

For each hidden width (64, 256, 1024, 4096 by default) a bilinear MLP ``pixels:64 -> Bilinear ->
digits:10`` is trained on sklearn's digits (Adam, fixed seed; not timed), then, in the same
run:

* one exact check: ``check(model, quantise(model, 8), "exact")``, a candidate as large as
  the model (the median of ``--repeats`` after a warm-up);
* the search: ``refine(model, 0.99, data=...)`` with the given passes (default: the
  library's default passes), timed ``--searches`` times (the median is kept; default once), with the
  number of models it evaluated and how many of those it checked (the rest were scored in closed form,
  from spectra).

It prints, per width, both times, their ratio (search / one exact check: the search's time in
*exact-check equivalents*), the time per evaluated model in exact checks, the bits before and
after, and how the search's time grows relative to the smallest width. ``--data digits``
scores candidates on the held-out digits instead of exactly. Not part of the tests; run by hand:

    .venv/bin/python benchmarks/bench_refine.py [--widths 64,256,1024,4096] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compinterp.complexity import quantise
from compinterp.faithfulness import check
from compinterp.model import Model
from compinterp.refinement.search import refine
from compinterp.syntax import Bilinear, Space
from compinterp.tasks import digits


def train(hidden: int, epochs: int, device: torch.device) -> Model:
    """A bilinear MLP of ``hidden`` units trained on the digits (minibatches of 128, Adam, lr 1e-2)."""
    x, y = (t.to(device) for t in digits.load("train"))
    model = Model(Bilinear("mlp", Space("pixels", 64), Space("digits", 10), hidden=hidden), seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order).to(device)
        for start in range(0, len(x), 128):
            rows = perm[start:start + 128]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(hidden: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train one width, then time one exact check and one search on it."""
    model = train(hidden, args.epochs, device)
    x, y = (t.to(device) for t in digits.load("test"))
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    candidate = quantise(model, 8)
    check(model, candidate, "exact")
    times = []
    for _ in range(args.repeats):
        sync(device)
        start = time.perf_counter()
        check(model, candidate, "exact")
        sync(device)
        times.append(time.perf_counter() - start)
    exact = statistics.median(times)
    data: Any = "exact" if args.data == "exact" else (x, y)
    passes = None if args.passes is None else args.passes.split(",")
    searches = []
    for _ in range(args.searches):
        sync(device)
        start = time.perf_counter()
        result = refine(model, args.min_faithfulness, data=data, passes=passes, budget=args.budget, progress=False,
                        device=device)
        sync(device)
        searches.append(time.perf_counter() - start)
    search = statistics.median(searches)
    return {"hidden": hidden, "accuracy": acc, "exact_check_s": exact, "search_s": search, "searches_s": searches,
            "search_over_exact": search / exact, "evaluated": result.evaluated, "checked": result.checks,
            "exact_checks_per_model": search / exact / result.evaluated,
            "original_bits": result.original_bits, "refined_bits": result.refined_bits, "ratio": result.ratio,
            "faithfulness": result.faithfulness, "history": [str(r) for r in result.history]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,256,1024,4096", help="hidden widths, one model each")
    parser.add_argument("--data", choices=("exact", "digits"), default="exact",
                        help="score candidates exactly (default) or on the held-out digits")
    parser.add_argument("--passes", default=None, help="comma-separated pass names (default: the default passes)")
    parser.add_argument("--min-faithfulness", type=float, default=0.99)
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timed exact checks per width (the median is kept)")
    parser.add_argument("--searches", type=int, default=1, help="timed searches per width (the median is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the whole run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="OUT", help="also write every number to OUT")
    args = parser.parse_args()
    if args.repeats < 1 or args.searches < 1:
        parser.error("--repeats and --searches must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = [measure(int(w), args, device) for w in args.widths.split(",")]
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, data {args.data}, "
          f"passes {args.passes or 'default'}, bar {args.min_faithfulness}")
    print(f"{'hidden':>6}  {'acc':>6}  {'exact check':>11}  {'search':>9}  {'check equiv.':>12}  {'models':>6}  "
          f"{'checked':>7}  {'checks/model':>12}  {'bits before':>11}  {'after':>9}  {'ratio':>6}  {'growth':>6}")
    for row in rows:
        print(f"{row['hidden']:>6}  {row['accuracy']:>6.3f}  {row['exact_check_s'] * 1e3:>9.1f}ms  "
              f"{row['search_s']:>8.2f}s  {row['search_over_exact']:>12.0f}  {row['evaluated']:>6}  "
              f"{row['checked']:>7}  "
              f"{row['exact_checks_per_model']:>12.2f}  {row['original_bits']:>11,.0f}  {row['refined_bits']:>9,.0f}  "
              f"{row['ratio']:>5.1f}x  {row['search_s'] / rows[0]['search_s']:>5.1f}x")
    for row in rows:
        print(f"hidden {row['hidden']}: {' >> '.join(row['history'])}")
    if args.json:
        info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "args": vars(args), "rows": rows}
        Path(args.json).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
