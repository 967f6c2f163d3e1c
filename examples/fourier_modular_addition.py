"""Fourier features for modular addition: a hypothesis about a trained network, declared and checked.

Run it with ``.venv/bin/python examples/fourier_modular_addition.py --out runs/fourier``.

A network trained on ``(a + b) mod p`` from a fraction of all pairs gets the held-out
pairs right; the well-known explanation (the "clock") is that it works with waves:

1. the embeddings write ``cos(w a), sin(w a)`` (and the same for ``b``) for a few key
   frequencies ``w = 2 pi f / p``;
2. the bilinear layer multiplies them into ``cos(w (a + b))`` and ``sin(w (a + b))``
   by the product formulas ``cos(x + y) = cos x cos y - sin x sin y`` and
   ``sin(x + y) = sin x cos y + cos x sin y``;
3. the unembedding reads ``logit_c = sum_w alpha_w cos(w (a + b - c))``, largest at ``c = a + b``.

Here that hypothesis becomes an :class:`~compinterp.Interpretation` of the trained model:
each box goes to a box of the explanation (steps 1-3, with hand-written weights) and each
wire to a map from the model's activations into the explanation's terms (fitted by least
squares). The checker then says how far each square is from commuting, box by box and
end to end. The key frequencies are read off the trained embeddings (a DFT), not assumed.

What it finds: the explanation alone computes ``(a + b) mod p`` for every pair and agrees
with the model's top answer almost everywhere, while the per-box table points at the
embeddings as the least faithful part: the model does not keep ``a``'s and ``b``'s waves
in separate subspaces, as the hypothesis says, but in overlapping ones. The same
hypothesis with the wrong frequencies fails the check completely.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

import compinterp as ci
from compinterp.tasks import modular


def key_frequencies(model: ci.Model, most: int = 12) -> list[int]:
    """The frequencies ``f`` (1 .. p/2) where the embeddings' DFT has its energy: sort the norms of
    ``DFT(E)[f]`` (both embeddings), and cut at the largest drop between neighbours among the top ``most``."""
    E = torch.cat([model.box_params(name)["W"].detach() for name in ("embed_a", "embed_b")], dim=1)
    norms = torch.fft.rfft(E, dim=0).abs().norm(dim=1)[1:]         # f = 1 .. p // 2 (f = 0 is the mean)
    ranked, order = norms.sort(descending=True)
    drops = ranked[:most - 1] / ranked[1:most]
    return sorted((order[:int(drops.argmax()) + 1] + 1).tolist())


def waves(p: int, freqs: list[int], t: torch.Tensor) -> torch.Tensor:
    """``[cos(w t), sin(w t)]`` for each ``w = 2 pi f / p``: shape ``(len(t), 2 K)``."""
    w = 2 * math.pi * torch.tensor(freqs, dtype=torch.float64) / p
    angle = t.double()[:, None] * w
    return torch.cat([angle.cos(), angle.sin()], dim=1)


def clock(model: ci.Model, p: int, freqs: list[int]) -> ci.Interpretation:
    """The clock hypothesis with frequencies ``freqs`` as an interpretation of ``model``."""
    K = len(freqs)
    A, B = ci.Space("a", p), ci.Space("b", p)
    feats, sums, logits = ci.Space("waves", 4 * K), ci.Space("sum_waves", 2 * K), ci.Space("logits", p)
    residues = torch.arange(p)
    wave = waves(p, freqs, residues)
    zeros = torch.zeros_like(wave)

    # Step 1: a's waves in the first 2K features, b's in the last 2K.
    embed_a, embed_b = torch.cat([wave, zeros], 1), torch.cat([zeros, wave], 1)

    # Step 2: the product formulas as a bilinear box: hidden units cos a cos b, sin a sin b,
    # sin a cos b, cos a sin b for each frequency; D adds them into cos(a + b) and sin(a + b).
    pick = torch.eye(4 * K, dtype=torch.float64)
    cos_a, sin_a, cos_b, sin_b = (pick[i * K:(i + 1) * K] for i in range(4))
    L = torch.cat([cos_a, sin_a, sin_a, cos_a])
    R = torch.cat([cos_b, sin_b, cos_b, sin_b])
    one, nil = torch.eye(K, dtype=torch.float64), torch.zeros(K, K, dtype=torch.float64)
    D = torch.cat([torch.cat([one, -one, nil, nil], 1), torch.cat([nil, nil, one, one], 1)])

    # The wire maps, fitted by least squares: resid -> the waves of a and b (from the two embedding
    # tables), out -> the waves of a + b (from the model's own activations on every pair).
    E_a, E_b = (model.box_params(name)["W"].detach().double() for name in ("embed_a", "embed_b"))
    to_waves = torch.linalg.lstsq(torch.cat([E_a, E_b]), torch.cat([embed_a, embed_b])).solution.T
    a, b = modular.pairs(p)
    with torch.no_grad():
        mlp = model.box_params("mlp")
        resid = (E_a[a] + E_b[b]).float()
        out = torch.nn.functional.linear(resid, mlp["L"]) * torch.nn.functional.linear(resid, mlp["R"])
        out = torch.nn.functional.linear(out, mlp["D"]).double()
        centred = model(a, b).double()
    centred = centred - centred.mean(1, keepdim=True)
    to_sums = torch.linalg.lstsq(out, waves(p, freqs, a + b)).solution.T

    # Step 3: logit_c = sum_w alpha_w cos(w (a + b - c)); alpha fitted to the model's centred logits.
    w = 2 * math.pi * torch.tensor(freqs, dtype=torch.float64) / p
    c = residues.double()
    per_freq = torch.cos(w * ((a + b).double()[:, None, None] - c[None, :, None]))     # pairs x c x K
    alpha = torch.linalg.lstsq(per_freq.reshape(-1, K), centred.reshape(-1, 1)).solution.flatten()
    readout = torch.cat([torch.cos(c[:, None] * w) * alpha, torch.sin(c[:, None] * w) * alpha], 1)

    centre = torch.eye(p) - 1.0 / p        # logits count up to a constant: compare them centred
    f32 = {"dtype": torch.float32}
    return ci.Interpretation(
        model,
        boxes={"embed_a": ci.Embed("waves_a", A, feats), "embed_b": ci.Embed("waves_b", B, feats),
               "mlp": ci.Bilinear("product_formulas", feats, sums, hidden=4 * K),
               "unembed": ci.Unembed("read_cos", sums, logits)},
        wires={"resid": (feats, ci.maps.linear(to_waves.to(**f32))), "out": (sums, ci.maps.linear(to_sums.to(**f32))),
               "logits": ci.maps.linear(centre)},
        params={"waves_a": {"W": embed_a.to(**f32)}, "waves_b": {"W": embed_b.to(**f32)},
                "product_formulas": {"L": L.to(**f32), "R": R.to(**f32), "D": D.to(**f32)},
                "read_cos": {"W": readout.to(**f32)}})


def main(out: Path, *, p: int = modular.P, epochs: int = 1000, seed: int = 0, device: str = "cpu") -> dict:
    """Train, find the frequencies, declare and check the hypothesis; write ``fourier.json``; return its numbers."""
    out.mkdir(parents=True, exist_ok=True)

    # 1. The network: embeddings of a and b, summed; one bilinear layer; the unembedding.
    task = modular.task(p=p)
    run = ci.train(task, seed=seed, epochs=epochs, device=device)
    print(run)
    model = run.model.cpu()
    run.save(out / "model")

    # 2. The key frequencies, from the embeddings' DFT.
    freqs = key_frequencies(model)
    print(f"key frequencies: {freqs}")

    # 3-4. The hypothesis as an interpretation, checked on every pair (a, b), per box and end to end.
    a, b = modular.pairs(p)
    labels = (a + b) % p
    explanation = clock(model, p, freqs)
    report = ci.check(model, explanation, (a, b, labels), batch_size=4096, progress=False)
    print(report)
    with torch.no_grad():
        alone = (explanation.explanation(a, b).argmax(-1) == labels).float().mean().item()
    print(f"the explanation alone computes (a + b) mod {p} correctly for {alone:.2%} of the pairs")

    # The product formulas box is exact: check it against torch's own cos and sin of a + b.
    with torch.no_grad():
        e = {name: explanation.explanation.box_params(name) for name in ("waves_a", "waves_b", "product_formulas")}
        feats = e["waves_a"]["W"][a] + e["waves_b"]["W"][b]
        q = e["product_formulas"]
        sums = (feats @ q["L"].T) * (feats @ q["R"].T) @ q["D"].T
    formula_error = (sums.double() - waves(p, freqs, a + b)).abs().max().item()

    # The worst squares are the embeddings': the hypothesis keeps a's and b's waves apart, but the
    # model writes them into overlapping planes of the residual stream. Measure the overlap: the mean
    # squared cosine of the principal angles between the two embeddings' wave subspaces (1: the same).
    spans = [torch.linalg.qr(torch.linalg.lstsq(waves(p, freqs, torch.arange(p)),
                                                model.box_params(name)["W"].detach().double()).solution.T).Q
             for name in ("embed_a", "embed_b")]
    overlap = torch.linalg.svdvals(spans[0].T @ spans[1]).square().mean().item()
    print(f"overlap of the a and b wave subspaces in the residual stream: {overlap:.2f}")

    # A control: the same hypothesis with the wrong frequencies (each shifted by one) should fail the check.
    wrong = [f % (p // 2) + 1 for f in freqs]
    control = ci.check(model, clock(model, p, wrong), (a, b, labels), batch_size=4096, progress=False)
    print(f"control with frequencies {wrong}: faithfulness {control.end_to_end.faithfulness:.4f}")

    numbers = {"p": p, "epochs": epochs, "held_out_accuracy": run.test_accuracy, "frequencies": freqs,
               "faithfulness": report.end_to_end.faithfulness, "top1_agreement": report.end_to_end.top1,
               "loss_recovered": report.end_to_end.loss_recovered,
               "boxes": {row.box: row.metrics.faithfulness for row in report.boxes}, "worst_box": report.worst_box,
               "explanation_accuracy": alone, "product_formula_max_error": formula_error, "wave_overlap": overlap,
               "control_frequencies": wrong, "control_faithfulness": control.end_to_end.faithfulness,
               "control_top1_agreement": control.end_to_end.top1}
    (out / "fourier.json").write_text(json.dumps(numbers, indent=2))
    explanation.explanation.draw(out / "explanation.svg")
    return numbers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fourier"))
    parser.add_argument("--p", type=int, default=modular.P, help="the modulus (default: 113)")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device to train on, e.g. cpu or cuda")
    args = parser.parse_args()
    numbers = main(args.out, p=args.p, epochs=args.epochs, seed=args.seed, device=args.device)
    print(json.dumps(numbers, indent=2))
