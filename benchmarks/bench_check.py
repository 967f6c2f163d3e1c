"""Cost of a full faithfulness check, in forward passes of the model over the same data.

A 2-layer bilinear model (embedding, two residual bilinear layers, unembedding)
is checked against several explanations; each check (every local square plus the
end-to-end square) is timed side by side with plain forward passes of the model
over the same batches, alternating, and the median of the paired ratios is
reported, with the ratio of the fastest runs. Times are the process's CPU time,
which other processes sharing the machine disturb less than wall-clock time
(``--threads 1`` gives the steadiest numbers).

An explanation that rewrites every box costs at least three passes (the model,
each image on the model's activations, the explanation's own run); identical
inputs are not recomputed, so an exact prefix of the explanation costs less.

    .venv/bin/python benchmarks/bench_check.py [--samples 8192] [--batch 1024] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from compinterp.faithfulness import check
from compinterp.interpretation import Interpretation, maps
from compinterp.model import Model
from compinterp.syntax import Bilinear, Linear, Space, Unembed, chain, residual


def build(pixels: int, d: int, hidden: int, classes: int) -> Model:
    x, resid, logits = Space("pixels", pixels), Space("resid", d), Space("logits", classes)
    return Model(chain(Linear("embed", x, resid), residual(Bilinear("mlp0", resid, resid, hidden=hidden)),
                       residual(Bilinear("mlp1", resid, resid, hidden=hidden)), Unembed("out", resid, logits)), seed=0)


def truncated(model: Model, keep: int) -> Interpretation:
    """Each bilinear layer replaced by its first ``keep`` hidden units; wires unchanged."""
    resid = model.boxes["mlp0"].dom
    boxes, params = {}, {}
    for name in ("mlp0", "mlp1"):
        p = model.box_params(name)
        boxes[name] = Bilinear(f"{name}_k", resid, resid, hidden=keep)
        params[f"{name}_k"] = {"L": p["L"][:keep], "R": p["R"][:keep], "D": p["D"][:, :keep]}
    return Interpretation(model, boxes=boxes, params=params)


def rotated(model: Model, seed: int = 0) -> Interpretation:
    """Every box rewritten in a random orthogonal basis ``q`` of the residual wire, ``sigma = q``."""
    resid, x, logits = model.boxes["mlp0"].dom, model.dom, model.cod
    d = resid.dim
    q = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))[0]
    p = {name: model.box_params(name) for name in ("embed", "mlp0", "mlp1", "out")}
    boxes = {"embed": Linear("embed_q", x, resid), "out": Unembed("out_q", resid, logits)}
    params = {"embed_q": {"W": q @ p["embed"]["W"]}, "out_q": {"W": p["out"]["W"] @ q.T}}
    for name in ("mlp0", "mlp1"):
        boxes[name] = Bilinear(f"{name}_q", resid, resid, hidden=p[name]["L"].shape[0])
        params[f"{name}_q"] = {"L": p[name]["L"] @ q.T, "R": p[name]["R"] @ q.T, "D": q @ p[name]["D"]}
    return Interpretation(model, boxes=boxes, wires={"resid": maps.linear(q)}, params=params)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds spent running ``fn``: this process's CPU time on the CPU, wall time (synchronised) on a GPU."""
    if device.type == "cpu":
        start = time.process_time()
        fn()
        return time.process_time() - start
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--pixels", type=int, default=784)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build(args.pixels, args.d, args.hidden, 10).to(device)
    data = torch.randn(args.samples, args.pixels, generator=torch.Generator().manual_seed(1)).to(device)

    def forward() -> None:
        with torch.inference_mode():
            for batch in data.split(args.batch):
                model(batch)

    explanations = {"identity": Interpretation(model), "truncated (half hidden)": truncated(model, args.hidden // 2),
                    "rotated basis (sigma = q)": rotated(model), "second model (refinement)": truncated(model, 64).explanation}
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; model: pixels:{args.pixels} -> "
          f"resid:{args.d}, 2 bilinear layers of {args.hidden} hidden units -> logits:10; "
          f"{args.samples} samples in batches of {args.batch}; median of {args.repeats}")
    forward()
    for name, explanation in explanations.items():
        check(model, explanation, data[:args.batch], batch_size=args.batch, progress=False)
        fwd, chk = [], []
        for _ in range(args.repeats):
            fwd.append(seconds(forward, device))
            chk.append(seconds(lambda: check(model, explanation, data, batch_size=args.batch, progress=False), device))
        ratios = [c / f for c, f in zip(chk, fwd)]
        print(f"{name:28s} forward {min(fwd):.3f} s CPU   check = {statistics.median(ratios):.2f} forward passes "
              f"(median of paired ratios; ratio of minima {min(chk) / min(fwd):.2f})")


if __name__ == "__main__":
    main()
