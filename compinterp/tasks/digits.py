"""sklearn's 8x8 handwritten digits (1797 images, shipped inside scikit-learn), with a fixed split.

>>> x, y = load("test")
>>> tuple(x.shape), tuple(y.shape), float(x.max()) <= 1.0
((359, 64), (359,), True)
"""

from __future__ import annotations

import torch

from compinterp.errors import InputError

PIXELS, CLASSES = 64, 10
"""Input and output dimensions."""


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
