"""sklearn's 8x8 handwritten digits (1797 images, shipped inside scikit-learn), with a fixed split.

>>> x, y = load("test")
>>> tuple(x.shape), tuple(y.shape), float(x.max()) <= 1.0
((359, 64), (359,), True)
>>> print(task().build().dom, "->", task().build().cod)
pixels:64 -> logits:10
"""

from __future__ import annotations

from functools import partial

import torch

from compinterp.errors import InputError
from compinterp.models import bilinear_mlp, chi_net
from compinterp.syntax import Space
from compinterp.tasks.task import Recipe, Task

PIXELS, CLASSES = 64, 10
"""Input and output dimensions."""

SIDE = 8
"""Images are ``SIDE x SIDE`` pixels, row by row."""


def load(split: str = "train", seed: int = 0, held_out: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float rows in [0, 1] (pixels / 16) and integer labels, for ``split`` in
    ``train``/``test``; the test split is a ``held_out`` fraction chosen by a seeded permutation."""
    if split not in ("train", "test"):
        raise InputError(f"digits split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(len(x) * held_out)
    rows = order[:cut] if split == "test" else order[cut:]
    return x[rows], y[rows]


def task(width: int = 64, hidden: int = 64, depth: int = 3) -> Task:
    """Classify the digits: ``mlp`` (a bilinear MLP, the default: pixels -> bilinear ``mlp`` ->
    unembed -> logits, so its eigenvectors are images) or ``chi`` (embed, a residual bilinear stack
    of ``depth`` layers, unembed)."""
    pixels, logits = Space("pixels", PIXELS), Space("logits", CLASSES)
    return Task(
        "digits", "sklearn's 8x8 handwritten digits, 10 classes, a fixed 20% held out",
        {"mlp": (partial(bilinear_mlp, pixels, logits, width=width, hidden=hidden, embed=False),
                 Recipe(epochs=40, lr=1e-2, weight_decay=0.1, batch_size=128)),
         "chi": (partial(chi_net, pixels, logits, width=width, hidden=hidden, depth=depth),
                 Recipe(epochs=60, lr=3e-3, weight_decay=1e-2, batch_size=128))},
        lambda split, model: load(split), "cross_entropy", {"width": width, "hidden": hidden, "depth": depth})
