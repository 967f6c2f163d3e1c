"""What the passes share: finding and checking boxes, fresh names, bilinear factors, and building models.

A Bilinear box ``y = D((L x + l) * (R x + r)) + d`` is handled on the *padded* input
``x^ = (1, x)`` when it has biases: ``L^ = [l | L]``, ``R^ = [r | R]``, so that
``y_c = x^T B_c x^ + d_c`` with the interaction tensor
``B[c, i, j] = sum_h D[c, h] L^[h, i] R^[h, j]`` (einsum ``"out hid, hid in1, hid in2 -> out in1 in2"``).

>>> import torch
>>> L, R = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
>>> K = sym_gram(L, R, L, R)
>>> B = torch.einsum("hi,hj->hij", L, R)                    # each unit's L_h R_h^T
>>> torch.allclose(K.diagonal(), ((B + B.transpose(1, 2)) / 2).square().sum((1, 2)))
True
>>> grid(64), grid(5, start=5)
([48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1], [5, 4, 3, 2, 1])
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import torch

from compinterp.errors import BoxError
from compinterp.model import Model, named_boxes
from compinterp.refinement.base import substitute
from compinterp.syntax import Box, Diagram, Kind

F64 = torch.float64
Params = dict[str, torch.Tensor]


def find_box(model: Model, name: str, kinds: Collection[type[Kind]], pass_name: str) -> Kind:
    """Box ``name`` of ``model``, checked to be exactly one of ``kinds`` (a subclass is a kind of its own:
    a ``Gated`` box is no ``Bilinear``), else a :class:`BoxError` naming it and the pass."""
    if not isinstance(model, Model):
        raise BoxError(f"{pass_name} rewrites a compinterp Model, got {type(model).__name__}")
    boxes = model.boxes
    if not isinstance(name, str) or name not in boxes:
        raise BoxError(f"{pass_name}: the model has no box named {name!r}; its boxes are {', '.join(boxes)}")
    box = boxes[name]
    if type(box) not in kinds:
        raise BoxError(f"{pass_name}: box '{name}' is {article(box.kind)} box ({box.dom} -> {box.cod}); "
                       f"{pass_name} rewrites {listed([kind.kind for kind in kinds])} boxes")
    return box


def article(word: str) -> str:
    """``word`` with its indefinite article: ``a Linear``, ``an Embed``."""
    return f"{'an' if word[:1] in 'AEIOU' else 'a'} {word}"


def listed(words: Collection[str]) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def in_range(pass_name: str, box: str, setting: str, value: object, low: int, high: int) -> int:
    """``value`` checked to be an integer in ``[low, high]``, else a :class:`BoxError` naming the box and setting."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BoxError(f"{pass_name}: {setting}={value!r} is out of range for box '{box}': "
                       f"it must be an integer from {low} to {high}")
    return value


def grid(top: int, start: int | None = None) -> list[int]:
    """Settings from mildest to harshest: ``start`` (if given), then the numbers ``2^j`` and ``3 * 2^j``
    below ``top``, descending (about a factor of ``sqrt 2`` apart)."""
    values = {start} if start is not None else set()
    power = 1
    while power < top:
        values |= {v for v in (power, 3 * power) if v < top}
        power *= 2
    return sorted(values, reverse=True)


def fresh(taken: Collection[str], base: str) -> str:
    """``base``, or ``base_2``, ``base_3`` ... the first not in ``taken``."""
    if base not in taken:
        return base
    i = 2
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


def dtype_of(model: Model) -> torch.dtype:
    """The dtype of the model's floating parameters (float32 if it has none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def device_of(model: Model) -> torch.device:
    """Where the model's parameters are (the CPU if it has none)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def params64(model: Model, name: str) -> Params:
    """Box ``name``'s parameters as detached float64 copies."""
    return {role: t.detach().to(F64) for role, t in model.box_params(name).items()}


