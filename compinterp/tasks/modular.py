"""Modular addition: every pair ``(a, b)`` of residues mod ``p`` (``p = 113``), labelled ``(a + b) mod p``.

A fixed fraction of the ``p * p`` pairs trains; the rest is held out, so a model that
gets the held-out pairs right has found the rule rather than memorised the table.

>>> a, b, y = load("train", p=7, train_fraction=0.5)
>>> len(a), bool(((a + b) % 7 == y).all())
(24, True)
>>> tokens, positions, labels = load("test", p=7, train_fraction=0.5, sequence=True)
>>> tokens[0].tolist()[2], positions[0].tolist(), labels[0].tolist()[:2]
(7, [0, 1, 2], [-100, -100])
"""

from __future__ import annotations

from functools import partial

import torch

from compinterp.errors import InputError
from compinterp.models import bilinear_mlp, transformer
from compinterp.syntax import Space
from compinterp.tasks.task import Recipe, Task

P = 113
"""The modulus of the real task."""

IGNORE = -100
"""Label of positions that carry no target (``cross_entropy``'s ``ignore_index``)."""


def pairs(p: int = P) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair ``(a, b)``, ``a`` major: ``a = [0, 0, ..., p-1]``, ``b = [0, 1, ..., p-1, 0, ...]``."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return a.flatten(), b.flatten()


def load(split: str = "train", *, p: int = P, train_fraction: float = 0.4, seed: int = 0,
         sequence: bool = False) -> tuple[torch.Tensor, ...]:
    """The pairs of ``split`` (a seeded permutation puts ``train_fraction`` of them in ``train``):
    ``(a, b, labels)`` as token ids, or with ``sequence=True`` the sequence ``a b =`` (``=`` is
    token ``p``) as ``(tokens, positions, labels)``, each ``(n, 3)``, labelled at the last position."""
    if split not in ("train", "test"):
        raise InputError(f"modular split must be 'train' or 'test', got {split!r}")
    if not 0 < train_fraction < 1:
        raise InputError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}")
    a, b = pairs(p)
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    cut = int(p * p * train_fraction)
    rows = order[:cut] if split == "train" else order[cut:]
    a, b = a[rows], b[rows]
    y = (a + b) % p
    if not sequence:
        return a, b, y
    tokens = torch.stack([a, b, torch.full_like(a, p)], 1)
    labels = torch.full_like(tokens, IGNORE)
    labels[:, -1] = y
    return tokens, torch.arange(3).expand(len(a), 3).contiguous(), labels


def task(p: int = P, train_fraction: float = 0.4, width: int = 64, hidden: int = 64) -> Task:
    """Modular addition: ``mlp`` (the default: embeddings of ``a`` and ``b`` summed, a bilinear
    layer, the unembed) or ``transformer`` (one layer, bilinear MLP, on ``a b =``)."""
    a, b, logits = Space("a", p), Space("b", p), Space("logits", p)

    def data(split: str, model: str) -> tuple[torch.Tensor, ...]:
        return load(split, p=p, train_fraction=train_fraction, sequence=model == "transformer")

    return Task(
        "modular", f"(a + b) mod {p} for every pair, {train_fraction:.0%} of the pairs to train",
        {"mlp": (partial(bilinear_mlp, a @ b, logits, width=width, hidden=hidden, tokens=True),
                 Recipe(epochs=1000, lr=1e-2, weight_decay=2.0, betas=(0.9, 0.98))),
         "transformer": (partial(transformer, p + 1, 3, logits, width=width, heads=4, layers=1, hidden=hidden),
                         Recipe(epochs=1000, lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98)))},
        data, "cross_entropy", {"p": p, "train_fraction": train_fraction, "width": width, "hidden": hidden})
