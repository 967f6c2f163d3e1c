"""Parameter bits: each stored number at a stated precision, with cheaper codes where they apply.

Every tensor is either a copy of an earlier one (a reference to it) or new; a new
tensor is sent in the cheapest of four codes: dense or sparse (a mask of its non-zero
entries, then those entries), with raw numbers at ``precision`` bits or, when it lies
on a uniform grid, ``b``-bit integers and one scale. Every term is written out in
``docs/description_length.md``.

>>> import torch
>>> code = tensor_code(torch.tensor([0.5, 0.0, 0.0, -1.5]), precision=32)
>>> code.form, code.width, round(code.bits, 3)      # 6 + gamma(3) + log2 C(4, 2) + 2 * 3 + 32
('sparse', 3, 49.585)
>>> grid_width(torch.tensor([0.1, 0.2, 0.3])), grid_width(torch.tensor([0.1234, 0.5678, -0.9101])) is None
(3, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from compinterp.complexity.codes import choice_bits, gamma_bits, log2_binomial
from compinterp.errors import InputError
from compinterp.syntax import Diagram, Kind
from compinterp.model import named_boxes

WIDTHS = tuple(range(2, 17))
"""The widths ``b`` of the uniform grids a tensor may be sent on: levels ``-q .. q``, ``q = 2^(b-1) - 1``."""

HEADER_BITS = 1 + choice_bits(2 * len(WIDTHS) + 2)
"""A new tensor's header: 1 bit (new, not a copy), then its form (dense or sparse) and its
value width (one of :data:`WIDTHS`, or raw numbers): ``1 + log2(2 * 16)`` = 6 bits."""

_ULPS = 8
"""A tensor lies on a grid when rebuilding it from integers and the scale is exact to this many ulps."""
_REDUCIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""Float dtypes torch reduces (``max``) on every device; others (float8) are widened first."""
_SAMPLE = 64
""":func:`grid_width` first tries every width on about this many evenly spaced entries: a width that one of them
misses by more than twice the tolerance is ruled out without reading the rest (a miss is either within round-off
of the full test's or about half a grid step, so the answer is the same)."""


@dataclass(frozen=True)
class TensorCode:
    """How one tensor is sent: ``form`` (``dense``, ``sparse`` or ``copy``), the value ``width``
    (``None``: raw numbers at the precision), its ``numbers`` and non-zeros, and the ``bits``."""

    form: str
    width: int | None
    numbers: int
    nonzero: int
    bits: float


def grid_width(tensor: torch.Tensor) -> int | None:
    """The smallest ``b`` in :data:`WIDTHS` with ``tensor = s k``, ``k`` integers in ``[-q, q]``,
    ``q = 2^(b-1) - 1`` and ``s = max|tensor| / q`` (to float rounding); ``None`` when there is none. Every
    width is first screened on a sample of the entries (:data:`_SAMPLE`).

    >>> grid_width(torch.tensor([3.0, -1.0, 0.0]) / 7)
    3
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    flat = tensor.detach().reshape(-1)
    if flat.dtype not in _REDUCIBLE:           # float8 has no max kernel: screen and test in float64
        flat = flat.to(torch.float64)
    top = flat.abs().max().item()              # NaN or infinite when any entry is
    if top == 0 or not math.isfinite(top):
        return None
    tolerance = _ULPS * torch.finfo(tensor.dtype).eps * top
    scales = [top / (2 ** (width - 1) - 1) for width in WIDTHS]
    sample = flat[::max(1, flat.numel() // _SAMPLE)].to(torch.float64)
    steps = sample.new_tensor(scales)[:, None]
    misses = ((sample / steps).round() * steps - sample).abs().amax(1).tolist()
    t: torch.Tensor | None = None
    for width, scale, miss in zip(WIDTHS, scales, misses):
        if miss > 2 * tolerance:
            continue
        t = flat.to(torch.float64) if t is None else t
        if ((t / scale).round() * scale - t).abs().max().item() <= tolerance:
            return width
    return None


def tensor_code(tensor: torch.Tensor, precision: int) -> TensorCode:
    """The cheapest code of a new tensor (header included).

    ``dense = n v + s`` and ``sparse = gamma(z + 1) + log2 C(n, z) + z v + s`` bits, for ``n``
    numbers of which ``z`` are non-zero, where ``v`` is the value width (``b`` on a grid,
    else ``precision``) and ``s`` the scale (``precision`` bits on a grid, else 0).
    """
    n = tensor.numel()
    z = int(torch.count_nonzero(_countable(tensor)).item())
    mask = gamma_bits(z + 1) + log2_binomial(n, z)
    options = [(n * precision, "dense", None), (mask + z * precision, "sparse", None)]
    width = grid_width(tensor)
    if width is not None:
        options += [(n * width + precision, "dense", width), (mask + z * width + precision, "sparse", width)]
    bits, form, chosen = min(options, key=lambda option: option[0])
    return TensorCode(form, chosen, n, z, HEADER_BITS + bits)


def ordered_keys(diagram: Diagram, keys: Iterable[str]) -> list[str]:
    """The parameter keys ``box.role`` in the order they are sent: boxes in diagram order, each
    box's roles in the order of its ``param_shapes()``, then its other keys (an Opaque module's
    state) alphabetically; keys of no box last, alphabetically."""
    remaining = set(keys)
    order: list[str] = []
    for name, box in named_boxes(diagram).items():
        roles = list(box.param_shapes()) if isinstance(box, Kind) else []
        own = [f"{name}.{role}" for role in roles if f"{name}.{role}" in remaining]
        own += sorted(key for key in remaining if key.startswith(f"{name}.") and key not in own)
        order += own
        remaining -= set(own)
    return order + sorted(remaining)


def parameter_codes(tensors: Mapping[str, torch.Tensor], order: Iterable[str],
                    precision: int) -> dict[str, TensorCode]:
    """The code of each tensor, in ``order``: a tensor equal to an earlier one (same shape and
    values) is a copy, ``1 + log2(T)`` bits for ``T`` tensors sent before it."""
    if isinstance(precision, bool) or not isinstance(precision, int) or not 1 <= precision <= 64:
        raise InputError(f"precision must be a whole number of bits from 1 to 64, got {precision!r}")
    codes: dict[str, TensorCode] = {}
    sent: list[torch.Tensor] = []
    for key in order:
        tensor = tensors[key].detach()
        n = tensor.numel()
        if any(_same(tensor, earlier) for earlier in sent):
            codes[key] = TensorCode("copy", None, n, int(torch.count_nonzero(_countable(tensor)).item()),
                                    1 + choice_bits(len(sent)))
        else:
            codes[key] = tensor_code(tensor, precision)
        sent.append(tensor)
    return codes


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors hold the same numbers in the same shape."""
    return a.shape == b.shape and a.device == b.device and torch.equal(_countable(a), _countable(b.to(a.dtype)))


def _countable(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in a dtype torch can count and compare (float8 widened, unsigned 16 to 64 bits read as
    int64), exactly: which entries are zero and which are equal stays the same."""
    tensor = tensor.detach()
    if tensor.is_floating_point() and tensor.element_size() == 1:
        return tensor.to(torch.float64)
    if tensor.dtype == getattr(torch, "uint64", None):
        return tensor.view(torch.int64)
    if tensor.dtype in (getattr(torch, "uint16", None), getattr(torch, "uint32", None)):
        return tensor.to(torch.int64)
    return tensor
