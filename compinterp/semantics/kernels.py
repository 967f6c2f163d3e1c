"""The torch semantics of each box kind: one rule per kind, each returning a kernel.

A kernel is ``kernel(params, *inputs) -> tuple[outputs]``: ``params`` is the box's
entry in a model's store (a mapping of named tensors, or the module of an
``Opaque`` box), inputs and outputs are tensors of shape ``(..., dim)``.
Kernels are module-level functions bound with :func:`functools.partial`, so a
compiled plan pickles and copies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from compinterp.errors import BoxError
from compinterp.syntax import Box

Kernel = Callable[..., tuple[torch.Tensor, ...]]
Params = Mapping[str, torch.Tensor]

def same(x: torch.Tensor) -> torch.Tensor:
    """The identity function."""
    return x


POINTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": same,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "square": torch.square,
    "exp": torch.exp,
    "neg": torch.neg,
    "softplus": F.softplus,
}
"""Each :data:`~compinterp.syntax.ELEMENTWISE` name's torch function."""


def embed(p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``W[x]`` for integer token ids, ``x @ W`` for one-hot or soft rows."""
    if x.is_floating_point():
        return (x @ p["W"],)
    return (F.embedding(x, p["W"]),)


def linear(p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``W x``."""
    return (F.linear(x, p["W"]),)


def affine(p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``W x + b``."""
    return (F.linear(x, p["W"], p["b"]),)


def bilinear(p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``D (L x * R x)``, einsum ``"out hid, hid, hid -> out"`` after the two projections."""
    return (F.linear(F.linear(x, p["L"]) * F.linear(x, p["R"]), p["D"]),)


def bilinear_bias(p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``D ((L x + l) * (R x + r)) + d``."""
    return (F.linear(F.linear(x, p["L"], p["l"]) * F.linear(x, p["R"], p["r"]), p["D"], p["d"]),)


def gated(act: Callable[[torch.Tensor], torch.Tensor], p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``D (act(L x) * R x)``."""
    return (F.linear(act(F.linear(x, p["L"])) * F.linear(x, p["R"]), p["D"]),)


def gated_bias(act: Callable[[torch.Tensor], torch.Tensor], p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``D (act(L x + l) * (R x + r)) + d``."""
    return (F.linear(act(F.linear(x, p["L"], p["l"])) * F.linear(x, p["R"], p["r"]), p["D"], p["d"]),)


def rms_norm(eps: float | None, affine_: bool, p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``x / sqrt(mean(x^2) + eps) * weight``."""
    return (F.rms_norm(x, x.shape[-1:], p["weight"] if affine_ else None, eps),)


def layer_norm(eps: float, affine_: bool, bias: bool, p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``(x - mean) / sqrt(var + eps) * weight + bias``."""
    return (F.layer_norm(x, x.shape[-1:], p["weight"] if affine_ else None, p["bias"] if bias else None, eps),)


def pointwise(fn: Callable[[torch.Tensor], torch.Tensor], p: Any, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``fn`` on every wire."""
    return tuple(fn(x) for x in xs)


def topk(k: int, absolute: bool, p: Any, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``x`` with all but its ``k`` largest (by magnitude if ``absolute``) entries per row zeroed,
    then a ReLU unless ``absolute``.

    >>> x = torch.tensor([[3.0, -5.0, 1.0, 2.0]])
    >>> topk(2, False, None, x)[0], topk(2, True, None, x)[0]
    (tensor([[3., 0., 0., 2.]]), tensor([[ 3., -5.,  0.,  0.]]))
    """
    index = (x.abs() if absolute else x).topk(k, dim=-1).indices
    values = x.gather(-1, index)
    return (torch.zeros_like(x).scatter(-1, index, values if absolute else values.relu()),)


def add(p: Any, *xs: torch.Tensor) -> tuple[torch.Tensor]:
    """The sum of the wires."""
    out = xs[0] + xs[1]
    for x in xs[2:]:
        out = out + x
    return (out,)


def mul(p: Any, *xs: torch.Tensor) -> tuple[torch.Tensor]:
    """The elementwise product of the wires."""
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return (out,)


def attention(heads: int, causal: bool, bias: bool, p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """Multi-head softmax self-attention over axis ``-2``: ``Wo softmax(q k^T / sqrt(dh)) v``."""
    def split(w: str, b: str) -> torch.Tensor:
        y = F.linear(x, p[w], p[b] if bias else None)
        return y.unflatten(-1, (heads, -1)).transpose(-3, -2)

    z = F.scaled_dot_product_attention(split("Wq", "bq"), split("Wk", "bk"), split("Wv", "bv"), is_causal=causal)
    return (F.linear(z.transpose(-3, -2).flatten(-2), p["Wo"], p["bo"] if bias else None),)


def opaque(dims: tuple[int, ...], module: Callable[..., Any], *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Call the wrapped module and check it returns one tensor per output wire, of the wire's last dimension."""
    out = module(*xs)
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    ok = len(outs) == len(dims) and all(
        isinstance(y, torch.Tensor) and (not y.is_floating_point() or y.dim() > 0 and y.shape[-1] == d)
        for y, d in zip(outs, dims))
    if not ok:
        found = ", ".join(str(tuple(y.shape)) if isinstance(y, torch.Tensor) else type(y).__name__ for y in outs)
        raise ValueError(f"its module returned [{found}], expected {len(dims)} tensor(s) with last dimensions {dims}")
    return outs


def kernel(box: Box) -> Kernel:
    """The kernel of one box of a known kind."""
    kind, data = box.kind, box.data
    if kind == "Embed":
        return embed
    if kind in ("Linear", "Unembed"):
        return affine if data["bias"] else linear
    if kind == "Bilinear":
        return bilinear_bias if data["bias"] else bilinear
    if kind == "Gated":
        return partial(gated_bias if data["bias"] else gated, POINTWISE[data["activation"]])
    if kind == "Norm":
        if data["norm"] == "rms":
            return partial(rms_norm, data["eps"], data["affine"])
        return partial(layer_norm, data["eps"], data["affine"], data["bias"])
    if kind == "Elementwise":
        return partial(pointwise, POINTWISE[data["fn"]])
    if kind == "TopK":
        return partial(topk, data["k"], data["absolute"])
    if kind == "Add":
        return add
    if kind == "Mul":
        return mul
    if kind == "Attention":
        return partial(attention, data["heads"], data["causal"], data["bias"])
    if kind == "Opaque":
        return partial(opaque, box.cod.dims)
    raise BoxError(f"no torch semantics for box '{box.name}' of kind {kind}: "
                   "give the functor a rule for it (TorchFunctor(rules={...}))")
