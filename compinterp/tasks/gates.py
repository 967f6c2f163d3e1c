"""Boolean gates: noisy ``±1`` bits in, several AND/OR/XOR gates of pairs of them out.

A bilinear layer with biases computes any gate of two bits exactly: on ``x, y`` in ``±1``,
``XOR = (1 - x y) / 2`` and ``AND = (1 + x + y + x y) / 4`` are quadratics.

>>> x, y = load("test", n=4)
>>> tuple(x.shape), tuple(y.shape), sorted(set(y.flatten().tolist()))
((4, 6), (4, 6), [0.0, 1.0])
>>> bits = torch.tensor([[0, 1, 1, 1, 1, 0]])
>>> gate_values(bits).tolist()   # and(0,1) or(2,3) xor(4,5) xor(0,3) and(2,5) or(1,4)
[[0.0, 1.0, 1.0, 1.0, 0.0, 1.0]]
"""

from __future__ import annotations

from functools import partial

import torch

from compinterp.errors import InputError
from compinterp.models import bilinear_mlp, chi_net
from compinterp.syntax import Space
from compinterp.tasks.task import Recipe, Task

BITS = 6
"""Input bits."""

GATES: tuple[tuple[str, int, int], ...] = (
    ("and", 0, 1), ("or", 2, 3), ("xor", 4, 5), ("xor", 0, 3), ("and", 2, 5), ("or", 1, 4))
"""The outputs: each a gate of two input bits."""

_OPS = {"and": torch.logical_and, "or": torch.logical_or, "xor": torch.logical_xor}


def gate_values(bits: torch.Tensor) -> torch.Tensor:
    """The gates of ``bits`` (``(n, BITS)`` in ``{0, 1}``) as floats in ``{0, 1}``, ``(n, len(GATES))``."""
    b = bits.bool()
    return torch.stack([_OPS[op](b[:, i], b[:, j]) for op, i, j in GATES], 1).float()


def load(split: str = "train", *, n: int | None = None, noise: float = 0.2,
         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples (default 4096 to train, 1024 to test): bits drawn uniformly, read as ``±1``
    plus Gaussian noise of std ``noise``, and the gates of the clean bits. The splits use
    different streams of the generator seeded by ``seed``, so they never share a sample."""
    if split not in ("train", "test"):
        raise InputError(f"gates split must be 'train' or 'test', got {split!r}")
    n = (4096 if split == "train" else 1024) if n is None else n
    generator = torch.Generator().manual_seed(2 * seed + (split == "test"))
    bits = torch.randint(0, 2, (n, BITS), generator=generator)
    x = (2 * bits - 1).float() + noise * torch.randn(n, BITS, generator=generator)
    return x, gate_values(bits)


def task(width: int = 16, hidden: int = 16, depth: int = 2, noise: float = 0.2) -> Task:
    """The gates task: ``mlp`` (a bilinear MLP with biases, the default) or ``chi`` (a residual
    bilinear stack), one logit per gate, trained with binary cross-entropy."""
    bits, gates = Space("bits", BITS), Space("gates", len(GATES))
    return Task(
        "gates", f"{len(GATES)} boolean gates (and/or/xor) of pairs of {BITS} noisy ±1 bits",
        {"mlp": (partial(bilinear_mlp, bits, gates, width=width, hidden=hidden, bias=True),
                 Recipe(epochs=60, lr=1e-2, weight_decay=1e-3, batch_size=256)),
         "chi": (partial(chi_net, bits, gates, width=width, hidden=hidden, depth=depth, bias=True),
                 Recipe(epochs=60, lr=1e-2, weight_decay=1e-3, batch_size=256))},
        lambda split, model: load(split, noise=noise), "binary",
        {"width": width, "hidden": hidden, "depth": depth, "noise": noise})
