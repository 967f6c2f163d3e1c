"""Uniform quantisation of a model's parameters, and the fewest bits that keep it faithful.

``quantise(model, b)`` rounds every tensor to the nearest point of a symmetric grid
with ``2^(b-1) - 1`` levels on each side of zero and one scale per tensor,
``s = max|w| / (2^(b-1) - 1)``: exactly the grids :func:`~compinterp.complexity.grid_width`
recognises, so each quantised number costs ``b`` bits in the description length.

>>> import torch
>>> quantise_tensor(torch.tensor([1.0, 0.2, -0.5]), 3)
tensor([ 1.0000,  0.3333, -0.6667])
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compinterp.complexity.parameters import WIDTHS
from compinterp.complexity.reference import Reference
from compinterp.errors import InputError
from compinterp.model import Model


def quantise_tensor(tensor: torch.Tensor, bits: int) -> torch.Tensor:
    """``s round(w / s)`` with ``s = max|w| / (2^(bits-1) - 1)``, in the tensor's dtype (zeros stay zero;
    a tensor whose scale is zero or not finite in its dtype is returned as it is)."""
    _check_width(bits)
    top = tensor.detach().abs().max() if tensor.numel() else tensor.new_zeros(())
    scale = top / (2 ** (bits - 1) - 1)
    if not 0 < scale < torch.inf:
        return tensor.detach().clone()
    return (tensor.detach() / scale).round() * scale


def quantise(model: Model, bits: int) -> Model:
    """A copy of ``model`` with every floating-point parameter quantised to ``bits`` bits (per-tensor scale).

    An Opaque box's module is copied and its floating-point state quantised in place.
    """
    _check_width(bits)
    if not isinstance(model, Model):
        raise InputError(f"quantise() takes a compinterp Model, got {type(model).__name__}")
    params: dict[str, dict[str, torch.Tensor]] = {}
    modules: dict[str, nn.Module] = {}
    for name, box in model.boxes.items():
        if name not in model.params:
            continue
        if box.opaque:
            module = copy.deepcopy(model.params[name])
            with torch.no_grad():
                for value in module.state_dict(keep_vars=True).values():
                    if value.is_floating_point():
                        value.copy_(quantise_tensor(value, bits))
            modules[name] = module
        else:
            params[name] = {role: quantise_tensor(value, bits) if value.is_floating_point() else value.detach()
                            for role, value in model.box_params(name).items()}
    return Model(model.diagram, params, modules=modules, rules=model.rules)


def smallest_width(model: Model, faithfulness: Callable[[int, Model], float], min_faithfulness: float
                   ) -> tuple[int, Model, float] | None:
    """``(b, quantise(model, b), its faithfulness)`` for the smallest ``b`` in 2..16 that keeps
    ``faithfulness(b, quantise(model, b)) >= min_faithfulness``, by bisection; ``None`` when 16 bits do not.

    Bisection assumes that more bits are never less faithful; the width returned keeps
    the bar whatever the case, and is the smallest when that holds.
    """
    found: dict[int, tuple[Model, float]] = {}

    def keeps(width: int) -> bool:
        quantised = quantise(model, width)
        found[width] = (quantised, faithfulness(width, quantised))
        return found[width][1] >= min_faithfulness

    low, high = WIDTHS[0] - 1, WIDTHS[-1]
    if not keeps(high):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if keeps(middle):
            high = middle
        else:
            low = middle
    return high, *found[high]


def min_bits(model: Model, reference: Model, data: Any, min_faithfulness: float, *, precision: int = 32,
             batch_size: int = 256, device: str | torch.device | None = None) -> int:
    """The smallest uniform width ``b`` (2..16) such that ``quantise(model, b)`` keeps faithfulness to
    ``reference`` at least ``min_faithfulness`` on ``data`` (or ``"exact"``); ``precision`` when no
    width up to 16 does but the unquantised model does.

    >>> from compinterp.syntax import Space, Bilinear
    >>> model = Model(Bilinear("mlp", Space("x", 8), Space("y", 3), hidden=16), seed=0)
    >>> min_bits(model, model, "exact", 0.99)
    5
    """
    judge = Reference(reference, data, batch_size=batch_size, device=device)

    itself = judge.compare(model).faithfulness
    if itself < min_faithfulness:
        raise InputError(f"the model itself keeps faithfulness {itself:.6g} < {min_faithfulness} to the reference: "
                         "no quantisation can reach the bar")
    found = smallest_width(model, lambda _, quantised: judge.compare(quantised).faithfulness, min_faithfulness)
    return precision if found is None else found[0]


def _check_width(bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not WIDTHS[0] <= bits <= WIDTHS[-1]:
        raise InputError(f"a quantisation width must be a whole number of bits from {WIDTHS[0]} to "
                         f"{WIDTHS[-1]}, got {bits!r}")
