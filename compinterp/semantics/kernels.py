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

from compinterp.syntax import Box

Kernel = Callable[..., tuple[torch.Tensor, ...]]
Params = Mapping[str, torch.Tensor]

def same(x: torch.Tensor) -> torch.Tensor:
    """The identity function."""
    return x


POINTWISE: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": same,
    "relu": torch.relu,
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


def scaled_embed(scale: float, p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``scale * W[x]`` (see :func:`embed`)."""
    return (embed(p, x)[0] * scale,)


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


def rms_norm(eps: float | None, affine_: bool, p: Params, x: torch.Tensor,
             offset: float = 0.0) -> tuple[torch.Tensor]:
    """``x / sqrt(mean(x^2) + eps) * (offset + weight)``."""
    weight = (p["weight"] + offset if offset else p["weight"]) if affine_ else None
    return (F.rms_norm(x, x.shape[-1:], weight, eps),)


def layer_norm(eps: float, affine_: bool, bias: bool, p: Params, x: torch.Tensor,
               offset: float = 0.0) -> tuple[torch.Tensor]:
    """``(x - mean) / sqrt(var + eps) * (offset + weight) + bias``."""
    weight = (p["weight"] + offset if offset else p["weight"]) if affine_ else None
    return (F.layer_norm(x, x.shape[-1:], weight, p["bias"] if bias else None, eps),)


def pointwise(fn: Callable[[torch.Tensor], torch.Tensor], p: Any, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``fn`` on every wire."""
    return tuple(fn(x) for x in xs)


def pointwise1(fn: Callable[[torch.Tensor], torch.Tensor], p: Any, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``fn`` on the one wire (:func:`pointwise` without the loop)."""
    return (fn(x),)


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


def jumprelu(p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``x H(x - theta)``: each feature kept where it exceeds its threshold ``theta``, zero elsewhere.

    >>> jumprelu({"theta": torch.tensor([0.5, 0.5, 2.0])}, torch.tensor([[1.0, 0.5, 1.5]]))[0]
    tensor([[1., 0., 0.]])
    """
    return (x * (x > p["theta"]),)


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


def _has(bias: bool | str, projection: str) -> bool:
    """Whether ``projection`` (``q``, ``k``, ``v`` or ``o``) has a bias under an Attention box's ``bias``."""
    return bias if isinstance(bias, bool) else projection in bias


def rotary(x: torch.Tensor, dim: int, base: float, interleaved: bool = False) -> torch.Tensor:
    """Rotary position embedding of ``x`` (``(..., T, e)``, positions ``0..T-1``) on its first ``dim``
    dimensions: pair ``i`` (dimensions ``i`` and ``i + dim/2``; with ``interleaved``, ``2i`` and
    ``2i + 1`` as in GPT-J) turned by the angle ``t * base^(-2i/dim)``, computed in at least float32.

    >>> x = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    >>> rotary(x, 4, 10000.0)[1], rotary(x, 4, 10000.0, interleaved=True)[1]
    (tensor([0.5403, 0.0000, 0.8415, 0.0000]), tensor([0.5403, 0.8415, 0.0000, 0.0000]))
    """
    exact = torch.promote_types(x.dtype, torch.float32)
    inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=exact, device=x.device) / dim)
    angles = torch.einsum("t, f -> t f", torch.arange(x.shape[-2], dtype=exact, device=x.device), inv_freq)
    angles = angles.repeat_interleave(2, dim=-1) if interleaved else torch.cat((angles, angles), dim=-1)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    turned, rest = x[..., :dim], x[..., dim:]
    if interleaved:
        pairs = turned.unflatten(-1, (-1, 2))
        partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    else:
        first, second = turned.chunk(2, dim=-1)
        partner = torch.cat((-second, first), dim=-1)
    turned = turned * cos + partner * sin
    return torch.cat((turned, rest), dim=-1) if rest.shape[-1] else turned


def _window_mask(t: int, window: int, device: torch.device) -> torch.Tensor:
    """Which keys each query sees under a causal sliding window: ``0 <= query - key < window``."""
    behind = torch.arange(t, device=device)[:, None] - torch.arange(t, device=device)[None, :]
    return (behind >= 0) & (behind < window)


