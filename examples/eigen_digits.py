"""Eigen-refinement of a digits classifier, and reading its eigenvectors as images.

Run it with ``.venv/bin/python examples/eigen_digits.py --out runs/eigen_digits``.

The digits model is ``pixels:64 -> mlp (Bilinear) -> out:64 -> unembed -> logits:10``, so each
logit is a quadratic form of the pixels: ``logit_c(x) = x^T Q_c x`` with
``Q_c = sym(einsum("c h, h i, h j -> c i j", U D, L, R))``. Its eigendecomposition
``Q_c = sum_m lambda_cm v_cm v_cm^T`` reads the model as "digit c is the sum of squares of a
few pixel patterns ``v_cm``, weighted by ``lambda_cm``".

1. Train the model (or load one saved by ``compinterp train digits``).
2. Rewrite it with the ``eigen`` pass: fold the unembedding into the bilinear box, then keep
   the top-k eigenvectors of every digit's form. The result is a model of its own, a
   refinement, so the checker can say how faithful it is, on data and exactly.
3. Sweep k: faithfulness against description length in bits.
4. Let the refinement search pick, with the eigen pass alone, the shortest eigen-model that
   keeps 99% faithfulness (and quantises its numbers).
5. Read the eigenvectors: draw the top ones of each digit as 8x8 images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import compinterp as ci
from compinterp.refinement.passes import Eigen, eigen
from compinterp.tasks import digits


def main(out: Path, *, model_dir: Path | None = None, ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32),
         show: int = 4, budget: int = 100, seed: int = 0) -> dict:
    """Refine, sweep, search and draw; write ``eigen_digits.json`` and return its numbers."""
    out.mkdir(parents=True, exist_ok=True)
    x, y = digits.load("train")
    x_test, y_test = digits.load("test")

    # 1. The model: trained here, or a saved one.
    if model_dir is None:
        run = ci.train("digits", seed=seed)
        print(run)
        model = run.model
        run.save(out / "model")
    else:
        model = ci.load(model_dir)

    # 2-3. The eigen pass with the unembedding folded in: one box straight from pixels to logits whose
    #      hidden units are eigenvectors. Faithfulness (on held-out digits and exactly, for Gaussian
    #      pixels) and description length for each k.
    sweep = []
    for k in ks:
        refined = eigen(model, "mlp", k=k, mode="per_output", fold=("unembed",))
        on_digits = ci.check(model, refined, (x_test, y_test), progress=False)
        exactly = ci.check(model, refined, "exact")
        sweep.append({"k": k, "bits": ci.description_length(refined).model,
                      "faithfulness": on_digits.end_to_end.faithfulness, "top1": on_digits.end_to_end.top1,
                      "exact_faithfulness": exactly.end_to_end.faithfulness})
        print(f"k={k:>2}: {sweep[-1]['bits']:>9,.0f} bits, faithfulness {sweep[-1]['faithfulness']:.4f} on held-out "
              f"digits, {sweep[-1]['exact_faithfulness']:.4f} exact; top-1 agreement {sweep[-1]['top1']:.3f}")
    original_bits = ci.description_length(model).model

    # 4. The search, with the eigen pass alone: it bisects k, then quantises.
    result = ci.refine(model, 0.99, data=(x, y), passes=[Eigen(mode="per_output", fold=("unembed",))],
                       budget=budget)
    print(result)
    result.model.save(out / "refined")
    result.frontier.plot(out / "frontier.png", title="eigen-refinement of the digits model")

    # 5. Read the eigenvectors: the top `show` of each digit, as 8x8 images with their eigenvalues.
    #    ci.spectrum gives each digit's eigenvalues and eigenvectors; the eigen-model of the top `show`
    #    is the same truncation the eigen pass builds.
    spectrum = ci.spectrum(model, "mlp", fold=("unembed",))
    values, _ = spectrum.top(show)
    spectrum.draw(out / "eigenvectors.png", k=show, names=[str(c) for c in range(10)])
    spectrum.truncate(spectrum.select(show)).save(out / f"eigen_k{show}")
    for c in range(10):
        print(f"digit {c}: eigenvalues " + ", ".join(f"{v:+.2f}" for v in values[c].tolist()))

    numbers = {"sweep": sweep, "original_bits": original_bits, "search": {
        "history": [str(r) for r in result.history], "bits": result.refined_bits,
        "faithfulness": result.faithfulness, "ratio": result.ratio},
        "eigenvalues": values.tolist(), "shown": show}
    (out / "eigen_digits.json").write_text(json.dumps(numbers, indent=2))
    return numbers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/eigen_digits"))
    parser.add_argument("--model", type=Path, help="a digits model saved by 'compinterp train digits' "
                                                   "(default: train one here)")
    parser.add_argument("--show", type=int, default=4, help="eigenvectors drawn per digit")
    parser.add_argument("--budget", type=int, default=100, help="models the search may evaluate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.out, model_dir=args.model, show=args.show, budget=args.budget, seed=args.seed)
