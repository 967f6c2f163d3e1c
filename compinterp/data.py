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

Generated Gaussian inputs are a function of the seed and the sample's index
only, so any batch size or number of ranks sees the same samples:

>>> g = gaussian(5, seed=1)
>>> whole = torch.cat([b[0] for b in g.batches(5, (3,))])
>>> torch.equal(whole, torch.cat([b[0] for b in g.batches(2, (3,))]))
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from compinterp.errors import FormatError, InputError

Batch = tuple[torch.Tensor, ...]


class Source:
    """Base of the data sources: ``batches(batch_size, dims, rank, world)`` streams one shard."""

    def batches(self, batch_size: int, dims: Sequence[int], rank: int = 0, world: int = 1) -> Iterator[Batch]:
        """The batches of shard ``rank`` of ``world``; ``dims`` are the model's input dimensions."""
        raise NotImplementedError

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int | None:
        """How many batches :meth:`batches` yields, when known (for progress bars)."""
        return None


class Tensors(Source):
    """Tensors held in memory, split along their first axis: inputs, then optionally labels."""

    def __init__(self, *data: torch.Tensor) -> None:
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
        self.data, self.n = data, sizes.pop()

    def _shard(self, rank: int, world: int) -> range:
        return range(rank * self.n // world, (rank + 1) * self.n // world)

    def batches(self, batch_size: int, dims: Sequence[int], rank: int = 0, world: int = 1) -> Iterator[Batch]:
        shard = self._shard(rank, world)
        for start in range(shard.start, shard.stop, _positive(batch_size)):
            stop = min(start + batch_size, shard.stop)
            yield tuple(t[start:stop] for t in self.data)

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int:
        return -(-len(self._shard(rank, world)) // _positive(batch_size))


class Loader(Source):
    """Any re-iterable of batches (a ``DataLoader``); ranks take every ``world``-th batch, unless
    the loader already shards with a ``DistributedSampler``. Its own batch size is kept."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.sharded = isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler)

    def batches(self, batch_size: int, dims: Sequence[int], rank: int = 0, world: int = 1) -> Iterator[Batch]:
        for i, batch in enumerate(self.loader):
            if self.sharded or i % world == rank:
                yield _as_batch(batch, i)

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int | None:
        try:
            n = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            return None
        return n if self.sharded else len(range(rank, n, world))


class Gaussian(Source):
    """``n`` samples of ``N(mean, std^2)`` on every input wire, for out-of-distribution checks.

    Sample ``i`` depends only on ``seed`` and ``i`` (drawn in fixed chunks, each from
    its own seed), not on the batch size or the number of ranks.
    """

    chunk_numbers = 1 << 16
    """About how many numbers one chunk of samples holds."""

    def __init__(self, n: int, *, seed: int = 0, mean: float = 0.0, std: float = 1.0,
                 seq: int | None = None, dtype: torch.dtype = torch.float32) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise InputError(f"gaussian() needs a positive number of samples, got {n!r}")
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0):
            raise InputError(f"gaussian(): seq must be a positive sequence length or None, got {seq!r}")
        if not std > 0:
            raise InputError(f"gaussian(): std must be positive, got {std!r}")
        self.n, self.seed, self.mean, self.std, self.seq, self.dtype = n, seed, mean, std, seq, dtype

    def batches(self, batch_size: int, dims: Sequence[int], rank: int = 0, world: int = 1) -> Iterator[Batch]:
        lead = () if self.seq is None else (self.seq,)
        rows = max(1, self.chunk_numbers // (max(1, self.seq or 1) * max(1, sum(dims))))
        shard = range(rank * self.n // world, (rank + 1) * self.n // world)
        cached: tuple[int, Batch] | None = None
        for start in range(shard.start, shard.stop, _positive(batch_size)):
            stop, parts = min(start + batch_size, shard.stop), []
            i = start
            while i < stop:
                c = i // rows
                if cached is None or cached[0] != c:
                    cached = (c, self._chunk(c, rows, lead, dims))
                end = min(stop, (c + 1) * rows)
                parts.append(tuple(t[i - c * rows:end - c * rows] for t in cached[1]))
                i = end
            yield tuple(torch.cat(ts) if len(ts) > 1 else ts[0] for ts in zip(*parts))

    def num_batches(self, batch_size: int, rank: int = 0, world: int = 1) -> int:
        size = (rank + 1) * self.n // world - rank * self.n // world
        return -(-size // _positive(batch_size))

    def _chunk(self, c: int, rows: int, lead: tuple[int, ...], dims: Sequence[int]) -> Batch:
        """Chunk ``c``: ``rows`` samples of every input wire, from a seed made of ``(seed, c)``."""
        state = np.random.SeedSequence([self.seed, c]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state))
        return tuple(self.mean + self.std * torch.randn((rows, *lead, d), generator=generator, dtype=self.dtype)
                     for d in dims)


def tensors(*data: torch.Tensor) -> Tensors:
    """A source over tensors in memory: one per input wire, then optionally labels."""
    return Tensors(*data)


def loader(batches: Iterable[Any]) -> Loader:
    """A source over a ``DataLoader`` (or any re-iterable of batches)."""
    return Loader(batches)


def gaussian(n: int, *, seed: int = 0, mean: float = 0.0, std: float = 1.0, seq: int | None = None,
             dtype: torch.dtype = torch.float32) -> Gaussian:
    """``n`` generated Gaussian samples per input wire (``seq``: add a sequence axis of that length)."""
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
    return Tensors(*items)


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
    where = torch.device(device) if device is not None else first.device if first is not None else torch.device("cpu")
    return where, first.dtype if first is not None else torch.float32


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


def _positive(batch_size: int) -> int:
    """``batch_size``, checked to be a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size
