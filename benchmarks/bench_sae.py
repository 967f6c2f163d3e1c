"""Quality and time per step of the same SAE on the same activations: ours (defaults) vs SAELens, for TopK,
BatchTopK and JumpReLU; then time per step of a wide TopK SAE vs SAELens and a hand-written loop.

Quality (``--quality-seeds``, default 12: one seed's FVU moves by about 10%, so 3 seeds decide a 5% difference by
luck): the digits task's trained model (``compinterp.train("digits")``), the output wire ``out:64`` of its
bilinear box ``mlp``; every trainer fits an SAE of width 32 (TopK and BatchTopK: k = 4; JumpReLU: L0 coefficient 1,
bandwidth 0.05, thresholds from 0.01) for 600 Adam steps
(lr 3e-3) on the same batches of 256 training activations, and is scored on the held-out digits'
activations: FVU (``sum ||x - x_hat||^2 / sum ||x - mean x||^2``), dead features (never firing on the
held-out activations), loss recovered (``(CE_mean - CE_sae) / (CE_mean - CE_model)``, the wire replaced by
the reconstruction, or by its mean, in the model; cross-entropy against the labels), L0 (active features
per held-out example) and milliseconds per training step (the training loop only). Arms:

* ours: :class:`~compinterp.refinement.dictionary.Dictionary` and
  :func:`~compinterp.refinement.dictionary.train` with their defaults (free decoder norms, aux-k loss,
  gradient clipping at 1, lr decay over the last tenth; ``docs/dictionary.md``); for TopK also the defaults
  before issue 14 (unit decoder columns renormalised every step, dead-feature resampling, no clipping,
  constant lr) as ``ours (old defaults)``;
* SAELens, when ``sae_lens`` imports: its ``TopKTrainingSAE``, ``BatchTopKTrainingSAE`` and
  ``JumpReLUTrainingSAE`` with their defaults, stepped as its ``SAETrainer`` steps them (dead-neuron mask
  from its default window of 1000 steps, gradient-norm clipping at 1, Adam at a constant lr), read back
  through the files SAELens saves (``save_inference_model``: a BatchTopK SAE is saved as the JumpReLU it runs
  as, its thresholds the running minimum activation); ours runs a trained BatchTopK the same way (one threshold,
  the running mean of the smallest value kept per batch).

The summary gives, per architecture, ours / SAELens for FVU and for ms per step, and ours - SAELens for
dead features (the issue's target: FVU ratio <= 1, dead difference <= 0, time ratio <= 1).

Time per step: activations are the sklearn digits (``compinterp.tasks.digits``) through the first box
(``embed``, seed-initialised) of a small bilinear network, collected once. Every trainer fits a TopK SAE
of the same width and ``k`` with Adam (same learning rate) on the same batches, in alternating rounds,
and the median of paired per-step ratios is printed: ours (defaults), SAELens's ``TopKTrainingSAE``
stepped as above, and a hand-written torch loop of our defaults' maths. The time per step of the whole
``SAE`` pass (streaming the activations from the model) is printed too.

``sae-lens`` is not a compinterp dependency: ``pip install sae-lens`` into an environment with compinterp
to include its arms.

    .venv/bin/python benchmarks/bench_sae.py --threads 1 [--device cpu] [--width 1024] [--k 32] [--batch 1024]
        [--steps 100] [--quality-seeds 12]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

import compinterp as ci
from compinterp.model import Model
from compinterp.refinement.dictionary import SAE, Dictionary, box_activations, load_saelens, train
from compinterp.syntax import Bilinear, Linear, Space, chain, residual
from compinterp.tasks import digits

WIDTH, K, STEPS, BATCH, LR, L0 = 32, 4, 600, 256, 3e-3, 1.0
"""The quality table's setting."""
OLD = {"decoder_norm": "unit", "aux_k": None}
OLD_TRAIN = {"clip": None, "decay": 0.0}
"""Our defaults before issue 14 (unit decoder columns, resampling, no clipping, constant lr)."""


def synced() -> float:
    """``time.perf_counter()`` after the pending CUDA work."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def fit_ours(batches: list[torch.Tensor], kind: str, seed: int, old: bool = False) -> tuple[Dictionary, float]:
    """Our trainer on ``batches`` (one step each), with its defaults (``old``: the defaults before issue 14);
    the dictionary and the seconds the training took."""
    d = batches[0].shape[1]
    options = OLD if old else {}
    sparsity = {"l0": L0} if kind == "jumprelu" else {"k": K}
    dictionary = Dictionary(kind, d, d, WIDTH, seed=seed, **sparsity, **options).to(batches[0].device)
    start = synced()
    train(dictionary, lambda: ((x, x) for x in batches), steps=len(batches), lr=LR, progress=False,
          **(OLD_TRAIN if old else {}))
    return dictionary, synced() - start


def saelens_sae(kind: str, d: int, width: int, k: int, device: torch.device):
    """SAELens's training SAE of ``kind`` with its defaults (``k``, or the L0 coefficient ``L0`` for JumpReLU)."""
    import sae_lens

    common = {"d_in": d, "d_sae": width, "dtype": "float32", "device": str(device)}
    if kind == "topk":
        return sae_lens.TopKTrainingSAE(sae_lens.TopKTrainingSAEConfig(k=k, **common))
    if kind == "batchtopk":
        return sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(k=k, **common))
    return sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(l0_coefficient=L0, **common))


