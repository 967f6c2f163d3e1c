"""Byte-level language modelling on the running interpreter's own standard library, and the induction diagnostic.

The corpus is the ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` (real code and English
docstrings, present wherever Python is), skipping ``site-packages``, ``dist-packages``, ``test``,
``tests``, ``idle_test`` and ``__pycache__`` directories, in sorted order of their relative paths
(``/``-separated), each file's bytes followed by a newline. A file is held out when the first byte
of the sha256 of its relative path is below 26 (about 10% of the files); the training split reads
the other files. Each split is read only up to the bytes asked for and sliced into consecutive
windows of ``context`` bytes, each labelled with the next byte. Another Python version has a
slightly different standard library, hence a slightly different corpus: every run records the
corpus's size and sha256 (:func:`describe`).

Copying rarely pays within 128 bytes of code, so a small model trained on plain windows forms no
induction head. The task's ``repeat`` and ``random`` options make it pay (:func:`repeat`): fixed
fractions of the training windows become periodic, their second half a copy of their first (a real
passage repeated, as copied code is, or random printable bytes repeated).

The induction diagnostic (:func:`repeated`) is a random sequence of ``L`` distinct bytes followed
by the same sequence again: a model that copies from context predicts the second copy, never the
first. The bytes are drawn from :data:`PRINTABLE`, the bytes the corpus is made of: a byte the
model never saw has an untrained embedding, and a diagnostic drawn from all 256 would measure that.

>>> train = corpus("train", 4096)
>>> len(train), train == corpus("train", 4096), held_out("os.py") != held_out("ast.py") or True
(4096, True, True)
>>> tokens, positions, labels = windows(train, 128)
>>> tuple(tokens.shape), bool((tokens[0, 1:] == labels[0, :-1]).all())
((31, 128), True)
>>> tokens, positions, labels = repeated(2, 5, seed=0)
>>> bool((tokens[:, :5] == tokens[:, 5:]).all()), tuple(labels.shape), int(tokens.min()) >= 32
(True, (2, 10), True)
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import sysconfig
from collections.abc import Sequence
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from compinterp.errors import InputError
from compinterp.models import transformer
from compinterp.syntax import Space
from compinterp.tasks.task import Recipe, Task

VOCAB = 256
"""Bytes are the tokens."""

CONTEXT = 128
"""Window length of the default model."""

SKIP = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
"""Directories of the standard library that are not read."""

HELD_OUT_BELOW = 26
"""A file is held out when the first byte of ``sha256(relative path)`` is below this (about 10%)."""

TRAIN_BYTES, TEST_BYTES = 6_000_000, 131_072
"""How much of each split the default task reads."""

PRINTABLE = tuple(range(32, 127))
"""The diagnostic's bytes: printable ASCII. With the newline they are the training split's bytes but
for a few dozen occurrences (of 6,000,000) of bytes >= 128."""

REPEAT, RANDOM = 0.5, 0.0
"""Fractions of the default task's training windows whose second half repeats the first: text, and
random printable bytes (:func:`repeat`)."""


def stdlib() -> Path:
    """The running interpreter's standard-library directory."""
    return Path(sysconfig.get_paths()["stdlib"])


def held_out(path: str) -> bool:
    """Whether the file at relative path ``path`` belongs to the held-out split.

    >>> held_out("os.py"), held_out("json/decoder.py")
    (False, False)
    """
    return hashlib.sha256(path.encode()).digest()[0] < HELD_OUT_BELOW


@lru_cache(maxsize=4)
def files(root: str | None = None) -> tuple[str, ...]:
    """The corpus's files under ``root`` (default: :func:`stdlib`), as sorted relative ``/``-paths."""
    base = Path(root) if root is not None else stdlib()
    if not base.is_dir():
        raise InputError(f"the Python standard library directory {base} does not exist: the text corpus needs it")
    found = []
    for folder, dirs, names in os.walk(base):
        dirs[:] = [d for d in dirs if d not in SKIP]
        rel = Path(folder).relative_to(base)
        found += [(rel / n).as_posix() for n in names if n.endswith(".py")]
    if not found:
        raise InputError(f"the Python standard library directory {base} holds no .py files: the text corpus needs them")
    return tuple(sorted(found))


