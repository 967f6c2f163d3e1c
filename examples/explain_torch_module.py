"""Explain an ordinary torch module: import it, state hypotheses about its layers, find where they fail.

Run it with ``.venv/bin/python examples/explain_torch_module.py --out runs/torch_module``.

1. Write a network in plain torch (a ReLU layer, a residual bilinear layer, a layer norm,
   a linear head) and train it on sklearn's digits, as one would any module.
2. Import it with ``ci.from_torch``: torch.fx traces it and each recognised pattern becomes
   a box of our vocabulary; the imported diagram computes what the module computes.
3. State an explanation with two hypotheses: "the bilinear layer needs only its strongest
   hidden units" and "the ReLU barely matters here: it acts as the identity". Each is a box
   image of an :class:`~compinterp.Interpretation`.
4. Check it. The per-box table, worst box first, says which hypothesis is wrong; drop that
   one, check again, and the explanation is faithful.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

import compinterp as ci
from compinterp.tasks import digits


class Net(nn.Module):
    """A small digits classifier, written the way torch code usually is."""

    def __init__(self, width: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.left, self.right = nn.Linear(width, hidden, bias=False), nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = h + self.down(self.left(h) * self.right(h))
        return self.head(self.norm(h))


def strongest_units(model: ci.Model, box: str, keep: int) -> tuple[ci.Diagram, dict[str, torch.Tensor]]:
    """A smaller bilinear box keeping the ``keep`` hidden units of ``box`` with the largest
    ``|D_h| |L_h| |R_h|``, and its parameters."""
    p = {role: value.detach() for role, value in model.box_params(box).items()}
    top = (p["D"].norm(dim=0) * p["L"].norm(dim=1) * p["R"].norm(dim=1)).topk(keep).indices
    space = model.boxes[box].dom
    small = ci.Bilinear(f"{box}_top{keep}", space, model.boxes[box].cod, hidden=keep)
    return small, {"L": p["L"][top], "R": p["R"][top], "D": p["D"][:, top]}


def main(out: Path, *, epochs: int = 150, keep: int = 16, seed: int = 0) -> dict:
    """Train, import, explain and check; write ``torch_module.json`` and return its numbers."""
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    x, y = digits.load("train")
    x_test, y_test = digits.load("test")

    # 1. Plain torch: a module and a training loop.
    net = Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(-1) == y_test).float().mean().item()

    # 2. Import: torch.fx traces the module; Linear, ReLU, the bilinear product with its residual,
    #    and LayerNorm are recognised as boxes. The model is the module's diagram with its weights.
    model = ci.from_torch(net, x_test[:2])
    model.draw(out / "imported.svg")
    with torch.no_grad():
        gap = (model(x_test) - net(x_test)).abs().max().item()
    boxes = [(box.name, box.kind) for _, box in model.diagram.walk()]
    print("imported boxes:", ", ".join(f"{name} ({kind})" for name, kind in boxes))

    # 3. Two hypotheses, each the image of one box: the bilinear layer keeps only its strongest
    #    units; the ReLU goes to the identity function (on the same wire). Every other box, and
    #    every wire, stands for itself.
    small, params = strongest_units(model, "bilinear", keep)
    resid = model.boxes["relu"].dom
    no_relu = ci.Elementwise("identity", resid, name="no_relu")
    both = ci.Interpretation(model, boxes={"bilinear": small, "relu": no_relu}, params={small.name: params})

    # 4. Check on the held-out digits. The output is the head's logits (a Linear box), so say so.
    first = ci.check(model, both, (x_test, y_test), logits=True, progress=False)
    print(first)
    print(f"worst box: {first.worst_box}: that hypothesis is the one to drop")

    # Drop the failed hypothesis (the worst box stands for itself again) and check the rest.
    rest = ci.Interpretation(model, boxes={"bilinear": small}, params={small.name: params})
    second = ci.check(model, rest, (x_test, y_test), logits=True, progress=False)
    print(second)

    numbers = {"held_out_accuracy": accuracy, "import_max_abs_diff": gap, "boxes": boxes,
               "first": {"faithfulness": first.end_to_end.faithfulness, "top1": first.end_to_end.top1,
                         "worst_box": first.worst_box,
                         "boxes": {row.box: row.metrics.faithfulness for row in first.boxes}},
               "second": {"faithfulness": second.end_to_end.faithfulness, "top1": second.end_to_end.top1,
                          "worst_box": second.worst_box,
                          "boxes": {row.box: row.metrics.faithfulness for row in second.boxes}}}
    (out / "torch_module.json").write_text(json.dumps(numbers, indent=2))
    return numbers


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/torch_module"))
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--keep", type=int, default=16, help="hidden units the bilinear hypothesis keeps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(main(args.out, epochs=args.epochs, keep=args.keep, seed=args.seed), indent=2))
