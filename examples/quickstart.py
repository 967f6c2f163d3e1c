"""Quickstart: a model as a string diagram, end to end.

Run it with ``.venv/bin/python examples/quickstart.py --out runs/quickstart``.

1. Declare a bilinear classifier for sklearn's 8x8 digits as a typed string diagram.
2. Turn it into a torch module (the semantic functor) and train it on the digits.
3. Save it, load it back, and draw its diagram.
4. Import a hand-written torch module of the same shape with ``from_torch`` and
   check that the imported diagram computes what the module computes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import compinterp as ci


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn's digits as (train x, train y, test x, test y): pixels scaled to [0, 1], 20% held out."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[: len(x) // 5], order[len(x) // 5:]
    return x[train], y[train], x[test], y[test]


def declare(hidden: int) -> ci.Diagram:
    """pixels:64 -> embed -> resid:64 -> residual bilinear layer -> unembed -> digits:10."""
    pixels, resid, labels = ci.Space("pixels", 64), ci.Space("resid", 64), ci.Space("digits", 10)
    return ci.chain(
        ci.Linear("embed", pixels, resid),
        ci.residual(ci.Bilinear("mlp", resid, resid, hidden=hidden)),
        ci.Unembed("unembed", resid, labels),
    )


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
    x, y, x_test, y_test = (t.to(device) for t in digits(seed))

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

    result = {"held_out_accuracy": accuracy, "final_loss": loss.item(), "reload_identical": same,
              "import_max_abs_diff": gap, "imported_box_kinds": kinds, "parameters": model.num_params(),
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
