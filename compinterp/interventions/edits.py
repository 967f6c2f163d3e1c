"""Interventions on sites: interchange, zero, mean and resample ablation, steering; one run each.

Every intervention gives, for its site, a target ``t`` and the edit ``v -> v + P_S(t - v)``
(steering: ``v -> v + P_S(vector)``), where ``P_S`` keeps the site's positions and heads and
projects onto its subspace (:meth:`Site.select`). Sources are run once each, keeping only the
values the edits need; then the base runs with every edit in place.

>>> import torch
>>> import compinterp as ci
>>> x = ci.Space("x", 2)
>>> model = ci.Model(ci.Linear("f", x, x) >> ci.Linear("g", x, x), seed=0)
>>> base, source = torch.zeros(1, 2), torch.ones(1, 2)
>>> patched = intervene(model, base, [patch(Site("f"), source)])
>>> torch.allclose(patched, model(source))
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from compinterp.data import placed, placement
from compinterp.errors import InputError
from compinterp.semantics import Plan, kernels
from compinterp.interventions.cache import HEADS_SUFFIX, mean_value
from compinterp.interventions.run import Edit, Edited
from compinterp.interventions.sites import Site


@dataclass(frozen=True, eq=False)
class Intervention:
    """An edit of ``site``: replace its part by a target, or (``add``) add a vector to it."""

    site: Site
    source: tuple[torch.Tensor, ...] | None = None
    """Inputs whose value at the site is the target (interchange)."""
    value: torch.Tensor | None = None
    """A fixed target (zero, mean) or, with ``add``, the vector added (steering)."""
    add: bool = False
    resample_seed: int | None = None
    """Resample ablation: the source is the base batch shuffled with this seed."""
    name: str = field(default="intervention")


def patch(site: Site, *source: torch.Tensor) -> Intervention:
    """The site's part set to its value on ``source`` (one tensor per input wire)."""
    return Intervention(_site(site), source=tuple(source), name="interchange")


def zero(site: Site) -> Intervention:
    """The site's part set to zero (zero ablation)."""
    return Intervention(_site(site), value=torch.zeros(()), name="zero")


def mean(site: Site, model: Any, data: Any, *, batch_size: int = 256) -> Intervention:
    """The site's part set to its mean over ``data`` (mean ablation; the mean keeps positions)."""
    site = _site(site)
    name = site.wire + (HEADS_SUFFIX if site.heads is not None else "")
    value = mean_value(model, data, [name], batch_size=batch_size)
    if value is None:
        raise InputError(f"mean ablation of {site}: the data held no samples")
    return Intervention(site, value=value, name="mean")


def resample(site: Site, seed: int = 0) -> Intervention:
    """The site's part set to its value on another example of the base batch (a seeded shuffle)."""
    return Intervention(_site(site), resample_seed=seed, name="resample")


def steer(site: Site, vector: torch.Tensor, scale: float = 1.0) -> Intervention:
    """``scale * vector`` added to the site's part (activation steering)."""
    if not isinstance(vector, torch.Tensor):
        raise InputError(f"steering {site} needs a tensor vector, got {type(vector).__name__}")
    return Intervention(_site(site), value=scale * vector, add=True, name="steer")


