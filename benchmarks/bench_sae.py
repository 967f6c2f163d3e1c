"""Quality and time per step of the same TopK SAE on the same activations: ours (defaults, and with the training
options) vs SAELens, and time per step vs a hand-written loop.

Quality (``--quality-seeds``, default 3 seeds): the digits task's trained model (``compinterp.train("digits")``),
the output wire ``out:64`` of its bilinear box ``mlp``; every trainer fits a TopK SAE of width 32, k = 4 for
600 Adam steps (lr 3e-3) on the same batches of 256 training activations, and is scored on the held-out
digits' activations: FVU (``sum ||x - x_hat||^2 / sum ||x - mean x||^2``), dead features (never firing on
the held-out activations), loss recovered (``(CE_mean - CE_sae) / (CE_mean - CE_model)``, the wire replaced
by the reconstruction, or by its mean, in the model; cross-entropy against the labels), and milliseconds
per step. Arms: ours with the defaults; ours with ``aux_k = 32`` (dead-latent loss), ``normalise`` and
``decay = 0.2``; ours with ``clip = 1`` (gradient norm), ``b_dec = "zero"`` and ``aux_k = 32``; SAELens's
``TopKTrainingSAE`` stepped as its trainer steps it (dead-neuron mask from a window of 1000 steps,
gradient clipping at 1), when ``sae_lens`` imports.

Time per step: activations are the sklearn digits (``compinterp.tasks.digits``) through the first box
(``embed``, seed-initialised) of a small bilinear network, collected once. Every trainer
fits a TopK SAE of the same width and ``k`` with Adam (same learning rate) on the same
batches, in alternating rounds, and the median of paired per-step ratios is printed:

* ours: :func:`compinterp.refinement.dictionary.train` (``z = TopK_k(relu(E (x - b_dec) + b_enc))``,
  ``x_hat = D z + b_dec``, decoder columns renormalised after every step);
* SAELens, when ``sae_lens`` imports: its ``TopKTrainingSAE`` stepped as its ``SAETrainer`` steps it
  (``training_forward_pass`` with the dead-feature mask, backward, gradient-norm clipping, Adam);
  it is not a compinterp dependency: ``pip install sae-lens`` (it pulls transformer-lens and
  about 2 GB) into an environment with compinterp to include it;
* a hand-written torch loop of the same maths as ours, always.

The time per step of the whole ``SAE`` pass (streaming the activations from the model) is
printed too. The issue's target: ours within 1.2x of the fastest.

    .venv/bin/python benchmarks/bench_sae.py [--device cpu] [--width 1024] [--k 32] [--batch 1024] [--steps 100]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Iterator

import torch
from torch.nn import functional as F

import compinterp as ci
from compinterp.model import Model
from compinterp.refinement.dictionary import SAE, Dictionary, box_activations, load_saelens, train
from compinterp.syntax import Bilinear, Linear, Space, chain, residual
from compinterp.tasks import digits


def hand_written(x_batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int) -> None:
    """A plain torch TopK SAE loop over ``x_batches``, one Adam step per batch."""
    d = x_batches[0].shape[1]
    g = torch.Generator().manual_seed(seed)
    dec = F.normalize(torch.randn(d, width, generator=g), dim=0).to(x_batches[0].device).requires_grad_()
    enc = dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(width, device=dec.device, requires_grad=True)
    b_dec = x_batches[0].mean(0).clone().requires_grad_()
    opt = torch.optim.Adam([dec, b_dec, enc, b_enc], lr=lr)
    for x in x_batches:
        pre = F.linear(x - b_dec, enc, b_enc).relu()
        top = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        loss = (F.linear(z, dec, b_dec) - x).pow(2).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            dec /= dec.norm(dim=0).clamp_min(1e-12)


def ours(x_batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int) -> None:
    """The dictionary passes' trainer on the same batches."""
    def stream() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((x, x) for x in x_batches)
    train(Dictionary("topk", x_batches[0].shape[1], x_batches[0].shape[1], width, k, seed=seed), stream,
          steps=len(x_batches), lr=lr, progress=False)


def sae_lens(x_batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int) -> None:
    """SAELens' TopK SAE, one step per batch as ``SAETrainer._train_step`` takes it."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(seed)
    device = x_batches[0].device
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x_batches[0].shape[1], d_sae=width, k=k, dtype="float32",
                                                device=str(device)))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    dead = torch.zeros(width, dtype=torch.bool, device=device)
    for step, x in enumerate(x_batches):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                       n_training_steps=step, is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()


def fit_ours(batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int, **options) -> Dictionary:
    """Our trainer on ``batches`` (one step each); ``options``: the training options of ``Dictionary``/``train``."""
    d = batches[0].shape[1]
    schedule = {key: options.pop(key) for key in ("warmup", "decay", "clip", "b_dec") if key in options}
    dictionary = Dictionary("topk", d, d, width, k, seed=seed, **options)
    train(dictionary, lambda: ((x, x) for x in batches), steps=len(batches), lr=lr, progress=False, **schedule)
    return dictionary


def fit_sae_lens(batches: list[torch.Tensor], width: int, k: int, lr: float, seed: int) -> Dictionary:
    """SAELens's TopK SAE stepped as its trainer steps it, returned as our dictionary (through its files)."""
    import tempfile

    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=batches[0].shape[1], d_sae=width, k=k, dtype="float32"))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since = torch.zeros(width)
    for step, x in enumerate(batches):
        out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=since > 1000,
                                                       n_training_steps=step, is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        since = (since + 1) * (out.feature_acts.detach() == 0).all(0)
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        return load_saelens(tmp)