def step_saelens(sae, batches: list[torch.Tensor], lr: float, window: int = 1000) -> None:
    """``SAETrainer._train_step`` on each batch: dead-neuron mask (idle for more than ``window`` steps), the
    training forward pass, backward, gradient-norm clipping at 1, Adam."""
    from sae_lens.saes.sae import TrainStepInput

    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    coefficients = {"l0": L0} if type(sae).__name__.startswith("JumpReLU") else {}
    since = torch.zeros(sae.cfg.d_sae, device=batches[0].device)
    for step, x in enumerate(batches):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients=coefficients,
                                                       dead_neuron_mask=(since > window).bool(),
                                                       n_training_steps=step, is_logging_step=False))
        with torch.no_grad():
            since += 1
            since[out.feature_acts.bool().any(0)] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()


def fit_saelens(batches: list[torch.Tensor], kind: str, seed: int) -> tuple[Dictionary, float]:
    """SAELens's SAE of ``kind`` stepped as its trainer steps it, read back as our dictionary through the files
    SAELens saves; the seconds of its training loop."""
    torch.manual_seed(seed)
    sae = saelens_sae(kind, batches[0].shape[1], WIDTH, K, batches[0].device)
    start = synced()
    step_saelens(sae, batches, LR)
    seconds = synced() - start
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return load_saelens(tmp), seconds


def quality(seeds: int, device: torch.device) -> None:
    """The quality table (mean over seeds) per architecture and arm, and the ratios to SAELens."""
    model = ci.train("digits", seed=0, progress=False).model.to(device)
    (x_train, _), (x_test, y_test) = digits.load("train"), digits.load("test")
    acts = torch.cat([y for _, y in box_activations(model, "mlp", x_train.to(device))])
    test = torch.cat([y for _, y in box_activations(model, "mlp", x_test.to(device))])
    y_test = y_test.to(device)
    unembed = model.box_params("unembed")
    head = lambda h: F.cross_entropy(F.linear(h, unembed["W"], unembed.get("b")), y_test).item()  # noqa: E731
    ce_model, ce_mean = head(test), head(test.mean(0).expand_as(test))
    with_saelens = importable("sae_lens")
    arms: dict[tuple[str, str], Callable[[list[torch.Tensor], int], tuple[Dictionary, float]]] = {}
    for kind in ("topk", "batchtopk", "jumprelu"):
        arms[kind, "ours"] = lambda b, s, kind=kind: fit_ours(b, kind, s)
        if kind == "topk":
            arms[kind, "ours (old defaults)"] = lambda b, s: fit_ours(b, "topk", s, old=True)
        if with_saelens:
            arms[kind, "SAELens"] = lambda b, s, kind=kind: fit_saelens(b, kind, s)
    rows: dict[tuple[str, str], list[tuple[float, ...]]] = {arm: [] for arm in arms}
    for fit in arms.values():                                   # one-time costs (imports, first kernels) first
        fit([acts[:BATCH].to(device)] * 5, 0)
    for seed in range(seeds):
        order = torch.Generator().manual_seed(seed)
        batches = [acts[torch.randperm(len(acts), generator=order)[:BATCH].to(device)] for _ in range(STEPS)]
        for arm, fit in arms.items():
            dictionary, seconds = fit(batches, seed)
            with torch.no_grad():
                recon, z = dictionary.to(device)(test)
            fvu = ((recon - test).square().sum() / (test - test.mean(0)).square().sum()).item()
            dead = int((z == 0).all(0).sum())
            recovered = (ce_mean - head(recon)) / (ce_mean - ce_model)
            l0 = (z != 0).float().sum(-1).mean().item()
            rows[arm].append((fvu, dead, recovered, l0, seconds / STEPS * 1e3))
    print(f"quality: digits model, wire out:64, width {WIDTH}, k {K} (JumpReLU: L0 coefficient {L0}), {STEPS} steps "
          f"of {BATCH}, lr {LR}, {seeds} seeds (mean; held-out activations)")
    print(f"{'architecture':12s}{'arm':22s}{'FVU':>9s}{'dead':>7s}{'loss rec.':>11s}{'L0':>7s}{'ms/step':>9s}")
    means = {arm: [statistics.mean(v[i] for v in values) for i in range(5)] for arm, values in rows.items()}
    for (kind, name), (fvu, dead, recovered, l0, ms) in means.items():
        print(f"{kind:12s}{name:22s}{fvu:9.4f}{dead:7.2f}{recovered:11.4f}{l0:7.2f}{ms:9.3f}")
    if with_saelens:
        print("summary, ours vs SAELens: FVU ratio (<= 1), dead features difference (<= 0), ms/step ratio (<= 1)")
        for kind in ("topk", "batchtopk", "jumprelu"):
            mine, theirs = means[kind, "ours"], means[kind, "SAELens"]
            print(f"{kind:12s}FVU {mine[0] / theirs[0]:.3f}  dead {mine[1] - theirs[1]:+.2f}  "
                  f"time {mine[4] / theirs[4]:.3f}  (L0 {mine[3]:.2f} vs {theirs[3]:.2f})")