@dataclass(frozen=True)
class Factors:
    """A Bilinear or Gated box on padded inputs: ``L^, R^ : hid x in^``, ``D : out x hid``, output bias ``d``.

    ``biased`` says whether column 0 of ``L^`` and ``R^`` is the constant input (the box had biases).
    """

    L: torch.Tensor
    R: torch.Tensor
    D: torch.Tensor
    d: torch.Tensor | None
    biased: bool

    @classmethod
    def of(cls, box: Box, p: Mapping[str, torch.Tensor]) -> Factors:
        """The factors of a Bilinear/Gated box from its parameters (float64 expected)."""
        if box.data["bias"]:
            return cls(torch.cat([p["l"][:, None], p["L"]], 1), torch.cat([p["r"][:, None], p["R"]], 1),
                       p["D"], p["d"], True)
        return cls(p["L"], p["R"], p["D"], None, False)

    def params(self, L: torch.Tensor, R: torch.Tensor, D: torch.Tensor) -> Params:
        """The parameters of a box like this one (same biases) with padded factors ``L, R`` and ``D``."""
        if not self.biased:
            return {"L": L, "R": R, "D": D}
        d = self.d if self.d is not None else D.new_zeros(D.shape[0])
        return {"L": L[:, 1:], "R": R[:, 1:], "D": D, "l": L[:, 0], "r": R[:, 0], "d": d}


def sym_gram(L1: torch.Tensor, R1: torch.Tensor, L2: torch.Tensor, R2: torch.Tensor) -> torch.Tensor:
    """``K[h, g] = <sym(L1_h R1_h^T), sym(L2_g R2_g^T)>_F = 1/2 [(L1 L2^T)(R1 R2^T) + (L1 R2^T)(R1 L2^T)][h, g]``
    (products elementwise): the Frobenius products of the units' symmetrised rank-one matrices."""
    h, g = L1.shape[0], L2.shape[0]
    P = torch.cat([L1, R1]) @ torch.cat([L2, R2]).T
    return (P[:h, :g] * P[h:, g:] + P[:h, g:] * P[h:, :g]) / 2


def output_gram(f: Factors) -> torch.Tensor:
    """``G[c, c'] = <B_sym[c], B_sym[c']>_F`` (``out x out``) by the cheaper route: ``D K D^T`` from the units'
    Gram matrix (``hidden^2 in`` multiply-adds) or from the dense ``B_sym`` (``out in^2 hidden``)."""
    (hidden, n), outputs = f.L.shape, f.D.shape[0]
    if outputs * n * n < hidden * hidden:
        B = torch.einsum("ch,hi,hj->cij", f.D, f.L, f.R)
        flat = ((B + B.mT) / 2).flatten(1)
        return flat @ flat.T
    return f.D @ sym_gram(f.L, f.R, f.L, f.R) @ f.D.T


def frobenius_sq(f: Factors) -> torch.Tensor:
    """``||B_sym||_F^2``, the trace of :func:`output_gram`."""
    return output_gram(f).trace()


def copied_modules(model: Model, diagram: Diagram) -> dict[str, torch.nn.Module]:
    """Deep copies of the modules of the ``Opaque`` boxes of ``diagram`` that ``model`` holds."""
    return {name: copy.deepcopy(model.params[name]) for name, box in named_boxes(diagram).items()
            if box.opaque and name in model.params}


def cast(params: Mapping[str, Mapping[str, torch.Tensor]], model: Model) -> dict[str, Params]:
    """New parameters cast to the model's dtype and device."""
    dtype, device = dtype_of(model), device_of(model)
    return {name: {role: t.detach().to(dtype=dtype, device=device) for role, t in p.items()}
            for name, p in params.items()}


def replace(model: Model, images: Mapping[str, Diagram], params: Mapping[str, Mapping[str, torch.Tensor]]) -> Model:
    """:func:`~compinterp.refinement.base.substitute` with new parameters cast to the model's dtype and device."""
    return substitute(model, images, cast(params, model))


def build(model: Model, diagram: Diagram, params: Mapping[str, Mapping[str, torch.Tensor]]) -> Model:
    """A fresh model on ``diagram``: ``params`` for new boxes, copies of ``model``'s for the boxes it keeps."""
    new = cast(params, model)
    given: dict[str, Params] = {}
    for name, box in named_boxes(diagram).items():
        if name in new:
            given[name] = new[name]
        elif not box.opaque and isinstance(box, Kind) and box.param_shapes():
            given[name] = model.box_params(name)
    return Model(diagram, given, modules=copied_modules(model, diagram), rules=model.rules)
