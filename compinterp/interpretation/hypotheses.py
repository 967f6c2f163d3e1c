"""Hypotheses about heads and subspaces, as interpretations built without touching the diagram.

* :func:`heads_follow`: "head ``h`` of box ``B`` follows this attention pattern" (previous token,
  first token, itself, uniform, or a given matrix): ``S(B)`` is ``B`` with those heads' patterns
  fixed, the same weights otherwise.
* :func:`only_through`: "box ``f``'s output matters only through the subspace ``span(Q)``":
  ``S(f) = f >> keep``, ``keep(x) = Q^T Q x + (I - Q^T Q) m``, the complement held at its mean
  ``m`` over data (zero without data).

Both are ordinary interpretations: :func:`compinterp.check` measures them per box and end to end.

>>> import torch
>>> import compinterp as ci
>>> x = ci.Space("x", 3)
>>> model = ci.Model(ci.Linear("f", x, x) >> ci.Linear("g", x, ci.Space("y", 1)), seed=0)
>>> interp = only_through(model, {"f": torch.eye(3)})     # the whole space: nothing is dropped
>>> ci.check(model, interp, torch.randn(100, 3), progress=False).end_to_end.faithfulness
1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from compinterp.errors import BoxError
from compinterp.interpretation.interpretation import Interpretation
from compinterp.interventions.cache import mean_value
from compinterp.model import Model
from compinterp.syntax import Diagram, Linear


def heads_follow(model: Model, patterns: Mapping[str, Mapping[int, str | list[list[float]]]], *,
                 ablate_others: bool = False, data: Any = None, batch_size: int = 256) -> Interpretation:
    """The interpretation in which the named heads follow fixed attention patterns:
    ``{"attn0": {1: "previous"}}`` (names in :data:`compinterp.syntax.PATTERNS`, or matrices); with
    ``ablate_others``, every other head of those boxes is replaced by its mean output over ``data``
    (over examples and positions), folded into the output projection's bias."""
    boxes = model.boxes
    images: dict[str, Diagram] = {}
    params: dict[str, dict[str, torch.Tensor]] = {}
    for name, heads in patterns.items():
        box = boxes.get(name)
        if box is None or not box.has_heads:
            attention = [n for n, b in boxes.items() if b.has_heads]
            raise BoxError(f"heads_follow: no attention box named {name!r}; the model's are "
                           f"{', '.join(attention) or 'none'}")
        data_ = dict(box.data)
        data_["patterns"] = {**data_.get("patterns", {}), **{str(h): p for h, p in dict(heads).items()}}
        weights = {k: v.detach().clone() for k, v in model.box_params(name).items()}
        ablated = [h for h in range(box.data["heads"]) if str(h) not in data_["patterns"]] if ablate_others else []
        if ablated:
            data_["bias"] = "".join(p for p in "qkvo" if p in box.biases() + "o")
            mean = _head_means(model, name, data, batch_size)                          # heads, head_dim
            columns = weights["Wo"].unflatten(1, (box.data["heads"], -1))              # d, heads, head_dim
            offset = torch.einsum("d h e, h e -> d", columns[:, ablated], mean[ablated].to(columns.dtype))
            columns[:, ablated] = 0.0
            weights["Wo"] = columns.flatten(1)
            weights["bo"] = weights.get("bo", torch.zeros_like(offset)) + offset
        image = type(box).from_json(f"{name}_fixed", box.dom, box.cod, data_)
        images[name], params[image.name] = image, weights
    return Interpretation(model, boxes=images, params=params, rules=model.rules)


def only_through(model: Model, subspaces: Mapping[str, torch.Tensor], *, data: Any = None,
                 batch_size: int = 256) -> Interpretation:
    """The interpretation in which each named box's output matters only through a subspace
    (``{box: Q}``, ``Q : k x d`` with orthonormal rows); the rest of the output is held at its
    mean over ``data`` (over examples and positions), or at zero without data."""
    boxes = model.boxes
    images: dict[str, Diagram] = {}
    params: dict[str, dict[str, torch.Tensor]] = {}
    for name, Q in subspaces.items():
        box = boxes.get(name)
        if box is None or len(box.cod) != 1:
            raise BoxError(f"only_through: {name!r} is not a box with one output wire; boxes: {', '.join(boxes)}")
        d = box.cod.dim
        if not isinstance(Q, torch.Tensor) or Q.dim() != 2 or Q.shape[1] != d:
            shape = tuple(Q.shape) if isinstance(Q, torch.Tensor) else type(Q).__name__
            raise BoxError(f"only_through: the subspace of box '{name}' must be k x {d} (its output is "
                           f"{box.cod}), got {shape}")
        if not torch.allclose(Q @ Q.T, torch.eye(len(Q), dtype=Q.dtype), atol=1e-4):
            raise BoxError(f"only_through: the subspace of box '{name}' has rows that are not orthonormal")
        Q = Q.detach().to(torch.float64)
        P = Q.T @ Q
        mean = _mean(model, name, data, batch_size) if data is not None else torch.zeros(d, dtype=torch.float64)
        keep = Linear(f"{name}_keep", box.cod, box.cod, bias=True)
        images[name] = box >> keep
        dtype = next(iter(model.box_params(name).values())).dtype if name in model.params else torch.float32
        params[keep.name] = {"W": P.to(dtype), "b": ((torch.eye(d, dtype=torch.float64) - P) @ mean).to(dtype)}
    return Interpretation(model, boxes=images, params=params, rules=model.rules)


def _head_means(model: Model, name: str, data: Any, batch_size: int) -> torch.Tensor:
    """Each head's mean output ``(heads, head_dim)`` of attention box ``name`` over ``data``, every use,
    example and position."""
    if data is None:
        raise BoxError(f"heads_follow: mean-ablating the other heads of box '{name}' needs data to take their "
                       "means on")
    mean = mean_value(model, data, [f"{label}.heads" for label in _labels(model, name)], keep=2,
                      batch_size=batch_size)
    if mean is None:
        raise BoxError(f"heads_follow: the data held no samples to take box '{name}''s head means on")
    return mean


def _mean(model: Model, name: str, data: Any, batch_size: int) -> torch.Tensor:
    """The mean of box ``name``'s output over ``data``, every use, example and position."""
    mean = mean_value(model, data, _labels(model, name), keep=1, batch_size=batch_size)
    if mean is None:
        raise BoxError(f"only_through: the data held no samples to take box '{name}''s mean on")
    return mean


def _labels(model: Model, name: str) -> list[str]:
    """The step labels of every use of box ``name``."""
    return [label for label in model.plan.labels if label == name or label.startswith(f"{name}#")]
