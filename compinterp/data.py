"""Data sources: where the batches a check runs on come from, streamed and sharded by rank.

A source yields batches, each a tuple of tensors: one per input wire of the
model, optionally followed by labels. Under ``torch.distributed`` each rank
reads its own shard, so the ranks together see every sample exactly once.

>>> import torch
>>> source = tensors(torch.arange(10.0).unsqueeze(1))
>>> [b[0].flatten().tolist() for b in source.batches(4, (1,))]
[[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0], [8.0, 9.0]]
>>> [b[0].flatten().tolist() for b in source.batches(4, (1,), rank=1, world=2)]
[[5.0, 6.0, 7.0, 8.0], [9.0]]

Generated inputs are a function of the seed and the sample's index only, so any
batch size or number of ranks sees the same samples:

>>> g = gaussian(5, seed=1)
>>> whole = torch.cat([b[0] for b in g.batches(5, (3,))])
>>> torch.equal(whole, torch.cat([b[0] for b in g.batches(2, (3,))]))
True

Each input wire says what it takes (an :class:`Input`: vectors, token ids, positions, a
padding mask, images; and the sequence axis the model reads, if any). Generated data makes
what the wires take, and :func:`fit` refuses data that does not fit, naming the wire:

>>> tokens = Input("tokens:5", 5, "tokens", seq=3, box="Embed box 'embed'")
>>> [tuple(t.shape) for t in next(g.batches(2, [tokens, Input("positions:3", 3, "positions", seq=3)]))]
[(2, 3), (2, 3)]
>>> fit((torch.randn(2, 5),), [tokens], 0)
Traceback (most recent call last):
...
compinterp.errors.InputError: batch 0: wire tokens:5 takes token ids (it feeds Embed box 'embed'): give integers in [0, 5), not float32 numbers
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from compinterp.errors import FormatError, InputError

Batch = tuple[torch.Tensor, ...]

KINDS = ("vectors", "tokens", "positions", "mask", "images")
"""What an input wire can take: see :class:`Input`."""

DEFAULT_SEQ = 16
"""The sequence length generated for a model with a sequence axis whose context is not known."""


@dataclass(frozen=True)
class Input:
    """What one input wire ``name`` of dimension ``dim`` takes.

    ``kind`` is ``vectors`` (floats ending in ``dim``), ``tokens`` (integer ids in ``[0, dim)``: the
    wire feeds an ``Embed`` box), ``positions`` (the ids ``0, 1, ...`` along the sequence), ``mask``
    (a padding mask ``(..., T, 1)``, 1 for a token) or ``images`` (channels-first maps whose last
    axis is the wire: their other axes are not known from the wire); ``box`` names the box that
    reads the wire so (for messages). ``seq`` is the sequence length generated when the model
    reads sequences (it mixes or indexes positions), else ``None``; ``sequence`` names what makes
    it read them.
    """

    name: str
    dim: int
    kind: str = "vectors"
    seq: int | None = None
    box: str = ""
    sequence: str = ""

    @property
    def axes(self) -> int:
        """How many axes a batch for this wire has at least: samples, the sequence, the wire."""
        return 1 + (self.seq is not None) + (self.kind in ("vectors", "mask", "images"))

    def shape(self) -> str:
        """The shape a batch for this wire takes, in words: ``(samples, positions, 16)``."""
        parts = ["samples", *(["positions"] if self.seq is not None else []),
                 *([str(self.dim)] if self.kind in ("vectors", "mask", "images") else [])]
        if self.kind == "images":
            parts[1:1] = ["channels", "height"]
        return f"({', '.join(parts)})"


def as_inputs(inputs: Sequence[Input | int]) -> tuple[Input, ...]:
    """``inputs`` as :class:`Input` s, a bare dimension being a wire of vectors without a sequence axis.

    >>> as_inputs([3])
    (Input(name='input 0', dim=3, kind='vectors', seq=None, box='', sequence=''),)
    """
    return tuple(i if isinstance(i, Input) else Input(f"input {k}", int(i)) for k, i in enumerate(inputs))


def fit(batch: Sequence[Any], inputs: Sequence[Input | int], k: int) -> None:
    """Refuse batch ``k`` unless it holds one tensor per input wire that fits it (optionally then
    labels), naming the wire and what it takes."""
    inputs = as_inputs(inputs)
    n = len(inputs)
    if len(batch) not in (n, n + 1):
        names = " @ ".join(i.name for i in inputs)
        raise InputError(f"batch {k} of the data has {len(batch)} tensors; the model takes {n} input(s) ({names}), "
                         "optionally followed by labels")
    for x, wire in zip(batch, inputs):
        _fits(x, wire, k)


def _fits(x: Any, wire: Input, k: int) -> None:
    """Refuse ``x`` unless it fits ``wire``."""
    where = f"batch {k}: wire {wire.name}"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{where} must be given a torch.Tensor, got {type(x).__name__}")
    if x.dim() < wire.axes:
        seq = f" (the model reads sequences: {wire.sequence})" if wire.seq is not None and wire.sequence else ""
        one = " (one sample: add its axis with x.unsqueeze(0))" if x.dim() == wire.axes - 1 else ""
        raise InputError(f"{where} takes {wire.shape()}{seq}, but the data has shape {tuple(x.shape)}{one}")
    if wire.kind in ("tokens", "positions"):
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise InputError(f"{where} takes token ids (it feeds {wire.box}): give integers in [0, {wire.dim}), "
                             f"not {str(x.dtype).removeprefix('torch.')} numbers")
        if x.numel() and (x.min() < 0 or x.max() >= wire.dim):
            raise InputError(f"{where} takes token ids in [0, {wire.dim}), but the data holds ids from "
                             f"{x.min().item()} to {x.max().item()}")
        return
    if x.shape[-1] != wire.dim:
        raise InputError(f"{where} takes {wire.shape()}, but the data has shape {tuple(x.shape)}: "
                         f"its last axis must be {wire.dim}")
    if not x.is_floating_point() and wire.kind != "mask":
        raise InputError(f"{where} takes real vectors, not {str(x.dtype).removeprefix('torch.')} numbers (cast the "
                         "data with .float(); token ids go to a wire that feeds an Embed box)")
    if x.is_floating_point() and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise InputError(f"{where} contains NaN or infinite values")


class Source:
    """Base of the data sources: ``batches(batch_size, inputs, rank, world)`` streams one shard."""

    def batches(self, batch_size: int, inputs: Sequence[Input | int], rank: int = 0,
                world: int = 1) -> Iterator[Batch]:
        """The batches of shard ``rank`` of ``world``; ``inputs`` are the model's input wires
        (:class:`Input` s, or bare dimensions of vector wires)."""
        raise NotImplementedError

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int | None:
        """How many batches :meth:`batches` yields, when known (for progress bars)."""
        return None

    def split(self, holdout: float) -> tuple[Source, Source]:
        """The source cut in two disjoint parts, ``(search, test)``, ``test`` holding about the fraction
        ``holdout`` of the samples."""
        raise InputError(f"{self.describe() or 'this data'} cannot be split into search and held-out parts: "
                         "give the held-out data explicitly (test_data=, --test-data)")

    def describe(self) -> str:
        """Where the samples come from, in a few words, for reports (``N samples of ...``); empty when
        nothing is known."""
        return ""


class Tensors(Source):
    """Tensors held in memory, split along their first axis: inputs, then optionally labels."""

    def __init__(self, *data: torch.Tensor, origin: str = "") -> None:
        """``data``: the tensors, one per input wire then optionally labels; ``origin``: where they come from."""
        if not data:
            raise InputError("tensors() needs at least one tensor")
        for i, t in enumerate(data):
            if not isinstance(t, torch.Tensor):
                raise InputError(f"data tensor {i} is a {type(t).__name__}, not a torch.Tensor")
            if t.dim() == 0:
                raise InputError(f"data tensor {i} is a scalar: its first axis must index the samples")
        sizes = {t.shape[0] for t in data}
        if len(sizes) != 1:
            raise InputError(f"data tensors disagree on the number of samples (first axis): "
                             f"{', '.join(str(t.shape[0]) for t in data)}")
        self.data, self.n, self.origin = data, sizes.pop(), origin

    def _shard(self, rank: int, world: int) -> range:
        return range(rank * self.n // world, (rank + 1) * self.n // world)

    def batches(self, batch_size: int, inputs: Sequence[Input | int], rank: int = 0,
                world: int = 1) -> Iterator[Batch]:
        shard = self._shard(rank, world)
        for start in range(shard.start, shard.stop, _positive(batch_size)):
            stop = min(start + batch_size, shard.stop)
            yield tuple(t[start:stop] for t in self.data)

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int:
        return -(-len(self._shard(rank, world)) // _positive(batch_size))

    def split(self, holdout: float) -> tuple[Tensors, Tensors]:
        """The samples in a fixed random order (seed 0), the last ``round(holdout * n)`` held out.

        >>> search, test = tensors(torch.arange(10)).split(0.3)
        >>> search.n, test.n, sorted(torch.cat([search.data[0], test.data[0]]).tolist()) == list(range(10))
        (7, 3, True)
        """
        held = _held(holdout, self.n)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(0))
        keep, out = order[:self.n - held], order[self.n - held:]
        return (Tensors(*(t[keep] for t in self.data), origin=self.origin),
                Tensors(*(t[out] for t in self.data), origin=self.origin))

    def describe(self) -> str:
        return self.origin


class Loader(Source):
    """Any re-iterable of batches (a ``DataLoader``); ranks take every ``world``-th batch, unless
    the loader already shards with a ``DistributedSampler``. Its own batch size is kept."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.sharded = isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler)

    def batches(self, batch_size: int, inputs: Sequence[Input | int], rank: int = 0,
                world: int = 1) -> Iterator[Batch]:
        for i, batch in enumerate(self.loader):
            if self.sharded or i % world == rank:
                yield _as_batch(batch, i)

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int | None:
        try:
            n = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        return n if self.sharded else len(range(rank, n, world))

    def describe(self) -> str:
        return f"a {type(self.loader).__name__}"