@lru_cache(maxsize=8)
def corpus(split: str, size: int, root: str | None = None) -> bytes:
    """The first ``size`` bytes of split ``train`` or ``test``: its files in order, each followed by a newline."""
    if split not in ("train", "test"):
        raise InputError(f"text split must be 'train' or 'test', got {split!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"text corpus size must be a positive number of bytes, got {size!r}")
    base = Path(root) if root is not None else stdlib()
    parts, total = [], 0
    for path in files(root):
        if held_out(path) != (split == "test"):
            continue
        parts.append((base / path).read_bytes() + b"\n")
        total += len(parts[-1])
        if total >= size:
            return b"".join(parts)[:size]
    raise InputError(f"the {split} split of the standard library at {base} has {total:,} bytes, fewer than the "
                     f"{size:,} asked for")


def describe(split: str, size: int, root: str | None = None) -> dict[str, Any]:
    """What a run read: the split's bytes, their sha256, and the interpreter they came from."""
    data = corpus(split, size, root)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "python": ".".join(map(str, sys.version_info[:3])), "stdlib": str(root or stdlib())}


def windows(data: bytes, context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``data`` as consecutive windows of ``context`` bytes: ``(tokens, positions, labels)``, each
    ``(n, context)``, labels the next byte (the last partial window is dropped)."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n = (len(ids) - 1) // context
    if n < 1:
        raise InputError(f"{len(data)} bytes make no window of {context} bytes and a next byte")
    tokens = ids[:n * context].view(n, context)
    labels = ids[1:n * context + 1].view(n, context)
    return tokens, torch.arange(context).expand(n, context).contiguous(), labels


def repeat(tokens: torch.Tensor, labels: torch.Tensor, fraction: float, *,
           random: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``(tokens, labels)`` of length ``T`` with a ``fraction + random`` of them, evenly spread
    (window ``i`` when ``floor((i + 1) f) > floor(i f)``, so no shuffle can line up with them), made
    periodic with period ``h = T // 2``: the window's bytes ``s_0 .. s_T`` (tokens and last label)
    become ``s_(j mod h)``, so its second half copies its first. A share ``random / (fraction + random)``
    of those, evenly spread among them the same way, first get random :data:`PRINTABLE` bytes (seed 0)
    in place of their text.

    >>> t = torch.arange(8).view(2, 4); t, l = repeat(t, t + 1, 0.5)
    >>> t.tolist(), l.tolist()
    ([[0, 1, 2, 3], [4, 5, 4, 5]], [[1, 2, 3, 4], [5, 4, 5, 4]])
    """
    if not (0 <= fraction and 0 <= random and fraction + random <= 1):
        raise InputError(f"the fractions of repeated windows must be non-negative with a sum of at most 1, "
                         f"got {fraction!r} of text and {random!r} of random bytes")
    n, size = tokens.shape
    if size < 2:
        raise InputError(f"a window of {size} byte has no second half to repeat the first in")
    rows = _spread(n, fraction + random).nonzero().flatten()
    rows_random = rows[_spread(len(rows), random / (fraction + random) if random else 0.0)]
    sequence = torch.cat([tokens, labels[:, -1:]], 1)
    symbols = torch.as_tensor(PRINTABLE)
    generator = torch.Generator().manual_seed(0)
    sequence[rows_random] = symbols[torch.randint(len(symbols), (len(rows_random), size + 1), generator=generator)]
    sequence[rows] = sequence[rows][:, torch.arange(size + 1) % (size // 2)]
    return sequence[:, :-1].contiguous(), sequence[:, 1:].contiguous()


def _spread(n: int, fraction: float) -> torch.Tensor:
    """Which of ``n`` items a ``fraction`` evenly spread takes: ``i`` when ``floor((i + 1) f) > floor(i f)``."""
    index = torch.arange(n, dtype=torch.float64)
    return ((index + 1) * fraction).floor() > (index * fraction).floor()


def repeated(n: int, length: int, *, seed: int = 0,
             alphabet: Sequence[int] = PRINTABLE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` random sequences of ``length`` distinct tokens of ``alphabet``, each repeated twice: ``(tokens,
    positions, labels)`` of shape ``(n, 2 length)``, labels the next token (the last one wraps to the first)."""
    if not 1 <= length <= len(alphabet):
        raise InputError(f"repeated sequences need 1 <= length <= {len(alphabet)} (the alphabet's size) "
                         f"distinct tokens, got {length}")
    generator, symbols = torch.Generator().manual_seed(seed), torch.as_tensor(alphabet)
    first = torch.stack([symbols[torch.randperm(len(symbols), generator=generator)[:length]] for _ in range(n)])
    tokens = torch.cat([first, first], 1)
    return tokens, torch.arange(2 * length).expand(n, 2 * length).contiguous(), tokens.roll(-1, 1)


def alphabet(model: Any) -> Sequence[int]:
    """The tokens the diagnostic draws for ``model``: :data:`PRINTABLE` for a byte model, else all of its
    vocabulary."""
    vocab = model.dom.dims[0]
    return PRINTABLE if vocab == VOCAB else range(vocab)


def for_model(model: Any, data: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """``(tokens, positions, labels)`` as ``model`` reads them: without the positions when its only
    input wire is the tokens (an imported model embeds positions itself)."""
    return data if len(model.dom) == 2 else (data[0], *data[2:])


def bits_per_byte(model: Any, data: tuple[torch.Tensor, ...], *, batch_size: int = 64) -> torch.Tensor:
    """Cross-entropy in bits of ``model`` on ``(tokens, positions, labels)``, per position ``(T,)``,
    averaged over the windows."""
    *inputs, labels = for_model(model, data)
    device = next(model.parameters()).device
    total = torch.zeros(labels.shape[1], dtype=torch.float64)
    with torch.inference_mode():
        for first in range(0, len(labels), batch_size):
            rows = slice(first, first + batch_size)
            logits = model(*(x[rows].to(device) for x in inputs))
            loss = F.cross_entropy(logits.transpose(1, 2), labels[rows].to(device), reduction="none")
            total += loss.sum(0).double().cpu()
    return total / len(labels) / math.log(2)


def induction(model: Any, *, n: int = 64, length: int | None = None, seed: int = 1) -> dict[str, float]:
    """The induction score on :func:`repeated` sequences filling the model's context: the loss (bits)
    on the first copy and on the second, and ``score = 1 - second / first`` (1: the second copy is
    copied perfectly; 0: no better than the first). The first position of each copy is not scored."""
    length = length or context(model) // 2
    per_position = bits_per_byte(model, repeated(n, length, seed=seed, alphabet=alphabet(model)))
    first, second = per_position[:length - 1].mean().item(), per_position[length:2 * length - 1].mean().item()
    return {"loss_first": first, "loss_second": second, "score": 1.0 - second / first, "length": length}


def context(model: Any) -> int:
    """The longest sequence ``model`` reads: its position wire's dimension (ours), or the rows of its
    position embedding (an imported model's ``PosEmbed``), else :data:`CONTEXT`."""
    if len(model.dom) == 2:
        return model.dom.dims[1]
    positions = [b.data["positions"] for b in model.boxes.values() if b.kind == "PosEmbed"]
    return positions[0] if positions else CONTEXT


def measure(model: Any, *, context: int, test_bytes: int) -> dict[str, Any]:
    """What ``train.json`` adds for the text task: held-out bits per byte and the induction score."""
    test = windows(corpus("test", test_bytes), context)
    return {"bits_per_byte": bits_per_byte(model, test).mean().item(), "induction": induction(model)}


def load(split: str, *, context: int = CONTEXT, train_bytes: int = TRAIN_BYTES, test_bytes: int = TEST_BYTES,
         repeat_fraction: float = 0.0, random: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``train`` or ``test`` as windows: ``(tokens, positions, labels)``; ``repeat_fraction`` of
    the training windows repeated, ``random`` more repeating random bytes (:func:`repeat`; the held-out
    split is never changed)."""
    tokens, positions, labels = windows(corpus(split, train_bytes if split == "train" else test_bytes), context)
    if split == "train" and (repeat_fraction or random):
        tokens, labels = repeat(tokens, labels, repeat_fraction, random=random)
    return tokens, positions, labels


def task(context: int = CONTEXT, width: int = 128, heads: int = 4, layers: int = 2, hidden: int = 512,
         train_bytes: int = TRAIN_BYTES, test_bytes: int = TEST_BYTES, epochs: int = 1,
         repeat: float = REPEAT, random: float = RANDOM) -> Task:
    """Next-byte prediction on the standard library: ``transformer`` (bilinear MLPs, RMS norms), with
    fractions ``repeat`` and ``random`` of the training windows repeated text and repeated random bytes
    (:func:`repeat`)."""
    def data(split: str, model: str) -> tuple[torch.Tensor, ...]:
        return load(split, context=context, train_bytes=train_bytes, test_bytes=test_bytes, repeat_fraction=repeat,
                    random=random)

    options = {"context": context, "width": width, "heads": heads, "layers": layers, "hidden": hidden,
               "repeat": repeat, "random": random,
               "corpus": {"train": describe("train", train_bytes), "test": describe("test", test_bytes),
                          "held_out": f"sha256(relative path)[0] < {HELD_OUT_BELOW}"}}
    return Task(
        "text", "next byte of the Python standard library's source, a fixed 10% of the files held out",
        {"transformer": (partial(transformer, VOCAB, context, Space("logits", VOCAB), width=width, heads=heads,
                                 layers=layers, hidden=hidden),
                         Recipe(epochs=epochs, lr=3e-3, weight_decay=0.01, batch_size=16, betas=(0.9, 0.98)))},
        data, "cross_entropy", options, partial(measure, context=context, test_bytes=test_bytes))