def quality(seeds: int, device: torch.device) -> None:
    """The quality table: FVU, dead features, loss recovered and ms per step, mean over seeds, per arm."""
    model = ci.train("digits", seed=0, progress=False).model.to(device)
    (x_train, _), (x_test, y_test) = digits.load("train"), digits.load("test")
    acts = torch.cat([y for _, y in box_activations(model, "mlp", x_train.to(device))])
    test = torch.cat([y for _, y in box_activations(model, "mlp", x_test.to(device))])
    y_test = y_test.to(device)
    arms = {"ours (defaults)": lambda b, s: fit_ours(b, 32, 4, 3e-3, s),
            "ours (aux_k, normalise, decay)": lambda b, s: fit_ours(b, 32, 4, 3e-3, s, aux_k=32, normalise=True,
                                                                    decay=0.2),
            "ours (clip 1, b_dec 0, aux_k)": lambda b, s: fit_ours(b, 32, 4, 3e-3, s, clip=1.0, b_dec="zero",
                                                                   aux_k=32)}
    if importable("sae_lens"):
        arms["SAELens TopK"] = lambda b, s: fit_sae_lens(b, 32, 4, 3e-3, s)
    mean_out = test.mean(0)
    head = lambda h: F.cross_entropy(model.box_params("unembed")["W"].new_tensor(0) + F.linear(  # noqa: E731
        h, model.box_params("unembed")["W"], model.box_params("unembed").get("b")), y_test).item()
    ce_model, ce_mean = head(test), head(mean_out.expand_as(test))
    rows: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in arms}
    for seed in range(seeds):
        order = torch.Generator().manual_seed(seed)
        batches = [acts[torch.randperm(len(acts), generator=order)[:256].to(device)] for _ in range(600)]
        for name, fit in arms.items():
            start = time.perf_counter()
            dictionary = fit(batches, seed)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                recon, z = dictionary.to(device)(test)
            fvu = ((recon - test).square().sum() / (test - test.mean(0)).square().sum()).item()
            dead = int((z == 0).all(0).sum())
            recovered = (ce_mean - head(recon)) / (ce_mean - ce_model)
            rows[name].append((fvu, dead, recovered, seconds / 600 * 1e3))
    print(f"quality: digits model, wire out:64, width 32, k 4, 600 steps of 256, lr 3e-3, {seeds} seeds "
          f"(mean; held-out activations)")
    print(f"{'arm':32s}{'FVU':>9s}{'dead':>7s}{'loss rec.':>11s}{'ms/step':>9s}")
    for name, values in rows.items():
        fvu, dead, recovered, ms = (statistics.mean(v[i] for v in values) for i in range(4))
        print(f"{name:32s}{fvu:9.4f}{dead:7.1f}{recovered:11.4f}{ms:9.3f}")


def importable(name: str) -> bool:
    """Whether ``name`` imports (installed and its own imports work)."""
    try:
        importlib.import_module(name)
    except ImportError as error:
        print(f"{name} does not import ({error.__class__.__name__}: {error}); left out")
        return False
    return True


def timed(fn, *args) -> float:
    """Seconds ``fn(*args)`` takes, synchronising CUDA."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quality-seeds", type=int, default=3, help="seeds of the quality table (0: skip it)")
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
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        rounds.append({name: timed(fn, batches, args.width, args.k, 1e-3, 0) for name, fn in arms.items()})
    whole = timed(sae.fit, model, sae.candidates(model)[0])
    print(f"device {device}, d {batches[0].shape[1]}, width {args.width}, k {args.k}, batch {args.batch}, "
          f"{args.steps} steps x {args.rounds} rounds" + ("" if "SAELens" in arms else "; SAELens not installed"))
    for name in arms:
        print(f"{name:13s}{statistics.median(r[name] for r in rounds) / args.steps * 1e3:9.3f} ms/step")
    for name in arms:
        if name != "ours":
            ratio = statistics.median(r["ours"] / r[name] for r in rounds)
            print(f"ratio ours/{name} (median of paired rounds) {ratio:.3f}")
    fastest = min(arms, key=lambda name: statistics.median(r[name] for r in rounds))
    ratio = statistics.median(r["ours"] / r[fastest] for r in rounds)
    print(f"ours vs the fastest ({fastest}): {ratio:.3f} (target <= 1.2)")
    print(f"whole SAE pass, streaming from the model {whole / args.steps * 1e3:9.3f} ms/step")

if __name__ == "__main__":
    main()
