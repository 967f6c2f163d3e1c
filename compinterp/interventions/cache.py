"""The activation cache: every (or the named) wire's value by name, from one run of a model.

>>> import torch
>>> import compinterp as ci
>>> x, y = ci.Space("x", 2), ci.Space("y", 1)
>>> model = ci.Model(ci.residual(ci.Linear("f", x, x)) >> ci.Linear("out", x, y), seed=0)
>>> cache = run_with_cache(model, torch.ones(3, 2))
>>> sorted(cache)
['add', 'f', 'out', 'x', 'x_0', 'x_1', 'x_2', 'y']
>>> torch.equal(cache["y"], model(torch.ones(3, 2)))
True
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from compinterp.data import as_source, placed, placement
from compinterp.errors import InputError
from compinterp.interventions.run import run_edited
from compinterp.semantics import Plan, inputs
from compinterp.semantics.kernels import PATTERN

HEADS_SUFFIX = ".heads"
"""``cache["attn1.heads"]``: an attention box's per-head outputs ``(..., T, H, d_head)``."""


class Cache(Mapping[str, torch.Tensor]):
    """Values by name (see :attr:`compinterp.semantics.Plan.names`); ``"<attention box>.heads"``
    holds that box's per-head outputs. Read-only; ``to(device)`` moves every value."""

    def __init__(self, values: dict[str, torch.Tensor]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._values:
            known = ", ".join(list(self._values)[:12]) + (", ..." if len(self._values) > 12 else "")
            raise InputError(f"no value named {name!r} in this cache; it holds {known}")
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<Cache of {len(self)} values>"

    def to(self, device: str | torch.device) -> Cache:
        """The same cache with every value on ``device``."""
        return Cache({k: v.to(device) for k, v in self._values.items()})


def resolve(plan: Plan, names: Iterable[str] | None) -> tuple[dict[str, int], dict[str, int]]:
    """The registers (by name) and attention steps (by ``name.heads``) that ``names`` asks for."""
    heads = plan.heads
    labels = {plan.labels[t]: step.outs[0] for t, step in enumerate(plan.steps)}
    all_heads = {f"{label}{HEADS_SUFFIX}": r for label, r in labels.items() if r in heads}
    if names is None:
        return dict(plan.names), all_heads
    if isinstance(names, str):
        names = [names]
    wires, head_values = {}, {}
    for name in names:
        if name in plan.names:
            wires[name] = plan.names[name]
        elif name in all_heads:
            head_values[name] = all_heads[name]
        else:
            known = ", ".join(list(plan.names)[:12]) + (", ..." if len(plan.names) > 12 else "")
            raise InputError(f"no wire or box named {name!r} in the model; names: {known}"
                             + (f"; per-head outputs: {', '.join(all_heads)}" if all_heads else ""))
    return wires, head_values


def run_with_cache(model: Any, *xs: torch.Tensor, names: Iterable[str] | None = None,
                   grad: bool = False) -> Cache:
    """Run ``model`` on ``xs`` and return every value (or the ``names``) by name; with ``grad``
    the values keep their autograd graph, else the run is under ``torch.no_grad``."""
    plan = model.plan
    wires, head_values = resolve(plan, names)
    with torch.enable_grad() if grad else torch.no_grad():
        _, values, heads = run_edited(plan, model.plan_params(), xs, keep=set(wires.values()),
                               keep_heads=set(head_values.values()), outputs=False)
    out = {name: values[r] for name, r in wires.items()}
    out.update({name: heads[r] for name, r in head_values.items()})
    return Cache(out)


def attention_patterns(model: Any, *xs: torch.Tensor, box: str) -> torch.Tensor:
    """The attention patterns ``(..., heads, T, T)`` (queries down, keys across) of the attention box
    labelled ``box`` on ``xs`` (its fixed heads as fixed; a padded box's padding mask applied)."""
    plan = model.plan
    steps = [t for t, label in enumerate(plan.labels) if label == box]
    if not steps or plan.steps[steps[0]].box.kind not in PATTERN:
        boxes = [label for label, step in zip(plan.labels, plan.steps) if step.box.kind in PATTERN]
        raise InputError(f"no attention box labelled {box!r}; the model's are {', '.join(boxes) or 'none'}")
    step = plan.steps[steps[0]]
    with torch.no_grad():
        _, values, _ = run_edited(plan, model.plan_params(), xs, keep=set(step.ins), outputs=False)
        return PATTERN[step.box.kind](step.box)(model.plan_params()[step.key], *[values[r] for r in step.ins])


def cache_batches(model: Any, data: Any, *, names: Iterable[str] | None = None, batch_size: int = 256,
                  device: str | torch.device | None = None) -> Iterator[Cache]:
    """:func:`run_with_cache` on each batch of ``data`` (any form :func:`compinterp.faithfulness.check`
    takes), streamed: one batch of values held at a time."""
    names = list(names) if names is not None else None
    place, dtype = placement(model, device)
    n = len(model.dom)
    for batch in as_source(data).batches(batch_size, inputs(model.plan)):
        yield run_with_cache(model, *placed(batch, n, place, dtype), names=names)


def mean_value(model: Any, data: Any, names: Sequence[str], *, keep: int | None = None,
               batch_size: int = 256) -> torch.Tensor | None:
    """The mean of the named values over ``data``, pooled (float64): over the examples only
    (``keep=None``), or over every axis but the last ``keep``; ``None`` when the data held no samples."""
    total, count = None, 0
    for cache in cache_batches(model, data, names=names, batch_size=batch_size):
        for name in names:
            value = cache[name].detach().to(torch.float64)
            flat = value if keep is None else value.flatten(0, -keep - 1)
            total = flat.sum(0) if total is None else total + flat.sum(0)
            count += flat.shape[0]
    return None if total is None else total / count


def stacked(caches: Sequence[Cache]) -> Cache:
    """Caches of several batches joined along the batch axis."""
    if not caches:
        raise InputError("no caches to join: the data held no batches")
    return Cache({name: torch.cat([c[name] for c in caches]) for name in caches[0]})
