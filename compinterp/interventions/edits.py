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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from compinterp.data import placed, placement
from compinterp.errors import InputError
from compinterp.semantics import Plan
from compinterp.interventions.cache import HEADS_SUFFIX, mean_value
from compinterp.interventions.run import Edit, run_edited
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
    xs = model_inputs(model, base)
    plan, params = model.plan, model.plan_params()
    registers = [i.site.check(plan) for i in interventions]
    sources = {id(i.source): model_inputs(model, i.source) for i in interventions if i.source is not None}
    n = xs[0].shape[0] if xs[0].dim() else 1
    if batch_size is None:
        out = _intervened(plan, params, xs, interventions, registers, sources)
        return out[0] if len(out) == 1 else out
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    for i in interventions:
        if i.source is not None and sources[id(i.source)][0].shape[0] != n:
            raise InputError(f"{i.name} on {i.site}: streamed in batches, the source must have as many examples as "
                             f"the base ({n}), got {sources[id(i.source)][0].shape[0]}")
    parts = [_intervened(plan, params, tuple(x[k:k + batch_size] for x in xs), interventions, registers,
                         {key: tuple(x[k:k + batch_size] for x in src) for key, src in sources.items()})
             for k in range(0, n, batch_size)]
    out = tuple(torch.cat(column) for column in zip(*parts))
    return out[0] if len(out) == 1 else out


def _intervened(plan: Plan, params: Any, xs: tuple[torch.Tensor, ...], interventions: Sequence[Intervention],
                registers: Sequence[int], sources: dict[int, tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """One batch: each source run once as far as its values are needed, then the base with the edits."""
    edits, head_edits, initial = edit_functions(plan, params, xs, interventions, registers, sources)
    return run_edited(plan, params, xs, edits=edits, head_edits=head_edits, checked=True, initial=initial)[0]


def edit_functions(plan: Plan, params: Any, xs: tuple[torch.Tensor, ...], interventions: Sequence[Intervention],
                   registers: Sequence[int], sources: dict[int, tuple[torch.Tensor, ...]]
                   ) -> tuple[dict[int, list[Edit]], dict[int, list[Edit]], dict[int, torch.Tensor]]:
    """The edits of ``interventions`` (on ``registers``) by register (wires) and by attention register
    (heads), with every source (``sources`` by the id of an intervention's source; resampling shuffles
    ``xs``) run once; a whole register taken from a source is set beforehand instead (the third part)."""
    targets: list[torch.Tensor | None] = [None] * len(interventions)
    by_source: dict[int, list[int]] = {}
    runs: dict[int, tuple[torch.Tensor, ...]] = {}
    for k, i in enumerate(interventions):
        if i.source is not None or i.resample_seed is not None:
            key = id(i.source) if i.source is not None else -1 - i.resample_seed
            runs[key] = sources[key] if i.source is not None else _shuffled(xs, i.resample_seed)
            by_source.setdefault(key, []).append(k)
    for key, ks in by_source.items():
        wires = {registers[k] for k in ks if interventions[k].site.heads is None}
        head_regs = {registers[k] for k in ks if interventions[k].site.heads is not None}
        _, values, head_values = run_edited(plan, params, runs[key], keep=wires, keep_heads=head_regs,
                                            outputs=False)
        for k in ks:
            targets[k] = (head_values if interventions[k].site.heads is not None else values)[registers[k]]
    edits: dict[int, list[Edit]] = {}
    head_edits: dict[int, list[Edit]] = {}
    initial: dict[int, torch.Tensor] = {}
    for k, i in enumerate(interventions):
        target = targets[k] if targets[k] is not None else i.value
        if targets[k] is not None and i.site.whole and registers.count(registers[k]) == 1:
            initial[registers[k]] = target
            continue
        table = head_edits if i.site.heads is not None else edits
        table.setdefault(registers[k], []).append(_edit(i, target))
    return edits, head_edits, initial


def _edit(intervention: Intervention, target: torch.Tensor) -> Edit:
    """``v -> v + P_S(t - v)``, or ``v -> v + P_S(vector)`` for steering."""
    site = intervention.site

    def edit(value: torch.Tensor) -> torch.Tensor:
        t = target.to(value)
        try:
            delta = t.expand_as(value) if intervention.add else t - value
        except RuntimeError as err:
            raise InputError(f"{intervention.name} on {site}: the target of shape {tuple(t.shape)} does not fit "
                             f"the value of shape {tuple(value.shape)} ({err})") from None
        return value + site.select(delta)

    return edit


def _site(site: Any) -> Site:
    if isinstance(site, str):
        return Site(site)
    if not isinstance(site, Site):
        raise InputError(f"an intervention acts on a Site (or a wire name), got {type(site).__name__}")
    return site


def model_inputs(model: Any, data: Any) -> tuple[torch.Tensor, ...]:
    """One batch of inputs, on the model's device (float inputs in its dtype)."""
    batch = (data,) if isinstance(data, torch.Tensor) else tuple(data)
    n = len(model.dom)
    if len(batch) < n:
        raise InputError(f"the model takes {n} input(s) ({model.dom}), got {len(batch)}")
    device, dtype = placement(model)
    return placed(batch[:n], n, device, dtype)


def _shuffled(xs: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, ...]:
    """The batch with its examples shuffled (a derangement when there are two or more)."""
    n = xs[0].shape[0]
    shift = int(torch.randint(1, n, (1,), generator=torch.Generator().manual_seed(seed))) if n > 1 else 0
    order = torch.arange(n).roll(shift)
    return tuple(x[order.to(x.device)] for x in xs)
