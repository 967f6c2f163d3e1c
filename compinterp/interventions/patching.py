"""Patching sweeps: a metric for every site of a sweep, exact in batched passes or by attribution.

Activation patching runs the ``corrupted`` inputs with one site set to its value on the
``clean`` inputs and scores the outputs with ``metric``; a sweep does that for many sites. The
exact sweep stacks ``group`` copies of the corrupted batch into one pass, copy ``g`` patched at
site ``g`` of the group. Attribution patching estimates every site at once to first order,
``metric(corrupted) + <d metric / d v, P_S(clean - corrupted)>``, from one forward and one
backward pass, and reports its agreement with exact patching on a sample of the sites.

>>> import torch
>>> import compinterp as ci
>>> x = ci.Space("x", 3)
>>> model = ci.Model(ci.Linear("f", x, x) >> ci.Linear("g", x, ci.Space("y", 1)), seed=0)
>>> clean, corrupted = torch.ones(4, 3), torch.zeros(4, 3)
>>> sweep = patching(model, clean, corrupted, [ci.Site("f"), ci.Site("x")], lambda y: y.mean())
>>> torch.allclose(sweep.values.float(), model(clean).mean().expand(2))
True
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compinterp.drawing.heatmaps import heatmap
from compinterp.errors import InputError
from compinterp.interventions.edits import model_inputs
from compinterp.interventions.run import Edit, run_edited
from compinterp.interventions.sites import Site

Metric = Callable[[torch.Tensor], torch.Tensor]
"""The score of a run from its output (e.g. the mean logit difference): a scalar tensor."""


@dataclass(frozen=True)
class Sweep:
    """The metric for each site, ``values`` shaped as the sweep (``rows x cols`` for a grid),
    and the metric of the unpatched corrupted and clean runs."""

    sites: tuple[Site, ...]
    values: torch.Tensor
    corrupted: float
    clean: float
    rows: tuple[str, ...] = ()
    cols: tuple[str, ...] = ()
    method: str = "exact"
    agreement: float | None = None
    """Attribution only: Pearson correlation with exact patching on the checked sites."""
    checked: int = 0

    def normalised(self) -> torch.Tensor:
        """``(value - corrupted) / (clean - corrupted)``: 0 = no effect, 1 = the whole clean effect."""
        span = self.clean - self.corrupted
        if span == 0:
            raise InputError("the clean and corrupted runs score the same: nothing to normalise by")
        return (self.values - self.corrupted) / span

    def plot(self, path: str | Path, *, title: str = "activation patching") -> Path:
        """A heat map of the sweep (rows x positions) to a PNG or SVG file."""
        values = self.values if self.values.dim() == 2 else self.values.reshape(1, -1)
        cols = self.cols or tuple(repr(s) for s in self.sites)
        return heatmap(values, self.rows or ("",), cols, path, title=f"{title} ({self.method})",
                       xlabel="position" if self.cols and self.cols[0].lstrip("-").isdigit() else "")


def grid(model: Any, wires: Sequence[str], positions: int | Sequence[int]) -> tuple[list[Site], tuple[str, ...],
                                                                                  tuple[str, ...]]:
    """Sites for every wire x position (TransformerLens's per-layer, per-position sweep)."""
    positions = range(positions) if isinstance(positions, int) else positions
    sites = [Site(w, positions=p) for w, p in itertools.product(wires, positions)]
    return sites, tuple(wires), tuple(str(p) for p in positions)


def every_head(model: Any) -> tuple[list[Site], tuple[str, ...], tuple[str, ...]]:
    """Sites for every head of every attention box (rows: boxes, columns: heads)."""
    plan = model.plan
    heads = plan.heads
    boxes = [(plan.labels[t], heads[step.outs[0]]) for t, step in enumerate(plan.steps) if step.outs[0] in heads]
    if not boxes:
        raise InputError("the model has no box with heads to sweep")
    width = max(n for _, n in boxes)
    if any(n != width for _, n in boxes):
        raise InputError("every_head() needs the same number of heads in every attention box")
    sites = [Site(label, heads=h) for label, n in boxes for h in range(n)]
    return sites, tuple(label for label, _ in boxes), tuple(str(h) for h in range(width))


GROUP_BUDGET = 2 ** 18
"""Numbers per register that one stacked pass aims at: beyond, a pass no longer fits in cache and
runs slower than several smaller ones (measured on CPU, ``benchmarks/bench_interventions.py``)."""


def patching(model: Any, clean: Any, corrupted: Any, sites: Sequence[Site] | tuple[list[Site], tuple[str, ...],
             tuple[str, ...]], metric: Metric, *, group: int | None = None) -> Sweep:
    """The metric of the corrupted run patched at each site with the clean value, ``group`` sites
    per pass (a pass holds ``group`` copies of the corrupted batch; default: as many as keep the
    widest value of a pass near :data:`GROUP_BUDGET` numbers, at most 32)."""
    sites, rows, cols = _sweep(sites)
    xc, xk = model_inputs(model, clean), model_inputs(model, corrupted)
    plan, params = model.plan, model.plan_params()
    registers = [site.check(plan) for site in sites]
    clean_values, top = _clean(model, xc, sites, registers, metric)
    b = xk[0].shape[0]
    if group is None:
        widest = max(v.numel() for v in clean_values)
        group = max(1, min(32, GROUP_BUDGET // max(widest, 1)))
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise InputError(f"patching(group=...) is how many sites share a pass, a positive integer; got {group!r}")
    values = []
    with torch.no_grad():
        base = float(metric(_single(run_edited(plan, params, xk)[0])))
        for start in range(0, len(sites), group):
            chunk = range(start, min(start + group, len(sites)))
            copies = tuple(x.repeat(len(chunk), *([1] * (x.dim() - 1))) for x in xk)
            wires: dict[int, list[tuple[int, Site, torch.Tensor]]] = {}
            heads: dict[int, list[tuple[int, Site, torch.Tensor]]] = {}
            for g, k in enumerate(chunk):
                table = heads if sites[k].heads is not None else wires
                table.setdefault(registers[k], []).append((g, sites[k], clean_values[k]))
            edits = {r: [_copies_edit(patches, b)] for r, patches in wires.items()}
            head_edits = {r: [_copies_edit(patches, b)] for r, patches in heads.items()}
            out = _single(run_edited(plan, params, copies, edits=edits, head_edits=head_edits)[0])
            values.extend(float(metric(y)) for y in out.split(b))
    return Sweep(tuple(sites), _shaped(values, sites, rows, cols), base, top, rows, cols)


def attribution_patching(model: Any, clean: Any, corrupted: Any, sites: Sequence[Site] | tuple[list[Site],
                         tuple[str, ...], tuple[str, ...]], metric: Metric, *, check: int = 16,
                         seed: int = 0) -> Sweep:
    """First-order estimates of :func:`patching` for every site from one forward and backward pass;
    ``check`` sites drawn with ``seed`` are also patched exactly, and ``agreement`` is the
    Pearson correlation of estimate and exact value over them."""
    sites, rows, cols = _sweep(sites)
    xc, xk = model_inputs(model, clean), model_inputs(model, corrupted)
    plan = model.plan
    registers = [site.check(plan) for site in sites]
    clean_values, top = _clean(model, xc, sites, registers, metric)
    wires = sorted({r for site, r in zip(sites, registers) if site.heads is None})
    heads = sorted({r for site, r in zip(sites, registers) if site.heads is not None})
    with torch.enable_grad():
        out, kept, kept_heads = run_edited(plan, model.plan_params(), xk, keep=wires, keep_heads=heads)
        base_value = metric(_single(out))
        leaves = [kept[r] for r in wires] + [kept_heads[r] for r in heads]
        found = torch.autograd.grad(base_value, leaves, allow_unused=True)
    grads = {("wire", r): g for r, g in zip(wires, found)} | {("heads", r): g for r, g in zip(heads, found[len(wires):])}
    estimates = []
    for site, r, clean_value in zip(sites, registers, clean_values):
        key = ("heads", r) if site.heads is not None else ("wire", r)
        grad, value = grads[key], (kept_heads if site.heads is not None else kept)[r].detach()
        delta = site.select(clean_value - value)
        estimates.append(float(base_value.detach()) + (0.0 if grad is None else float((grad * delta).sum())))
    picked = torch.randperm(len(sites), generator=torch.Generator().manual_seed(seed))[:check].tolist()
    agreement = None
    if len(picked) >= 2:
        exact = patching(model, xc, xk, [sites[k] for k in picked], metric).values.flatten()
        estimate = torch.tensor([estimates[k] for k in picked], dtype=torch.float64)
        agreement = float(torch.corrcoef(torch.stack([estimate, exact]))[0, 1])
    return Sweep(tuple(sites), _shaped(estimates, sites, rows, cols), float(base_value.detach()), top, rows, cols,
                 method="attribution", agreement=agreement, checked=len(picked))


def _sweep(sites: Any) -> tuple[list[Site], tuple[str, ...], tuple[str, ...]]:
    """A list of sites, or the ``(sites, rows, cols)`` of :func:`grid` and :func:`every_head`."""
    if isinstance(sites, tuple) and len(sites) == 3 and isinstance(sites[1], tuple):
        return list(sites[0]), sites[1], sites[2]
    sites = [Site(s) if isinstance(s, str) else s for s in sites]
    if not sites or not all(isinstance(s, Site) for s in sites):
        raise InputError("a sweep needs a non-empty list of Sites (or wire names)")
    return sites, (), ()


def _clean(model: Any, xs: tuple[torch.Tensor, ...], sites: Sequence[Site], registers: Sequence[int],
           metric: Metric) -> tuple[list[torch.Tensor], float]:
    """One clean run: each site's full value (register or per-head outputs), and the metric."""
    wires = {r for s, r in zip(sites, registers) if s.heads is None}
    heads = {r for s, r in zip(sites, registers) if s.heads is not None}
    with torch.no_grad():
        out, values, head_values = run_edited(model.plan, model.plan_params(), xs, keep=wires, keep_heads=heads)
        top = float(metric(_single(out)))
    return [(head_values if s.heads is not None else values)[r] for s, r in zip(sites, registers)], top


def _shaped(values: list[float], sites: Sequence[Site], rows: tuple[str, ...], cols: tuple[str, ...]) -> torch.Tensor:
    """The sweep's values, ``rows x cols`` when the sites are that grid."""
    shape = (len(rows), len(cols)) if rows and cols and len(rows) * len(cols) == len(sites) else (len(sites),)
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


def _copies_edit(patches: Sequence[tuple[int, Site, torch.Tensor]], b: int) -> Edit:
    """Patch, in one copy of the value, each ``(g, site, target)``'s copy ``g`` (rows ``g*b`` to
    ``(g+1)*b``) of a stacked batch."""
    def edit(value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        for g, site, target in patches:
            part = value[g * b:(g + 1) * b]
            out[g * b:(g + 1) * b] = site.patched(part, target)
        return out
    return edit


def _single(out: tuple[torch.Tensor, ...]) -> torch.Tensor:
    if len(out) != 1:
        raise InputError(f"a patching metric scores one output; the model has {len(out)}")
    return out[0]