def fixed_pattern(spec: str | list[list[float]], t: int, causal: bool, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    """The ``T x T`` pattern (queries down, keys across) of a named pattern or a given matrix's
    top-left block.

    >>> fixed_pattern("previous", 3, True, torch.device("cpu"), torch.float32)
    tensor([[1., 0., 0.],
            [1., 0., 0.],
            [0., 1., 0.]])
    """
    if not isinstance(spec, str):
        matrix = torch.tensor(spec, device=device, dtype=dtype)
        if matrix.shape[0] < t:
            raise ValueError(f"a fixed pattern of {matrix.shape[0]} positions is shorter than the sequence ({t})")
        return matrix[:t, :t]
    rows = torch.arange(t, device=device)
    if spec == "previous":
        return F.one_hot((rows - 1).clamp(min=0), t).to(dtype)
    if spec == "first":
        return F.one_hot(torch.zeros_like(rows), t).to(dtype)
    if spec == "self":
        return torch.eye(t, device=device, dtype=dtype)
    seen = torch.ones(t, t, device=device, dtype=dtype)
    seen = seen.tril() if causal else seen
    return seen / seen.sum(-1, keepdim=True)


def _projections(heads: int, bias: bool | str, p: Params, x: torch.Tensor, kv_heads: int | None, rotary_dim: int,
                 rotary_base: float, interleaved: bool = False,
                 qk_norm: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values ``(..., heads, T, head_dim)``, keys and values shared across each
    group of query heads, each query and key head RMS-normalised (eps ``qk_norm``, scales ``q_norm``
    and ``k_norm``) if asked, rotary positions applied."""
    def split(w: str, projection: str, n: int) -> torch.Tensor:
        b = p["b" + projection] if _has(bias, projection) else None
        return F.linear(x, p[w], b).unflatten(-1, (n, -1)).transpose(-3, -2)

    kv = kv_heads or heads
    q, k, v = split("Wq", "q", heads), split("Wk", "k", kv), split("Wv", "v", kv)
    if qk_norm is not None:
        q = F.rms_norm(q, q.shape[-1:], p["q_norm"], qk_norm)
        k = F.rms_norm(k, k.shape[-1:], p["k_norm"], qk_norm)
    if rotary_dim:
        q, k = rotary(q, rotary_dim, rotary_base, interleaved), rotary(k, rotary_dim, rotary_base, interleaved)
    if kv != heads:
        k, v = k.repeat_interleave(heads // kv, dim=-3), v.repeat_interleave(heads // kv, dim=-3)
    return q, k, v


def _visible(keep: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor:
    """The keys each query sees, ``(..., 1, T, T)``, under a padded Attention box's ``keep`` wire
    ``(..., T, 1)``: the tokens (behind it if causal, within the window if any); a query that
    would see none (padding before any token) sees itself, so that no NaN reaches the tokens."""
    t, device = keep.shape[-2], keep.device
    seen = (keep[..., 0] > 0)[..., None, None, :]
    if window is not None:
        seen = seen & _window_mask(t, window, device)
    elif causal:
        seen = seen & torch.ones(t, t, dtype=torch.bool, device=device).tril()
    alone = ~seen.any(-1, keepdim=True)
    return seen | (alone & torch.eye(t, dtype=torch.bool, device=device))


def attention_pattern(heads: int, causal: bool, bias: bool | str, p: Params, x: torch.Tensor,
                      keep: torch.Tensor | None = None, *, kv_heads: int | None = None, rotary_dim: int = 0,
                      rotary_base: float = 10000.0, rotary_interleaved: bool = False, scale: float | None = None,
                      window: int | None = None, patterns: dict[str, Any] | None = None,
                      qk_norm: float | None = None) -> torch.Tensor:
    """Each head's attention pattern ``softmax(scale q k^T)`` over the sequence axis ``-2`` of ``x``,
    ``(..., heads, T, T)`` (queries down, keys across), fixed heads given by ``patterns``."""
    q, k, _ = _projections(heads, bias, p, x, kv_heads, rotary_dim, rotary_base, rotary_interleaved, qk_norm)
    t = x.shape[-2]
    scores = torch.einsum("... h q e, ... h k e -> ... h q k", q, k) * (scale or q.shape[-1] ** -0.5)
    if window is not None:
        scores = scores.masked_fill(~_window_mask(t, window, x.device), float("-inf"))
    elif causal:
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
    if keep is not None:
        scores = scores.masked_fill(~_visible(keep, causal, window), float("-inf"))
    weights = scores.softmax(-1)
    if patterns:
        fixed = torch.zeros(heads, dtype=torch.bool, device=x.device)
        table = torch.zeros(heads, t, t, dtype=weights.dtype, device=x.device)
        for head, spec in patterns.items():
            fixed[int(head)] = True
            table[int(head)] = fixed_pattern(spec, t, causal, x.device, weights.dtype)
        weights = torch.where(fixed[:, None, None], table, weights)
    return weights


def attention_heads(heads: int, causal: bool, bias: bool | str, p: Params, x: torch.Tensor,
                    keep: torch.Tensor | None = None, *, kv_heads: int | None = None, rotary_dim: int = 0,
                    rotary_base: float = 10000.0, rotary_interleaved: bool = False, scale: float | None = None,
                    window: int | None = None, patterns: dict[str, Any] | None = None,
                    qk_norm: float | None = None) -> torch.Tensor:
    """Each head's output before the output projection, ``(..., T, heads, head_dim)``:
    ``softmax(scale q k^T) v`` per head over the sequence axis ``-2`` of ``x``, with ``kv_heads``
    key/value heads each shared by ``heads / kv_heads`` consecutive query heads, rotary positions
    on the first ``rotary_dim`` dimensions of queries and keys (on adjacent pairs if
    ``rotary_interleaved``; after RMS norms on each query and key head if ``qk_norm``), a sliding
    causal ``window``, no key where ``keep`` (a padded box's second wire) is 0, and the heads named
    in ``patterns`` attending by their fixed pattern instead."""
    if patterns:
        weights = attention_pattern(heads, causal, bias, p, x, keep, kv_heads=kv_heads, rotary_dim=rotary_dim,
                                    rotary_base=rotary_base, rotary_interleaved=rotary_interleaved, scale=scale,
                                    window=window, patterns=patterns, qk_norm=qk_norm)
        v = _projections(heads, bias, p, x, kv_heads, rotary_dim, rotary_base)[2]
        return torch.einsum("... h q k, ... h k e -> ... q h e", weights, v)
    q, k, v = _projections(heads, bias, p, x, kv_heads, rotary_dim, rotary_base, rotary_interleaved, qk_norm)
    if keep is not None:
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=_visible(keep, causal, window), scale=scale)
    elif window is not None and window < x.shape[-2]:
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=_window_mask(x.shape[-2], window, x.device),
                                           scale=scale)
    else:
        z = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    return z.transpose(-3, -2)


def attention_out(bias: bool | str, p: Params, z: torch.Tensor) -> torch.Tensor:
    """The heads summed through the output projection: einsum ``"... t h e, d (h e) -> ... t d"`` plus ``bo``."""
    return F.linear(z.flatten(-2), p["Wo"], p["bo"] if _has(bias, "o") else None)


def attention(heads: int, causal: bool, bias: bool | str, p: Params, x: torch.Tensor,
              keep: torch.Tensor | None = None, **settings: Any) -> tuple[torch.Tensor]:
    """Multi-head softmax self-attention over axis ``-2``: ``Wo softmax(q k^T / sqrt(dh)) v``
    (``keep`` and ``settings`` as for :func:`attention_heads`)."""
    return (attention_out(bias, p, attention_heads(heads, causal, bias, p, x, keep, **settings)),)


def pos_embed(offset: int, p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``x + W[offset : offset + T]`` over the sequence axis ``-2`` of ``x``; refuses sequences longer than
    the table."""
    t, positions = x.shape[-2], p["W"].shape[0] - offset
    if t > positions:
        raise ValueError(f"a sequence of {t} positions is longer than its table of {positions} positions")
    return (x + p["W"][offset:offset + t],)


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], axes: int, x: torch.Tensor) -> torch.Tensor:
    """``fn`` (a torch op on ``(N, C, *spatial)`` with ``axes`` spatial axes) on ``x`` with any leading axes."""
    lead = x.shape[:-(axes + 1)]
    y = fn(x.reshape(-1, *x.shape[-(axes + 1):]))
    return y.reshape(*lead, *y.shape[1:])


_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv(stride: list[int], padding: list[int] | str, dilation: list[int], groups: int, padding_mode: str,
         bias: bool, p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """A convolution over the last ``len(stride)`` axes of ``(..., C, *spatial)``: torch's ``conv1d``,
    ``conv2d`` or ``conv3d`` with ``W`` (and ``b``), the input padded first unless ``padding_mode`` is
    ``"zeros"``."""
    axes = len(stride)
    if padding_mode != "zeros":
        x = F.pad(x, [side for pad in reversed(padding) for side in (pad, pad)], mode=padding_mode)
        padding = 0
    op = partial(_CONVS[axes], weight=p["W"], bias=p["b"] if bias else None, stride=stride, padding=padding,
                 dilation=dilation, groups=groups)
    return (_batched(op, axes, x),)


def channel_affine(spatial: int, bias: bool, p: Params, x: torch.Tensor) -> tuple[torch.Tensor]:
    """``weight[c] * x + bias[c]`` on the channel axis ``-(spatial + 1)``."""
    shape = (-1,) + (1,) * spatial
    y = x * p["weight"].reshape(shape)
    return (y + p["bias"].reshape(shape) if bias else y,)


def pool(data: Mapping[str, Any], p: Any, x: torch.Tensor) -> tuple[torch.Tensor]:
    """Max or average pooling over the last axes, as a :class:`~compinterp.syntax.Pool` box's ``data`` says."""
    mode = data["mode"]
    if mode.startswith("adaptive"):
        axes = len(data["output"])
        fn = getattr(F, f"{mode}_pool{axes}d")
        return (_batched(partial(fn, output_size=data["output"]), axes, x),)
    axes = len(data["kernel"])
    settings = {key: data[key] for key in ("stride", "padding", "ceil_mode", "dilation", "count_include_pad")
                if key in data}
    fn = getattr(F, f"{mode}_pool{axes}d")
    return (_batched(partial(fn, kernel_size=data["kernel"], **settings), axes, x),)


def flatten(axes: int, p: Any, x: torch.Tensor) -> tuple[torch.Tensor]:
    """The last ``axes`` axes merged into one."""
    return (x.flatten(-axes),)


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


def _affine(box: Box) -> Kernel:
    return affine if box.data["bias"] else linear


def _norm(box: Box) -> Kernel:
    data = box.data
    extra = {"offset": data["offset"]} if "offset" in data else {}
    if data["norm"] == "rms":
        return partial(rms_norm, data["eps"], data["affine"], **extra)
    return partial(layer_norm, data["eps"], data["affine"], data["bias"], **extra)


def _attention(kernel: Callable[..., Any], box: Box) -> Callable[..., Any]:
    """``kernel`` (:func:`attention` or :func:`attention_heads`) bound to an Attention box's data."""
    data = box.data
    keys = ("kv_heads", "rotary_dim", "rotary_base", "rotary_interleaved", "scale", "window", "patterns", "qk_norm")
    settings = {key: data[key] for key in keys if key in data}
    return partial(kernel, data["heads"], data["causal"], data["bias"], **settings)


RULES: dict[str, Callable[[Box], Kernel]] = {
    "Embed": lambda box: partial(scaled_embed, box.data["scale"]) if "scale" in box.data else embed,
    "Linear": _affine,
    "Unembed": _affine,
    "Bilinear": lambda box: bilinear_bias if box.data["bias"] else bilinear,
    "Gated": lambda box: partial(gated_bias if box.data["bias"] else gated, POINTWISE[box.data["activation"]]),
    "Norm": _norm,
    "Elementwise": lambda box: partial(pointwise1 if len(box.dom) == 1 else pointwise, POINTWISE[box.data["fn"]]),
    "TopK": lambda box: partial(topk, box.data["k"], box.data["absolute"]),
    "JumpReLU": lambda box: jumprelu,
    "Add": lambda box: add,
    "Mul": lambda box: mul,
    "Attention": partial(_attention, attention),
    "PosEmbed": lambda box: partial(pos_embed, box.data.get("offset", 0)),
    "Conv": lambda box: partial(conv, box.data["stride"], box.data["padding"], box.data["dilation"],
                                box.data["groups"], box.data.get("padding_mode", "zeros"), box.data["bias"]),
    "ChannelAffine": lambda box: partial(channel_affine, box.data["spatial"], box.data["bias"]),
    "Pool": lambda box: partial(pool, dict(box.data)),
    "Flatten": lambda box: partial(flatten, len(box.data["shape"])),
    "Opaque": lambda box: partial(opaque, box.cod.dims),
}
"""The built-in torch semantics: for each box kind, the rule that gives a box its kernel."""


HeadKernels = tuple[Callable[[Params, torch.Tensor], torch.Tensor], Callable[[Params, torch.Tensor], torch.Tensor]]

PATTERN: dict[str, Callable[[Box], Callable[[Params, torch.Tensor], torch.Tensor]]] = {
    "Attention": partial(_attention, attention_pattern),
}
"""For each kind with heads, the rule giving a box's attention patterns ``(..., H, T, T)`` on its input."""

HEADS: dict[str, Callable[[Box], HeadKernels]] = {
    "Attention": lambda box: (_attention(attention_heads, box), partial(attention_out, box.data["bias"])),
}
"""For each kind with heads, the rule giving a box's two halves: ``heads(p, x) -> z (..., T, H, dh)``
and ``out(p, z) -> y``, with ``out(p, heads(p, x))`` its kernel's output; sites on heads cut there."""
