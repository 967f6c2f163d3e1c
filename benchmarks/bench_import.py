"""An imported HuggingFace GPT-2 against HF's own forward: time and peak memory, side by side.

Builds a GPT-2-small-shaped ``GPT2LMHeadModel`` with random weights (12 layers, d = 768, 12 heads,
vocabulary 50257, 1024 positions), imports it with ``compinterp.from_hf``, checks the logits agree,
then times both forwards on the same token ids (batch 4, sequence 256) under ``torch.no_grad()``:
``--warmup`` untimed calls of each, then ``--repeats`` timed calls of each, interleaved and
alternating which goes first. Peak memory is the highest level of the bytes torch allocates
during one forward above what is allocated before it, read from the torch profiler's memory
events (one profiled call of each, apart from the timed ones).

    .venv/bin/python benchmarks/bench_import.py [--threads 1] [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

import compinterp as ci

TIME_TARGET, MEMORY_TARGET = 1.05, 1.10
"""Imported / HF ratios the import should stay under (time, peak memory)."""


def peak_bytes(forward: Callable[[], object]) -> int:
    """The peak of the bytes torch allocates during ``forward()``, above the level before it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        forward()
    changes = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                     for e in prof.events())
    level = peak = 0
    for _, change in changes:
        level += change
        peak = max(peak, level)
    return peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each forward (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each forward first (default 1)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    hf = transformers.GPT2LMHeadModel(config).eval()
    ours = ci.from_hf(hf)
    ids = torch.randint(config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))

    def run_hf() -> torch.Tensor:
        return hf(input_ids=ids).logits

    def run_ours() -> torch.Tensor:
        return ours(ids)

    forwards = {"hf": run_hf, "compinterp": run_ours}
    times: dict[str, list[float]] = {name: [] for name in forwards}
    with torch.no_grad():
        diff = float((run_ours() - run_hf()).abs().max())
        for _ in range(args.warmup):
            for forward in forwards.values():
                forward()
        for k in range(args.repeats):
            for name in (list(forwards) if k % 2 == 0 else list(reversed(forwards))):
                start = time.perf_counter()
                forwards[name]()
                times[name].append(time.perf_counter() - start)
        peaks = {name: peak_bytes(forward) for name, forward in forwards.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    time_ratio, memory_ratio = median["compinterp"] / median["hf"], peaks["compinterp"] / peaks["hf"]
    print(f"GPT-2-small shape (12 layers, d 768, 12 heads), batch {args.batch}, seq {args.seq}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}, {args.threads} thread(s), "
          f"{args.repeats} interleaved repeats; max |logit diff| {diff:.1e}")
    print(f"{'':12} {'median s':>9} {'peak MB':>8}")
    for name in forwards:
        print(f"{name:12} {median[name]:>9.3f} {peaks[name] / 2**20:>8.1f}")
    print(f"{'ratio':12} {time_ratio:>9.3f} {memory_ratio:>8.3f}   (targets <= {TIME_TARGET}, <= {MEMORY_TARGET})")
    if args.json is not None:
        report = {"threads": args.threads, "batch": args.batch, "seq": args.seq, "repeats": args.repeats,
                  "torch": torch.__version__, "transformers": transformers.__version__, "max_logit_diff": diff,
                  "seconds": times, "median_seconds": median, "peak_bytes": peaks, "time_ratio": time_ratio,
                  "memory_ratio": memory_ratio}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
