"""Learned alignments: fit an interpretation's free parts so that its squares commute.

:func:`fit` optimises the named free parts of an :class:`~compinterp.Interpretation` (its
semantic maps on chosen wires, such as a learned rotation, and its explanation's own
parameters) by gradient, on one split of the data, so that the explanation's run agrees with
the model's end to end; with ``wire``, under interchange interventions on that wire (a site
narrowed to the rotation's subspace, the explanation taking its own value on the source:
distributed alignment search). The model's own weights
never change. The held-out split is then checked like any interpretation: faithfulness, and
with logits, top-1 agreement, which under interventions is the interchange-intervention
accuracy (IIA).

The loss compares the two outputs of each square of the whole diagram: for logits the
cross-entropy of each side against the other's probabilities, ``CE(y_M, p_E) + CE(y_E, p_M)``
(each term's target held fixed), else the squared error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from compinterp.data import placement
from compinterp.errors import InputError
from compinterp.faithfulness.check import _BothSides, _inputs, _Squares, check, interchange
from compinterp.faithfulness.report import FaithfulnessReport
from compinterp.interpretation import Interpretation
from compinterp.interpretation.maps import RotationMap
from compinterp.interventions import Site
from compinterp.model import Model
from compinterp.semantics import inputs


@dataclass(frozen=True)
class FitResult:
    """The fitted interpretation (fitted in place), its held-out report, the site it was trained
    under (``None``: plain squares) and the training losses, one per step."""

    interpretation: Interpretation
    held_out: FaithfulnessReport
    site: Site | None
    losses: list[float] = field(repr=False)

    @property
    def iia(self) -> float | None:
        """Held-out interchange-intervention accuracy (top-1 agreement under interventions), with logits."""
        return self.held_out.end_to_end.top1 if self.site is not None else None


def fit(model: Model, interpretation: Interpretation, data: Any, *, free: Sequence[str], wire: str | Site | None = None,
        steps: int = 300, lr: float = 1e-2, batch_size: int = 256, held_out: float = 0.2, seed: int = 0,
        logits: bool | str | None = None, progress: bool = True) -> FitResult:
    """Learn the ``free`` parts of ``interpretation`` of ``model`` on ``data`` and check it on a
    held-out split.

    Args:
        model: the model explained (its weights stay as they are).
        interpretation: the interpretation; its free parts are changed in place.
        data: a tensor, or a tuple of tensors (inputs, optionally labels), split by a seeded
            permutation into training and held-out samples.
        free: wire names or labels (their semantic maps learn) and explanation box names (their
            parameters learn).
        wire: train under interchange interventions on this box output (or a site on it); a plain
            name with a rotation map on that wire is narrowed to the rotation's subspace. Sources
            are the same batch in a seeded random order.
        steps, lr, batch_size: Adam steps, learning rate and batch size.
        held_out: the fraction of samples kept out of training for the report.
        seed: the split, batches and pairs all follow it: the same seed gives the same fit.
        logits: whether the output is logits, or the output wire that holds them (default: as
            :func:`check` decides).
    """
    squares = _Squares(model, interpretation)
    params = _free_parameters(interpretation, free)
    site = None if wire is None else _site(squares, wire)
    patch = None if site is None else squares.patch(site, 0, None, own=True)
    out, _ = squares._logits(logits)
    train, test = _split(data, held_out, seed)
    device, dtype = placement(model)
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for step in tqdm(range(steps), desc="fit", unit="step", disable=not progress, leave=False):
            rows = torch.randint(0, len(train[0]), (min(batch_size, len(train[0])),), generator=generator)
            xs, _ = _inputs(tuple(t[rows] for t in train), inputs(model.plan), step, dtype, device)
            value = None
            if patch is not None:
                order = torch.randperm(len(rows), generator=generator).to(device)
                with torch.no_grad():
                    value = squares._capture([x[order] for x in xs], patch)
            outs = _BothSides(squares, None, patch, value).run(*xs)
            loss = sum(_loss(m, e, i == out) for i, (_, m, e) in enumerate(outs))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if site is None:
        report = check(model, interpretation, test, batch_size=batch_size, logits=logits, progress=False)
    else:
        order = torch.randperm(len(test[0]), generator=generator)
        source = tuple(t[order] for t in test)
        report = interchange(model, interpretation, test, source, site, own_value=True, batch_size=batch_size,
                             logits=logits, progress=False)
    return FitResult(interpretation, report, site, losses)


def _site(squares: _Squares, wire: str | Site) -> Site:
    """The training site: as given, or a box output narrowed to the rotation its wire's map learns."""
    if isinstance(wire, Site):
        return wire
    if not isinstance(wire, str) or wire not in squares.labels:
        raise InputError(f"fit(wire=...) names a box output of the model ({', '.join(squares.labels)}), "
                         f"got {wire!r}")
    step = squares.steps[squares.labels.index(wire)]
    sigma = squares.sigma[step.outs[0]]
    return Site(wire, subspace=sigma.rotation) if isinstance(sigma, RotationMap) else Site(wire)


def _free_parameters(interpretation: Interpretation, free: Sequence[str]) -> list[nn.Parameter]:
    """The parameters of the free parts, by wire name or label, or explanation box name."""
    if isinstance(free, str) or not free:
        raise InputError("fit(free=[...]) names the parts to learn: wires (their maps) or explanation boxes")
    explanation = interpretation.explanation
    params: list[nn.Parameter] = []
    for name in free:
        maps = [m for wire, m in interpretation.maps.items() if name in (wire, wire.split(":")[0])]
        if maps:
            params += [p for m in maps for p in m.parameters()]
        elif name in explanation.params:
            params += list(explanation.params[name].parameters())
        else:
            raise InputError(f"fit(free=[{name!r}]): no wire or explanation box of that name; wires: "
                             f"{', '.join(interpretation.maps)}; boxes: {', '.join(explanation.params)}")
    if not params:
        raise InputError(f"fit(free={list(free)!r}): these parts have no parameters to learn "
                         "(an identity map or a box without weights)")
    return list(dict.fromkeys(params))


def _split(data: Any, held_out: float, seed: int) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Training and held-out samples by a seeded permutation."""
    tensors = (data,) if isinstance(data, torch.Tensor) else tuple(data) if isinstance(data, (tuple, list)) else None
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise InputError("fit() takes its data as a tensor or a tuple of tensors (inputs, then labels)")
    n = len(tensors[0])
    if not 0 < held_out < 1:
        raise InputError(f"held_out is the fraction of samples kept for the report, between 0 and 1; got {held_out}")
    cut = n - max(1, round(n * held_out))
    if cut < 1:
        raise InputError(f"{n} samples are too few to split into training and held-out data")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return tuple(t[order[:cut]] for t in tensors), tuple(t[order[cut:]] for t in tensors)


def _loss(model_side: torch.Tensor, explanation_side: torch.Tensor, logits: bool) -> torch.Tensor:
    """How far one output of the two sides is apart (see the module docstring)."""
    if logits:
        m, e = model_side.flatten(0, -2), explanation_side.flatten(0, -2)
        return (F.cross_entropy(m, e.softmax(-1).detach()) + F.cross_entropy(e, m.softmax(-1).detach()))
    return (model_side - explanation_side).pow(2).sum(-1).mean()