class Gaussian(Source):
    """``n`` generated samples fitting the model's input wires: ``N(mean, std^2)`` numbers on vector
    wires, uniform token ids on token wires, ``0, 1, ...`` on position wires, ones on a padding
    mask; a sequence axis of length ``seq`` (default: the model's, see :class:`Input`) where the
    model reads sequences or ``seq`` is given. Wires of images are refused: their shape is not known.

    Sample ``i`` depends only on ``seed`` and ``start + i`` (drawn in fixed chunks, each from
    its own seed), not on the batch size or the number of ranks; ``start`` offsets the samples,
    so that two sources of one seed with disjoint ranges share none.
    """

    chunk_numbers = 1 << 16
    """About how many numbers one chunk of samples holds."""

    max_sample_numbers = 1 << 27
    """The most numbers one generated sample may hold (512 MiB of float32): a wire declared wider is refused
    before anything is allocated."""

    def __init__(self, n: int, *, seed: int = 0, mean: float = 0.0, std: float = 1.0,
                 seq: int | None = None, dtype: torch.dtype = torch.float32, start: int = 0) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"gaussian() needs a positive number of samples, got {n!r}")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0):
            raise InputError(f"gaussian(): seq must be a positive sequence length or None, got {seq!r}")
        if not std > 0:
            raise InputError(f"gaussian(): std must be positive, got {std!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InputError(f"gaussian(): start must be a non-negative sample index, got {start!r}")
        self.n, self.seed, self.mean, self.std, self.seq, self.dtype = n, seed, mean, std, seq, dtype
        self.start = start

    def batches(self, batch_size: int, inputs: Sequence[Input | int], rank: int = 0,
                world: int = 1) -> Iterator[Batch]:
        wires = as_inputs(inputs)
        for wire in wires:
            if wire.kind == "images":
                raise InputError(f"wire {wire.name} takes images (the model has {wire.box}): generated data cannot "
                                 f"guess their channels and height; give data of shape {wire.shape()} (a FILE.pt)")
        seq = self.seq or next((w.seq for w in wires if w.seq is not None), None)
        width = sum(w.dim if w.kind in ("vectors", "mask") else 1 for w in wires)
        if (seq or 1) * width > self.max_sample_numbers:
            sizes = ", ".join(f"{w.name}: {w.dim:,}" for w in wires if w.kind in ("vectors", "mask"))
            raise InputError(f"generated data: one sample of the model's input wires ({sizes}"
                             f"{f', {seq:,} positions' if seq else ''}) would hold {(seq or 1) * width:,} numbers, "
                             f"over the {self.max_sample_numbers:,} generated data may hold; give data from a file")
        rows = max(1, self.chunk_numbers // ((seq or 1) * max(1, width)))
        first = self.start + rank * self.n // world
        shard = range(first, self.start + (rank + 1) * self.n // world)
        cached: tuple[int, Batch] | None = None
        for start in range(shard.start, shard.stop, _positive(batch_size)):
            stop, parts = min(start + batch_size, shard.stop), []
            i = start
            while i < stop:
                c = i // rows
                if cached is None or cached[0] != c:
                    cached = (c, self._chunk(c, rows, seq, wires))
                end = min(stop, (c + 1) * rows)
                parts.append(tuple(t[i - c * rows:end - c * rows] for t in cached[1]))
                i = end
            yield tuple(torch.cat(ts) if len(ts) > 1 else ts[0] for ts in zip(*parts))

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int:
        size = (rank + 1) * self.n // world - rank * self.n // world
        return -(-size // _positive(batch_size))

    def split(self, holdout: float) -> tuple[Gaussian, Gaussian]:
        """The first samples for the search, the last ``round(holdout * n)`` held out: disjoint draws.

        >>> search, test = gaussian(10, seed=2).split(0.5)
        >>> (search.n, search.start), (test.n, test.start)
        ((5, 0), (5, 5))
        """
        held = _held(holdout, self.n)
        options = {"seed": self.seed, "mean": self.mean, "std": self.std, "seq": self.seq, "dtype": self.dtype}
        return (Gaussian(self.n - held, start=self.start, **options),
                Gaussian(held, start=self.start + self.n - held, **options))

    def describe(self) -> str:
        start = f" from sample {self.start:,} on" if self.start else ""
        return f"data generated with seed {self.seed}{start} (Gaussian vectors, uniform token ids)"

    def _chunk(self, c: int, rows: int, seq: int | None, wires: Sequence[Input]) -> Batch:
        """Chunk ``c``: ``rows`` samples of every input wire, from a seed made of ``(seed, c)``."""
        state = np.random.SeedSequence([self.seed, c]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        lead = (rows,) if seq is None else (rows, seq)
        out = []
        for wire in wires:
            if wire.kind == "tokens":
                out.append(torch.randint(wire.dim, lead, generator=generator))
            elif wire.kind == "positions":
                out.append(torch.arange(lead[-1]).expand(lead).contiguous())
            elif wire.kind == "mask":
                out.append(torch.ones((*lead, wire.dim), dtype=self.dtype))
            else:
                out.append(self.mean + self.std * torch.randn((*lead, wire.dim), generator=generator, dtype=self.dtype))
        return tuple(out)


def tensors(*data: torch.Tensor) -> Tensors:
    """A source over tensors in memory: one per input wire, then optionally labels."""
    return Tensors(*data)


def loader(batches: Iterable[Any]) -> Loader:
    """A source over a ``DataLoader`` (or any re-iterable of batches)."""
    return Loader(batches)


def gaussian(n: int, *, seed: int = 0, mean: float = 0.0, std: float = 1.0, seq: int | None = None,
             dtype: torch.dtype = torch.float32) -> Gaussian:
    """``n`` generated samples fitting the input wires: Gaussian vectors, uniform token ids (``seq``: a
    sequence axis of that length; default: the model's, when it reads sequences)."""
    return Gaussian(n, seed=seed, mean=mean, std=std, seq=seq, dtype=dtype)


def from_file(path: str | Path) -> Tensors:
    """Tensors saved with ``torch.save``: a tensor, or a tuple/list of tensors (inputs, then labels)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"no data file at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many kinds of errors on a bad file
        raise FormatError(f"{path} cannot be read as tensors: {type(err).__name__}: {err}") from None
    items = (obj,) if isinstance(obj, torch.Tensor) else tuple(obj) if isinstance(obj, (tuple, list)) else None
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise FormatError(f"{path} must hold a tensor or a tuple/list of tensors, found {type(obj).__name__}")
    return Tensors(*items, origin=str(path))


def from_spec(spec: str) -> Source:
    """A source from a command-line spec: ``gaussian:N`` (``gaussian:N:SEED``) or a ``.pt`` file.

    >>> from_spec("gaussian:100:3").seed
    3
    """
    if spec.startswith("gaussian:"):
        parts = spec.split(":")[1:]
        if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
            raise InputError(f"bad data spec {spec!r}: write gaussian:N or gaussian:N:SEED")
        return gaussian(int(parts[0]), seed=int(parts[1]) if len(parts) == 2 else 0)
    if spec.endswith(".pt"):
        return from_file(spec)
    raise InputError(f"unknown data spec {spec!r}: use gaussian:N, gaussian:N:SEED or FILE.pt")


def as_source(data: Any) -> Source:
    """Any accepted form of data as a :class:`Source`: a source, a tensor, a tuple/list of tensors,
    a spec string, or a ``DataLoader`` (any iterable of batches)."""
    if isinstance(data, Source):
        return data
    if isinstance(data, torch.Tensor):
        return Tensors(data)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        return Tensors(*data)
    if isinstance(data, (str, Path)):
        return from_spec(str(data))
    if isinstance(data, Iterable) and not isinstance(data, (tuple, list, dict)):
        return Loader(data)
    raise InputError(f"cannot read data from a {type(data).__name__}: give a tensor, a tuple of tensors, "
                     "a DataLoader, compinterp.data.gaussian(n) or a spec like 'gaussian:1000'")


def placement(module: torch.nn.Module, device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """Where ``module`` runs (``device`` if given, else where its floating parameters are; the CPU
    without any) and the dtype of its floating parameters (float32 without any).

    >>> placement(torch.nn.Linear(2, 2, dtype=torch.float64))
    (device(type='cpu'), torch.float64)
    """
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    where = resolve_device(device) if device is not None else first.device if first is not None else torch.device("cpu")
    return where, first.dtype if first is not None else torch.float32


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device, checked to exist here and to hold values (a one-line error otherwise).

    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("gpu0")
    Traceback (most recent call last):
    ...
    compinterp.errors.InputError: device 'gpu0' is not a torch device here (use e.g. cpu, cuda, cuda:1, mps)
    >>> resolve_device("meta")
    Traceback (most recent call last):
    ...
    compinterp.errors.InputError: device meta holds shapes but no values: nothing can run there (use e.g. cpu, cuda)
    """
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError) as err:
        if isinstance(device, str):
            raise InputError(f"device {device!r} is not a torch device here "
                             "(use e.g. cpu, cuda, cuda:1, mps)") from None
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0].split(". ")[0]
        raise InputError(f"device {device} is not available here: {reason}") from None
    if device.type == "meta":
        raise InputError(f"device {device} holds shapes but no values: nothing can run there (use e.g. cpu, cuda)")
    return device


def placed(batch: Sequence[torch.Tensor], n: int, device: torch.device, dtype: torch.dtype) -> Batch:
    """The first ``n`` tensors of ``batch`` (a model's inputs) on ``device``, the floating ones in
    ``dtype``; token ids keep their integer dtype."""
    return tuple(x.to(device, dtype) if x.is_floating_point() else x.to(device) for x in batch[:n])


def _as_batch(batch: Any, i: int) -> Batch:
    """One loader item as a tuple of tensors."""
    items = (batch,) if isinstance(batch, torch.Tensor) else tuple(batch) if isinstance(batch, (tuple, list)) else None
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise InputError(f"batch {i} of the data is a {type(batch).__name__}: a batch must be a tensor or "
                         "a tuple/list of tensors (inputs, then optionally labels)")
    return items


def _held(holdout: float, n: int) -> int:
    """How many of ``n`` samples a held-out fraction ``holdout`` takes, leaving some on both sides."""
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise InputError(f"the held-out fraction must lie strictly between 0 and 1, got {holdout!r}")
    held = round(holdout * n)
    if n < 2 or not 0 < held < n:
        raise InputError(f"holding out {holdout:g} of {n} sample(s) leaves no sample on one side: give more data "
                         "or the held-out data explicitly")
    return held


def _positive(batch_size: int) -> int:
    """``batch_size``, checked to be a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size
