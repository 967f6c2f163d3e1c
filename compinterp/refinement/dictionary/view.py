"""The features as the explanation's vocabulary: each one's decoder direction, top-activating inputs and effect.

For feature ``f`` of a dictionary on box ``b``: its unit decoder column; the ``top``
model inputs (rows of the first input wire) on which ``z_f`` is largest, with those
values; and its effect on the outputs through the downstream diagram,
``E[y(x) - y(x; z_f := 0) | z_f != 0]``, the mean change of the refined model's first
output when the feature is removed, over the examples where it is active.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from compinterp.data import as_source, placed
from compinterp.errors import InputError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.dictionary.base import DictionaryPass
from compinterp.refinement.dictionary.core import Dictionary
from compinterp.semantics import inputs as input_wires


@dataclass(frozen=True)
class Feature:
    """One feature: ``index``, ``direction`` (decoder column), ``top_inputs`` and ``top_values`` (largest
    first), ``active`` (how many examples it fired on) and ``effect`` on the first output."""

    index: int
    direction: torch.Tensor
    top_inputs: torch.Tensor
    top_values: torch.Tensor
    active: int
    effect: torch.Tensor


def features(model: Model, dictionary_pass: DictionaryPass, rewrite: Rewrite, dictionary: Dictionary, data: Any, *,
             top: int = 8) -> list[Feature]:
    """Every feature of ``dictionary`` (fitted by ``dictionary_pass`` for ``rewrite``) described on ``data``,
    streamed in batches of the pass's ``batch_size``."""
    refined = dictionary_pass.interpret(model, rewrite, dictionary).explanation
    decoder = refined.box_params(f"{rewrite.box}_dec")["W"]
    width, box, device = decoder.shape[1], model.boxes[rewrite.box], decoder.device
    values, inputs = torch.empty(width, 0, device=device), None
    effect, active = torch.zeros(width, refined.cod.dims[0], device=device), torch.zeros(width, device=device)
    for batch in as_source(data).batches(dictionary_pass.batch_size, input_wires(model.plan)):
        xs = placed(batch, len(model.dom), device, decoder.dtype)
        with torch.no_grad():
            z = torch.cat([dictionary.encode(a.reshape(-1, a.shape[-1]))
                           for a, _ in dictionary_pass.pairs(model, box, xs)])
            on = z != 0
            full = _first(refined(*xs))
            for f in range(width):
                effect[f] += _removed(refined, decoder, f, xs, full)[on[:, f]].sum(0)
        active += on.sum(0)
        rows = xs[0].reshape(z.shape[0], -1).to(z.dtype)
        both = torch.cat([values, torch.where(on, z, -torch.inf).T], 1)
        keep = both.topk(min(top, both.shape[1]), dim=1)
        pool = rows[None].expand(width, -1, -1) if inputs is None else \
            torch.cat([inputs, rows[None].expand(width, -1, -1)], 1)
        values, inputs = keep.values, pool.gather(1, keep.indices[..., None].expand(-1, -1, rows.shape[1]))
    if inputs is None:
        raise InputError("the data gave no batches to describe the features on")
    return [Feature(f, decoder[:, f].detach().clone(), inputs[f][values[f] > -torch.inf],
                    values[f][values[f] > -torch.inf], int(active[f]), effect[f] / active[f].clamp_min(1))
            for f in range(width)]


def _first(y: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The first output, one row per example."""
    first = y[0] if isinstance(y, tuple) else y
    return first.reshape(-1, first.shape[-1])


def _removed(refined: Model, decoder: torch.Tensor, f: int, xs: tuple[torch.Tensor, ...],
             full: torch.Tensor) -> torch.Tensor:
    """``y(x) - y(x; z_f := 0)``: the refined model run with decoder column ``f`` zeroed, then restored."""
    column = decoder[:, f].clone()
    decoder[:, f] = 0
    try:
        return full - _first(refined(*xs))
    finally:
        decoder[:, f] = column