def intervene(model: Any, base: torch.Tensor | Sequence[torch.Tensor], interventions: Sequence[Intervention], *,
              batch_size: int | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The model's outputs on ``base`` with every intervention in place (one run per distinct source).

    With ``batch_size``, ``base`` and the sources (which have as many examples as ``base``) are
    streamed in batches of that size, the interventions prepared once; outputs are concatenated.
    """
    params = model.plan_params()
    where = placement(model)
    xs = model_inputs(model, base, where)
    plan = model.plan
    registers = [i.site.check(plan) for i in interventions]
    sources = {id(i.source): model_inputs(model, i.source, where) for i in interventions if i.source is not None}
    for inputs in (xs, *sources.values()):
        plan.check_inputs(inputs)
    runs = Runs(plan, params, interventions, registers)
    n = xs[0].shape[0] if xs[0].dim() else 1
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        for i in interventions:
            if i.source is not None and sources[id(i.source)][0].shape[0] != n:
                raise InputError(f"{i.name} on {i.site}: streamed in batches, the source must have as many examples "
                                 f"as the base ({n}), got {sources[id(i.source)][0].shape[0]}")
    if batch_size is None or batch_size >= n:
        out = runs(xs, [sources[key] for key in runs.keys])
    else:
        batches = [list(zip(*(x.split(batch_size) for x in inputs))) for inputs in (xs, *map(sources.get, runs.keys))]
        parts = [runs(base_batch, source_batches) for base_batch, *source_batches in zip(*batches)]
        out = tuple(torch.cat(column) for column in zip(*parts))
    return out[0] if len(out) == 1 else out


class Runs:
    """The runs that put ``interventions`` (on ``registers``) in place, prepared once (their code
    generated, :meth:`Interpreter.prepared <compinterp.semantics.Interpreter.prepared>`) for any
    number of batches: each source (:attr:`keys`: the ids of the interventions' sources; resampling
    shuffles the base) runs only the steps its targets need and returns them, then the base runs
    with every edit in place. A whole register taken from a source is set beforehand (``initial``:
    the steps only it needed do not run); the other edits are ``v -> v + P_S(t - v)``
    (:meth:`Site.patched`), reading their targets from :attr:`targets`, filled for each batch."""

    def __init__(self, plan: Plan, params: Any, interventions: Sequence[Intervention],
                 registers: Sequence[int]) -> None:
        self.targets: list[torch.Tensor | None] = [None] * len(interventions)
        """The target of each intervention with a source, for the batch being run."""
        by_source: dict[int, list[int]] = {}
        initial: set[int] = set()
        for k, i in enumerate(interventions):
            if i.source is not None or i.resample_seed is not None:
                key = id(i.source) if i.source is not None else -1 - i.resample_seed
                by_source.setdefault(key, []).append(k)
                if i.site.whole and registers.count(registers[k]) == 1:
                    initial.add(k)
        self.keys = [key for key in by_source if key >= 0]
        """The sources :meth:`__call__` takes, in order, by the id of an intervention's source."""
        self._initial: dict[int, torch.Tensor] = {}
        """The registers set beforehand in the base run, for the batch being run."""
        # Per source: its place in __call__'s sources (or its resampling key), its run, and where each
        # target goes: (store, slot, the target's index in the run's results, or None: in `heads`).
        self._sources: list[tuple[int, Callable[..., Any], list[tuple[Any, int, int | None]], dict[int, Any]]] = []
        for key, ks in by_source.items():
            heads = [k for k in ks if interventions[k].site.heads is not None]
            editor = Edited(plan, params, keep_heads={registers[k] for k in heads})
            returns = tuple(dict.fromkeys(registers[k] for k in ks))
            found = [(self._initial, registers[k], returns.index(registers[k])) if k in initial else
                     (self.targets, k, None if k in heads else returns.index(registers[k])) for k in ks]
            self._sources.append((self.keys.index(key) if key >= 0 else key, editor.prepared(returns=returns),
                                  found, editor.heads))
        edits: dict[int, list[Edit]] = {}
        head_edits: dict[int, list[Edit]] = {}
        for k, i in enumerate(interventions):
            if k not in initial:
                table = head_edits if i.site.heads is not None else edits
                owned = i.site.heads is None and _fresh(plan, registers[k])
                table.setdefault(registers[k], []).append(_edit(i, self.targets, k, owned))
        self._filled = [k for ks in by_source.values() for k in ks if k not in initial]
        self._registers = registers
        base = Edited(plan, params, edits=edits, head_edits=head_edits)
        self._base = base.prepared(given=frozenset(registers[k] for k in initial))

    def __call__(self, xs: tuple[torch.Tensor, ...], sources: Sequence[tuple[torch.Tensor, ...]]
                 ) -> tuple[torch.Tensor, ...]:
        """The base run on ``xs`` with the interventions in place, ``sources`` (one batch per key
        of :attr:`keys`) run first."""
        for j, run, found, heads in self._sources:
            values = run(sources[j] if j >= 0 else _shuffled(xs, -1 - j), None)
            for store, slot, i in found:
                store[slot] = values[i] if i is not None else heads[self._registers[slot]]
            heads.clear()
        out = self._base(xs, self._initial or None)
        # Hold no batch's values past its run: the next batch's then reuse their memory.
        self._initial.clear()
        for k in self._filled:
            self.targets[k] = None
        return out


def _edit(intervention: Intervention, targets: list[torch.Tensor | None], k: int, owned: bool = False) -> Edit:
    """``v -> v + P_S(t - v)``, ``t`` the fixed value or ``targets[k]``, or ``v -> v + P_S(vector)``
    for steering; ``owned``: ``v`` is a fresh value of the run's own (:func:`_fresh`), which a patch may
    write into when no gradient flows through it (:meth:`Site.patched_`)."""
    site, value = intervention.site, intervention.value

    def edit(v: torch.Tensor) -> torch.Tensor:
        t = targets[k]
        if t is None:
            t = value.to(v)
        try:
            if intervention.add:
                return v + site.select(t.expand_as(v))
            if owned and not (v.requires_grad or t.requires_grad):
                return site.patched_(v, t)
            return site.patched(v, t)
        except RuntimeError as err:
            raise InputError(f"{intervention.name} on {site}: the target of shape {tuple(t.shape)} does not fit "
                             f"the value of shape {tuple(v.shape)} ({err})") from None

    return edit


def _fresh(plan: Plan, r: int) -> bool:
    """Whether register ``r`` is written by a step whose kernel always returns a new tensor (a linear map, a sum
    or product of two wires, a pointwise function other than the identity), so that no other register or input
    shares its memory."""
    if r not in plan.writer:
        return False
    fn = plan.steps[plan.writer[r]].fn
    if isinstance(fn, partial):
        return fn.func is kernels.pointwise1 and len(fn.args) == 1 and fn.args[0] is not kernels.same
    return fn in (kernels.linear, kernels.affine, kernels.add, kernels.mul)


def _site(site: Any) -> Site:
    if isinstance(site, str):
        return Site(site)
    if not isinstance(site, Site):
        raise InputError(f"an intervention acts on a Site (or a wire name), got {type(site).__name__}")
    return site


def model_inputs(model: Any, data: Any, where: tuple[torch.device, torch.dtype] | None = None
                 ) -> tuple[torch.Tensor, ...]:
    """One batch of inputs, on the model's device (float inputs in its dtype; ``where``: that
    device and dtype, :func:`~compinterp.data.placement` of the model, when already known)."""
    batch = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    n = len(model.dom)
    if len(batch) < n:
        raise InputError(f"the model takes {n} input(s) ({model.dom}), got {len(batch)}")
    device, dtype = where or placement(model)
    return placed(batch[:n], n, device, dtype)


def _shuffled(xs: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """The batch with its examples shuffled (a derangement when there are two or more)."""
    n = xs[0].shape[0]
    shift = int(torch.randint(1, n, (1,), generator=torch.Generator().manual_seed(seed))) if n > 1 else 0
    order = torch.arange(n).roll(shift)
    return tuple(x[order.to(x.device)] for x in xs)
