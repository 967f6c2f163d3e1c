"""Quickstart: a model as a string diagram, end to end.

Run it with ``.venv/bin/python examples/quickstart.py --out runs/quickstart``.

1. Declare a bilinear classifier for sklearn's 8x8 digits as a typed string diagram.
2. Turn it into a torch module (the semantic functor) and train it on the digits.
3. Save it, load it back, and draw its diagram.
4. Import a hand-written torch module of the same shape with ``from_torch`` and
   check that the imported diagram computes what the module computes.
5. State an explanation (the layer needs only its strongest hidden units) and measure
   how faithful it is, per box and end to end, on data and exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import compinterp as ci
from compinterp.tasks import digits


PIXELS, RESID, LABELS = ci.Space("pixels", 64), ci.Space("resid", 64), ci.Space("digits", 10)


def declare(hidden: int) -> ci.Diagram:
    """pixels:64 -> embed -> resid:64 -> residual bilinear layer -> unembed -> digits:10."""
    return ci.chain(
        ci.Linear("embed", PIXELS, RESID),
        ci.residual(ci.Bilinear("mlp", RESID, RESID, hidden=hidden)),
        ci.Unembed("unembed", RESID, LABELS),
    )


def strongest_units(model: ci.Model, keep: int) -> ci.Interpretation:
    """Explain the bilinear layer by its ``keep`` strongest hidden units (|D_h| |L_h| |R_h|)."""
    p = {role: value.detach() for role, value in model.box_params("mlp").items()}
    top = (p["D"].norm(dim=0) * p["L"].norm(dim=1) * p["R"].norm(dim=1)).topk(keep).indices
    small = ci.Bilinear(f"mlp_top{keep}", RESID, RESID, hidden=keep)
    return ci.Interpretation(model, boxes={"mlp": small},
                             params={small.name: {"L": p["L"][top], "R": p["R"][top], "D": p["D"][:, top]}})


class HandWritten(nn.Module):
    """The same network written as plain torch, to show ``from_torch`` recognises it."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Linear(64, 64, bias=False)
        self.left, self.right = nn.Linear(64, hidden, bias=False), nn.Linear(64, hidden, bias=False)
        self.down = nn.Linear(hidden, 64, bias=False)
        self.unembed = nn.Linear(64, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.down(self.left(h) * self.right(h))
        return self.unembed(h)


def main(out: Path, *, epochs: int = 300, hidden: int = 64, seed: int = 0, device: str = "cpu") -> dict:
    """Run the walk-through, write files under ``out`` and return its numbers."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    # sklearn's 8x8 digits: pixels in [0, 1], a fixed 20% held out.
    x, y = (t.to(device) for t in digits.load("train", seed=seed))
    x_test, y_test = (t.to(device) for t in digits.load("test", seed=seed))

    # 1-2. The diagram is the syntax; Model pairs it with parameters and runs it as torch.
    model = ci.Model(declare(hidden), seed=seed).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()

    # 3. Files: a directory with the diagram as JSON and the weights as safetensors.
    model.save(out / "model")
    loaded = ci.load(out / "model").to(device)
    with torch.no_grad():
        same = torch.equal(loaded(x_test), model(x_test))
    model.draw(out / "model.svg")

    # 4. Import a plain torch module: the bilinear product and the residual are recognised.
    net = HandWritten(hidden).to(device)
    imported = ci.from_torch(net, x_test[:2])
    with torch.no_grad():
        gap = (imported(x_test) - net(x_test)).abs().max().item()
    kinds = sorted({box.kind for box in imported.boxes.values()})

    # 5. An explanation: "the bilinear layer only needs its 16 strongest hidden units".
    #    Box mlp maps to a smaller bilinear box; every other box and wire stands for itself.
    #    The checker measures how far each square is from commuting, on the held-out digits
    #    and exactly, from the weights alone, for Gaussian inputs.
    explanation = strongest_units(model, keep=16)
    on_digits = ci.check(model, explanation, (x_test, y_test), progress=False)
    exactly = ci.check(model, explanation, "exact")
    print(on_digits)
    print(exactly)

    result = {"held_out_accuracy": accuracy, "final_loss": loss.item(), "reload_identical": same,
              "import_max_abs_diff": gap, "imported_box_kinds": kinds, "parameters": model.num_params(),
              "top16_faithfulness_digits": on_digits.end_to_end.faithfulness,
              "top16_top1_agreement_digits": on_digits.end_to_end.top1,
              "top16_worst_box": on_digits.worst_box,
              "top16_faithfulness_exact_gaussian": exactly.end_to_end.faithfulness,
              "files": sorted(p.name for p in out.iterdir())}
    (out / "quickstart.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args()
    numbers = main(args.out, epochs=args.epochs, seed=args.seed, device=args.device)
    print(json.dumps(numbers, indent=2))
    print(f"held-out accuracy {numbers['held_out_accuracy']:.3f}; model, diagram and numbers in {args.out}/")