def importable(name: str) -> bool:
    """Whether ``name`` imports (installed and its own imports work)."""
    try:
        importlib.import_module(name)
    except ImportError as error:
        print(f"{name} does not import ({error.__class__.__name__}: {error}); left out")
        return False
    return True


def hand_written(x_batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int) -> None:
    """A plain torch loop of our defaults' TopK maths over ``x_batches`` (no feature can be dead for the aux
    loss's 100 steps in a run this short): free decoder norms from 0.3, plain pre-activations for the first
    quarter of the steps and rescaled ones after, clipping at 1, lr decay over the last tenth."""
    d, steps = x_batches[0].shape[1], len(x_batches)
    g = torch.Generator().manual_seed(seed)
    dec = (F.normalize(torch.randn(d, width, generator=g), dim=0) * 0.3).to(x_batches[0].device).requires_grad_()
    enc = dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(width, device=dec.device, requires_grad=True)
    b_dec = x_batches[0].mean(0).clone().requires_grad_()
    params = [dec, b_dec, enc, b_enc]
    opt = torch.optim.Adam(params, lr=lr)
    tail = round(0.1 * steps)
    for step, x in enumerate(x_batches):
        opt.param_groups[0]["lr"] = lr * (min(1.0, (steps - step) / tail) if tail and step >= steps - tail else 1.0)
        norms = dec.norm(dim=0) if step >= round(0.25 * steps) else None
        pre = F.linear(x - b_dec, enc, b_enc)
        pre = (pre if norms is None else pre * norms).relu()
        top = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        loss = (F.linear(z, dec if norms is None else dec / norms, b_dec) - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()


def ours(x_batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int) -> None:
    """The dictionary passes' trainer, with its defaults, on the same batches."""
    d = x_batches[0].shape[1]
    train(Dictionary("topk", d, d, width, k, seed=seed).to(x_batches[0].device),
          lambda: ((x, x) for x in x_batches), steps=len(x_batches), lr=lr, progress=False)


def sae_lens(x_batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int) -> None:
    """SAELens's TopK SAE, one step per batch as ``SAETrainer._train_step`` takes it."""
    torch.manual_seed(seed)
    step_saelens(saelens_sae("topk", x_batches[0].shape[1], width, k, x_batches[0].device), x_batches, lr)


def timed(fn, *args) -> float:
    """Seconds ``fn(*args)`` takes, synchronising CUDA."""
    start = synced()
    fn(*args)
    return synced() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quality-seeds", type=int, default=12, help="seeds of the quality table (0: skip it)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.quality_seeds:
        quality(args.quality_seeds, device)
    x, _ = digits.load("train", 0)
    pixels, hidden = Space("pixels", 64), Space("hidden", 256)
    model = Model(chain(Linear("embed", pixels, hidden), residual(Bilinear("mlp", hidden, hidden, hidden=256)),
                        Linear("out", hidden, Space("logits", 10))), seed=0).to(device)
    rows = x.repeat((args.batch * args.steps) // len(x) + 1, 1)[:args.batch * args.steps].to(device)
    with torch.no_grad():
        batches = [F.linear(chunk, model.box_params("embed")["W"]) for chunk in rows.split(args.batch)]
    sae = SAE(rows, ["embed"], widths=[args.width], ks=[args.k], steps=args.steps, batch_size=args.batch,
              device=device, progress=False)
    arms = {"ours": ours, "hand-written": hand_written}
    if importable("sae_lens"):
        arms["SAELens"] = sae_lens
    for fn in arms.values():                                    # one-time costs first
        fn(batches[:2], args.width, args.k, 1e-3, 0)
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        rounds.append({name: timed(fn, batches, args.width, args.k, 1e-3, 0) for name, fn in arms.items()})
    whole = timed(sae.fit, model, sae.candidates(model)[0])
    print(f"time: device {device}, d {batches[0].shape[1]}, width {args.width}, k {args.k}, batch {args.batch}, "
          f"{args.steps} steps x {args.rounds} rounds" + ("" if "SAELens" in arms else "; SAELens not installed"))
    for name in arms:
        print(f"{name:13s}{statistics.median(r[name] for r in rounds) / args.steps * 1e3:9.3f} ms/step")
    for name in arms:
        if name != "ours":
            ratio = statistics.median(r["ours"] / r[name] for r in rounds)
            target = " (target <= 1.0)" if name == "SAELens" else ""
            print(f"ratio ours/{name} (median of paired rounds) {ratio:.3f}{target}")
    print(f"whole SAE pass, streaming from the model {whole / args.steps * 1e3:9.3f} ms/step")


if __name__ == "__main__":
    main()
