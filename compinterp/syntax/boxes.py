"""The box vocabulary: the generators that networks we explain are built from.

Each kind states its spaces, its hyperparameters (JSON, in ``data``) and the
shapes of the parameters it reads from a model's store. What a box computes is
the semantics' business (``compinterp.semantics``), not the syntax's.

>>> resid, hidden = Space("resid", 64), Space("hidden", 256)
>>> mlp = Bilinear("mlp0", resid, resid, hidden=256)
>>> mlp.param_shapes()
{'L': (256, 64), 'R': (256, 64), 'D': (64, 256)}
>>> block = residual(mlp)
>>> [box.kind for box in block.boxes]
['Copy', 'Bilinear', 'Add']
>>> Linear("up", resid, hidden) >> Linear("down", Space("hidden", 128), resid)
Traceback (most recent call last):
...
compinterp.errors.CompositionError: cannot compose up (resid:64 -> hidden:256) with down (hidden:128 -> resid:64): output 0 is hidden:256, made by box 'up' (resid:64 -> hidden:256), but the next diagram needs hidden:128 there, for box 'down' (hidden:128 -> resid:64)
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from compinterp.errors import BoxError
from compinterp.syntax.diagram import Box, Diagram, Id, Swap
from compinterp.syntax.spaces import MAX_NAME, Space

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")

MAX_LEGS = 1024
"""The most wires a spider (copy, add, multiply) joins."""

ELEMENTWISE = ("identity", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "square", "exp", "neg", "softplus")
"""Names of the pointwise functions an :class:`Elementwise` box may apply."""

NORMS = ("rms", "layer")

PATTERNS = ("previous", "first", "self", "uniform")
"""Attention patterns a head may be fixed to by name: each query attends to the previous position
(position 0 to itself), to the first position, to itself, or evenly to every key it sees."""


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise BoxError(f"{kind} box name {name!r:.{MAX_NAME + 2}} is not valid: use up to {MAX_NAME} letters, digits, "
                       "'_' or '-', starting with a letter (names key the parameters, so no '.')")
    return name


def _one_wire(kind: str, name: str, role: str, space: Space) -> Space:
    if not isinstance(space, Space):
        raise BoxError(f"{kind} box '{name}': {role} must be a Space, got {space!r}")
    if len(space) != 1:
        raise BoxError(f"{kind} box '{name}': {role} must be one wire, got {space} ({len(space)} wires)")
    return space


def _positive(kind: str, name: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BoxError(f"{kind} box '{name}': {what} must be a positive integer, got {value!r}")
    return value


class Kind(Box):
    """Base of the box kinds: a constructor per kind and the parameter shapes it needs."""

    kind: ClassVar[str] = "Kind"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each named parameter this box reads from the store."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """The box as JSON: kind, name, spaces and hyperparameters."""
        return {"kind": self.kind, "name": self.name, "dom": self.dom.to_json(),
                "cod": self.cod.to_json(), "data": dict(self.data)}


class Embed(Kind):
    """Token ids (or one-hot rows) on ``tokens:V`` to vectors: ``y = W[i]`` or ``y = x W``, times
    ``scale`` when one is given (Gemma scales by ``sqrt(dim)``; not written in ``data`` otherwise).

    >>> Embed("embed", Space("tokens", 5), Space("resid", 4), scale=2.0).data
    {'scale': 2.0}
    """

    kind = "Embed"
    polynomial = True

    def __init__(self, name: str, dom: Space, cod: Space, scale: float | None = None) -> None:
        _check_name(self.kind, name)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 0):
            raise BoxError(f"Embed box '{name}': scale must be a non-zero number, got {scale!r}")
        super().__init__(name, _one_wire(self.kind, name, "input", dom),
                         _one_wire(self.kind, name, "output", cod), {} if scale is None else {"scale": float(scale)})

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.dom.dim, self.cod.dim)}


class Linear(Kind):
    """An affine map ``y = W x + b`` with ``W : out x in``."""

    kind = "Linear"
    polynomial = True
    affine = True

    def __init__(self, name: str, dom: Space, cod: Space, bias: bool = False) -> None:
        _check_name(self.kind, name)
        super().__init__(name, _one_wire(self.kind, name, "input", dom),
                         _one_wire(self.kind, name, "output", cod), {"bias": bool(bias)})

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {"W": (self.cod.dim, self.dom.dim)}
        if self.data["bias"]:
            shapes["b"] = (self.cod.dim,)
        return shapes


class PosEmbed(Kind):
    """Learned absolute positions: adds row ``offset + t`` of a table ``W : positions x dim`` to
    position ``t`` of a ``(..., T, dim)`` wire, for ``offset + T`` up to ``positions`` (``offset``,
    default 0 and then not written in ``data``: OPT's tables start at row 2).

    >>> PosEmbed("pos", Space("resid", 8), positions=16).param_shapes()
    {'W': (16, 8)}
    >>> PosEmbed("pos", Space("resid", 8), positions=16, offset=2).data
    {'positions': 16, 'offset': 2}
    """

    kind = "PosEmbed"

    def __init__(self, name: str, space: Space, positions: int, offset: int = 0) -> None:
        _check_name(self.kind, name)
        _one_wire(self.kind, name, "space", space)
        data = {"positions": _positive(self.kind, name, "positions", positions)}
        if offset:
            if _positive(self.kind, name, "offset", offset) >= positions:
                raise BoxError(f"PosEmbed box '{name}': offset {offset} leaves no row of its {positions} positions")
            data["offset"] = offset
        super().__init__(name, space, space, data)

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, dom, **data)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.data["positions"], self.dom.dim)}


class Unembed(Linear):
    """The final map to logits; computes like :class:`Linear`, marked as the readout."""

    kind = "Unembed"


class Bilinear(Kind):
    """A bilinear layer ``y = D((L x + l) * (R x + r)) + d`` through ``hidden`` units."""

    kind = "Bilinear"
    polynomial = True
    gated = True

    def __init__(self, name: str, dom: Space, cod: Space, hidden: int, bias: bool = False) -> None:
        _check_name(self.kind, name)
        super().__init__(name, _one_wire(self.kind, name, "input", dom),
                         _one_wire(self.kind, name, "output", cod),
                         {"hidden": _positive(self.kind, name, "hidden", hidden), "bias": bool(bias)})

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        h, i, o = self.data["hidden"], self.dom.dim, self.cod.dim
        shapes = {"L": (h, i), "R": (h, i), "D": (o, h)}
        if self.data["bias"]:
            shapes |= {"l": (h,), "r": (h,), "d": (o,)}
        return shapes


class Gated(Bilinear):
    """A gated layer ``y = D(act(L x + l) * (R x + r)) + d`` (GLU, SwiGLU, GeGLU)."""

    kind = "Gated"
    polynomial = False

    def __init__(self, name: str, dom: Space, cod: Space, hidden: int, activation: str = "silu",
                 bias: bool = False) -> None:
        super().__init__(name, dom, cod, hidden, bias)
        if activation not in ELEMENTWISE:
            raise BoxError(f"Gated box '{name}': unknown activation {activation!r}; "
                           f"choose one of {', '.join(ELEMENTWISE)}")
        self.data["activation"] = activation


class Norm(Kind):
    """RMS or layer normalisation over the wire, with an optional learned scale (and shift); the scale
    is ``offset + weight`` when an ``offset`` is given (Gemma's ``1 + w``; not written in ``data``
    otherwise)."""

    kind = "Norm"

    def __init__(self, name: str, space: Space, norm: str = "rms", eps: float | None = 1e-5,
                 affine: bool = True, bias: bool | None = None, offset: float = 0.0) -> None:
        _check_name(self.kind, name)
        _one_wire(self.kind, name, "space", space)
        if norm not in NORMS:
            raise BoxError(f"Norm box '{name}': norm must be one of {NORMS}, got {norm!r}")
        if norm == "layer" and eps is None:
            raise BoxError(f"Norm box '{name}': layer norm needs a numeric eps")
        bias = (norm == "layer" and affine) if bias is None else bool(bias)
        if bias and not affine:
            raise BoxError(f"Norm box '{name}': a bias needs affine=True")
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or (offset and not affine):
            raise BoxError(f"Norm box '{name}': offset must be a number, and needs affine=True; got {offset!r}")
        super().__init__(name, space, space, {"norm": norm, "eps": None if eps is None else float(eps),
                                              "affine": bool(affine), "bias": bias}
                         | ({"offset": float(offset)} if offset else {}))

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, dom, **data)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        n = self.dom.dim
        shapes = {"weight": (n,)} if self.data["affine"] else {}
        if self.data["bias"]:
            shapes["bias"] = (n,)
        return shapes


class Elementwise(Kind):
    """A pointwise function on every wire of ``space`` (``relu``, ``gelu``, ``square`` ...)."""

    kind = "Elementwise"
    polymorphic = True

    def __init__(self, fn: str, space: Space, name: str | None = None) -> None:
        if fn not in ELEMENTWISE:
            raise BoxError(f"Elementwise box: unknown function {fn!r}; choose one of {', '.join(ELEMENTWISE)}")
        name = _check_name(self.kind, name or fn)
        if not isinstance(space, Space):
            raise BoxError(f"Elementwise box '{name}': space must be a Space, got {space!r}")
        super().__init__(name, space, space, {"fn": fn})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Elementwise:
        data = dict(data)
        return cls(data.pop("fn"), dom, name, **data)

    @property
    def polynomial(self) -> bool:  # type: ignore[override]
        return self.data["fn"] in ("identity", "square", "neg")


class TopK(Kind):
    """Keep the ``k`` largest of a wire's features per example and zero the rest, then a ReLU
    (TopK sparse autoencoders); ``absolute=True`` keeps the ``k`` of largest magnitude, signs and
    all (bilinear autoencoders, whose features have either sign).

    >>> TopK("keep", Space("features", 4), k=2).data
    {'k': 2, 'absolute': False}
    >>> TopK("keep", Space("features", 4), k=5)
    Traceback (most recent call last):
    ...
    compinterp.errors.BoxError: TopK box 'keep': k must be from 1 to the width 4 of features:4, got 5
    """

    kind = "TopK"

    def __init__(self, name: str, space: Space, k: int, absolute: bool = False) -> None:
        _check_name(self.kind, name)
        width = _one_wire(self.kind, name, "space", space).dim
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width:
            raise BoxError(f"TopK box '{name}': k must be from 1 to the width {width} of {space}, got {k!r}")
        super().__init__(name, space, space, {"k": k, "absolute": bool(absolute)})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, dom, **data)


class Spider(Kind):
    """Base of the spiders (Frobenius structure on one space): copy, add, multiply; no parameters."""

    polynomial = True
    spider = True
    polymorphic = True


class Copy(Spider):
    """The copy spider ``x -> x @ ... @ x`` (``n`` copies; ``n = 0`` discards)."""

    kind = "Copy"

    def __init__(self, space: Space, n: int = 2, name: str = "copy") -> None:
        _one_wire(self.kind, name, "space", space)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_LEGS:
            raise BoxError(f"Copy box '{name}': n must be an integer from 0 to {MAX_LEGS}, got {n!r:.40}")
        super().__init__(_check_name(self.kind, name), space, Space(*[space.inside[0]] * n), {"n": n})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Copy:
        return cls(dom, name=name, **data)


class _Merge(Spider):
    """A spider ``x @ ... @ x -> x`` merging ``n`` wires, ``n`` at least :attr:`least`."""

    least: ClassVar[int] = 0

    def __init__(self, space: Space, n: int = 2, name: str | None = None) -> None:
        name = self.kind.lower() if name is None else name
        _one_wire(self.kind, name, "space", space)
        if isinstance(n, bool) or not isinstance(n, int) or not self.least <= n <= MAX_LEGS:
            raise BoxError(f"{self.kind} box '{name}': n must be an integer from {self.least} to {MAX_LEGS}, "
                           f"got {n!r:.40}")
        super().__init__(_check_name(self.kind, name), Space(*[space.inside[0]] * n), space, {"n": n})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(cod, name=name, **data)


class Add(_Merge):
    """The adding spider ``x @ ... @ x -> x`` (``n`` summands; ``n = 0`` is zero)."""

    kind = "Add"


class Mul(_Merge):
    """The elementwise (Hadamard) product ``x @ ... @ x -> x`` of ``n`` wires."""

    kind = "Mul"
    least = 1


KEEP = Space("keep", 1)
"""The padding-mask wire of a padded :class:`Attention` box: ``(..., T, 1)``, 1.0 for a token, 0.0 for padding."""


class Attention(Kind):
    """Multi-head softmax self-attention over the sequence axis (``-2``) of ``space``.

    The head structure is data: ``kv_heads`` key/value heads shared by groups of query heads
    (grouped-query attention; default one per head), rotary position embeddings on the first
    ``rotary_dim`` dimensions of each query and key head (0: none) with base ``rotary_base``, on
    pairs ``(i, i + rotary_dim/2)``, or on adjacent pairs with ``rotary_interleaved`` (GPT-J),
    the logits' ``scale`` (default ``1/sqrt(head_dim)``), a sliding ``window`` of keys (default
    all), and ``bias``: ``True`` for all four projections, or the letters of those that have
    one (``"qkv"``). ``patterns`` fixes heads' attention patterns (a hypothesis about them):
    ``{head: name}`` with a name of :data:`PATTERNS`, or ``{head: T x T matrix}`` (lists; a
    shorter sequence reads its top-left block). ``padded=True`` adds a second input wire,
    :data:`KEEP` (``(..., T, 1)``: 1 for a token, 0 for padding), and no query attends to a
    padding key. ``qk_norm`` (an eps) RMS-normalises each query and key head before rotary, scaled
    by the parameters ``q_norm`` and ``k_norm`` (Qwen3). Settings left at their defaults are not
    written into ``data``.

    >>> a = Attention("attn", Space("resid", 8), heads=4, kv_heads=2, rotary_dim=2, bias="qkv")
    >>> a.data
    {'heads': 4, 'head_dim': 2, 'causal': True, 'bias': 'qkv', 'kv_heads': 2, 'rotary_dim': 2, 'rotary_base': 10000.0}
    >>> a.param_shapes()
    {'Wq': (8, 8), 'Wk': (4, 8), 'Wv': (4, 8), 'Wo': (8, 8), 'bq': (8,), 'bk': (4,), 'bv': (4,)}
    """

    kind = "Attention"
    has_heads = True

    def __init__(self, name: str, space: Space, heads: int, head_dim: int | None = None,
                 causal: bool = True, bias: bool | str = False, kv_heads: int | None = None,
                 rotary_dim: int = 0, rotary_base: float = 10000.0, rotary_interleaved: bool = False,
                 scale: float | None = None, window: int | None = None,
                 patterns: dict[int | str, str | list[list[float]]] | None = None, padded: bool = False,
                 qk_norm: float | None = None) -> None:
        _check_name(self.kind, name)
        d = _one_wire(self.kind, name, "space", space).dim
        _positive(self.kind, name, "heads", heads)
        if head_dim is None:
            if d % heads:
                raise BoxError(f"Attention box '{name}': {space} is not divisible into {heads} heads; "
                               "give head_dim")
            head_dim = d // heads
        _positive(self.kind, name, "head_dim", head_dim)
        data: dict[str, Any] = {"heads": heads, "head_dim": head_dim, "causal": bool(causal),
                                "bias": _attention_bias(name, bias)}
        if kv_heads is not None and kv_heads != heads:
            if _positive(self.kind, name, "kv_heads", kv_heads) > heads or heads % kv_heads:
                raise BoxError(f"Attention box '{name}': kv_heads must divide heads ({heads}), got {kv_heads}")
            data["kv_heads"] = kv_heads
        if rotary_dim:
            if _positive(self.kind, name, "rotary_dim", rotary_dim) > head_dim or rotary_dim % 2:
                raise BoxError(f"Attention box '{name}': rotary_dim must be even and at most head_dim "
                               f"({head_dim}), got {rotary_dim}")
            if isinstance(rotary_base, bool) or not isinstance(rotary_base, (int, float)) or rotary_base <= 0:
                raise BoxError(f"Attention box '{name}': rotary_base must be a positive number, got {rotary_base!r}")
            data |= {"rotary_dim": rotary_dim, "rotary_base": float(rotary_base)}
            if rotary_interleaved:
                data["rotary_interleaved"] = True
        if scale is not None:
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
                raise BoxError(f"Attention box '{name}': scale must be a positive number, got {scale!r}")
            data["scale"] = float(scale)
        if window is not None:
            if not causal:
                raise BoxError(f"Attention box '{name}': a sliding window needs causal=True")
            data["window"] = _positive(self.kind, name, "window", window)
        if patterns:
            data["patterns"] = _patterns(name, patterns, heads)
        if padded:
            data["padded"] = True
        if qk_norm is not None:
            if isinstance(qk_norm, bool) or not isinstance(qk_norm, (int, float)) or qk_norm < 0:
                raise BoxError(f"Attention box '{name}': qk_norm must be a non-negative eps, got {qk_norm!r}")
            data["qk_norm"] = float(qk_norm)
        super().__init__(name, space @ KEEP if padded else space, space, data)

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, cod, **data)

    def biases(self) -> str:
        """The letters of the projections (``q``, ``k``, ``v``, ``o``) that have a bias."""
        bias = self.data["bias"]
        return ("qkvo" if bias else "") if isinstance(bias, bool) else bias

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        d, dh = self.cod.dim, self.data["head_dim"]
        inner, kv = self.data["heads"] * dh, self.data.get("kv_heads", self.data["heads"]) * dh
        shapes = {"Wq": (inner, d), "Wk": (kv, d), "Wv": (kv, d), "Wo": (d, inner)}
        sizes = {"q": inner, "k": kv, "v": kv, "o": d}
        norms = {"q_norm": (dh,), "k_norm": (dh,)} if "qk_norm" in self.data else {}
        return shapes | {f"b{p}": (sizes[p],) for p in self.biases()} | norms


def _patterns(name: str, patterns: Any, heads: int) -> dict[str, str | list[list[float]]]:
    """Fixed head patterns as an Attention box stores them: head indices as strings, checked."""
    if not isinstance(patterns, dict):
        raise BoxError(f"Attention box '{name}': patterns must be a mapping {{head: pattern}}, got {patterns!r}")
    out: dict[str, str | list[list[float]]] = {}
    for head, spec in patterns.items():
        index = int(head) if isinstance(head, str) and head.isdigit() else head
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < heads:
            raise BoxError(f"Attention box '{name}': patterns name head {head!r}, but the heads are 0 to {heads - 1}")
        square = isinstance(spec, list) and spec and all(
            isinstance(row, list) and len(row) == len(spec)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row) for row in spec)
        if spec not in PATTERNS and not square:
            raise BoxError(f"Attention box '{name}': head {index}'s pattern must be one of {', '.join(PATTERNS)} "
                           f"or a square matrix (a list of rows), got {spec!r:.80}")
        out[str(index)] = spec if isinstance(spec, str) else [[float(v) for v in row] for row in spec]
    return dict(sorted(out.items(), key=lambda item: int(item[0])))


def _attention_bias(name: str, bias: Any) -> bool | str:
    """``bias`` as an Attention box stores it: a bool for all or none, else the letters in ``qkvo`` order."""
    if isinstance(bias, bool):
        return bias
    if not isinstance(bias, str) or set(bias) - set("qkvo") or len(set(bias)) != len(bias):
        raise BoxError(f"Attention box '{name}': bias must be a bool or letters of 'qkvo' "
                       f"(the projections with a bias), got {bias!r}")
    letters = "".join(p for p in "qkvo" if p in bias)
    return {"": False, "qkvo": True}.get(letters, letters)


def _sizes(kind: str, name: str, what: str, value: Any, axes: int, least: int = 1) -> list[int]:
    """``value`` (one integer or one per axis) as a list of ``axes`` integers, each at least ``least``."""
    sizes = [value] * axes if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(sizes, (list, tuple)) or len(sizes) != axes
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in sizes)):
        raise BoxError(f"{kind} box '{name}': {what} must be an integer at least {least}, or {axes} of them, "
                       f"got {value!r:.60}")
    return list(sizes)


def _check_width(kind: str, name: str, dom: Space, cod: Space, width: int) -> None:
    """Raise unless ``cod`` has the output width that ``dom``'s width gives."""
    if width != cod.dim:
        raise BoxError(f"{kind} box '{name}': input width {dom.dim} ({dom}) gives output width {width}, "
                       f"but the output is {cod}")


CONV_PADDING = ("zeros", "reflect", "replicate", "circular")
"""How a :class:`Conv` box pads its input (torch's ``padding_mode``)."""


class Conv(Kind):
    """A convolution over the last ``len(kernel)`` axes of channels-first tensors ``(..., C, *spatial)``,
    as torch's ``Conv1d``/``Conv2d``/``Conv3d``: a linear map applied to every patch, with
    ``W : out_channels x (in_channels / groups) x *kernel`` and ``stride``, ``padding`` (numbers, or
    ``"same"``), ``padding_mode`` (written when not ``"zeros"``), ``dilation`` and ``groups`` as data.
    The wires are the last axis (the width), so the output width is fixed by the input's.

    >>> c = Conv("conv", Space("x", 32), Space("y", 16), in_channels=3, out_channels=8, kernel=[3, 3],
    ...          stride=2, padding=1, bias=True)
    >>> c.param_shapes()
    {'W': (8, 3, 3, 3), 'b': (8,)}
    >>> Conv("conv", Space("x", 32), Space("y", 32), in_channels=3, out_channels=8, kernel=[3, 3])
    Traceback (most recent call last):
    ...
    compinterp.errors.BoxError: Conv box 'conv': input width 32 (x:32) gives output width 30, but the output is y:32
    """

    kind = "Conv"

    def __init__(self, name: str, dom: Space, cod: Space, in_channels: int, out_channels: int,
                 kernel: int | list[int], stride: int | list[int] = 1, padding: int | list[int] | str = 0,
                 dilation: int | list[int] = 1, groups: int = 1, bias: bool = False,
                 padding_mode: str = "zeros") -> None:
        _check_name(self.kind, name)
        _one_wire(self.kind, name, "input", dom)
        _one_wire(self.kind, name, "output", cod)
        axes = 1 if isinstance(kernel, int) else len(kernel) if isinstance(kernel, (list, tuple)) else 0
        if not 1 <= axes <= 3:
            raise BoxError(f"Conv box '{name}': kernel must be an integer or 1 to 3 of them, got {kernel!r:.60}")
        kernel = _sizes(self.kind, name, "kernel", kernel, axes)
        stride = _sizes(self.kind, name, "stride", stride, axes)
        dilation = _sizes(self.kind, name, "dilation", dilation, axes)
        if padding not in ("same", "valid"):
            padding = _sizes(self.kind, name, "padding", padding, axes, least=0)
        elif padding == "valid":
            padding = [0] * axes
        elif stride != [1] * axes:
            raise BoxError(f"Conv box '{name}': padding 'same' needs stride 1, got {stride}")
        for what, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            _positive(self.kind, name, what, value)
        if in_channels % groups or out_channels % groups:
            raise BoxError(f"Conv box '{name}': groups ({groups}) must divide in_channels ({in_channels}) "
                           f"and out_channels ({out_channels})")
        if padding_mode not in CONV_PADDING:
            raise BoxError(f"Conv box '{name}': padding_mode must be one of {', '.join(CONV_PADDING)}, "
                           f"got {padding_mode!r:.40}")
        span = dilation[-1] * (kernel[-1] - 1) + 1
        pad = 0 if padding == "same" else padding[-1]
        width = dom.dim if padding == "same" else (dom.dim + 2 * pad - span) // stride[-1] + 1
        _check_width(self.kind, name, dom, cod, width)
        data: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels, "kernel": kernel,
                                "stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
                                "bias": bool(bias)}
        super().__init__(name, dom, cod, data | ({"padding_mode": padding_mode} if padding_mode != "zeros" else {}))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.data
        shapes = {"W": (d["out_channels"], d["in_channels"] // d["groups"], *d["kernel"])}
        return shapes | ({"b": (d["out_channels"],)} if d["bias"] else {})


class ChannelAffine(Kind):
    """``y = weight[c] * x + bias[c]`` on the channel axis of channels-first tensors ``(..., C, *spatial)``
    (``spatial`` axes after it): batch norm in eval mode, its running statistics folded into the two,
    or a learned per-channel scale (``bias=False``).

    >>> ChannelAffine("bn", Space("x", 8), channels=4, spatial=2).param_shapes()
    {'weight': (4,), 'bias': (4,)}
    """

    kind = "ChannelAffine"

    def __init__(self, name: str, space: Space, channels: int, spatial: int = 0, bias: bool = True) -> None:
        _check_name(self.kind, name)
        _one_wire(self.kind, name, "space", space)
        if isinstance(spatial, bool) or not isinstance(spatial, int) or not 0 <= spatial <= 3:
            raise BoxError(f"ChannelAffine box '{name}': spatial must be 0 to 3 axes, got {spatial!r:.40}")
        if spatial == 0 and channels != space.dim:
            raise BoxError(f"ChannelAffine box '{name}': with no spatial axes the channels are the wire {space}, "
                           f"got {channels} channels")
        super().__init__(name, space, space, {"channels": _positive(self.kind, name, "channels", channels),
                                              "spatial": spatial, "bias": bool(bias)})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, dom, **data)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.data["channels"]
        return {"weight": (c,)} | ({"bias": (c,)} if self.data["bias"] else {})


POOLS = ("max", "avg", "adaptive_max", "adaptive_avg")
"""What a :class:`Pool` box takes over each window: its maximum or its mean, over fixed windows or
over ``output`` equal parts (adaptive)."""


class Pool(Kind):
    """Max or average pooling over the last ``len(kernel)`` (or ``len(output)``) axes, as torch's
    ``MaxPool2d``, ``AvgPool2d`` (``kernel``, ``stride``, ``padding``, ``ceil_mode``; ``dilation`` for
    max, ``count_include_pad`` for avg) and ``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d`` (``output``
    sizes). No parameters; the wires are the last axis (the width).

    >>> Pool("pool", Space("x", 8), Space("y", 1), mode="adaptive_avg", output=[1, 1]).data
    {'mode': 'adaptive_avg', 'output': [1, 1]}
    >>> Pool("pool", Space("x", 8), Space("y", 4), mode="max", kernel=3, stride=2, padding=1).data["kernel"]
    [3, 3]
    """

    kind = "Pool"

    def __init__(self, name: str, dom: Space, cod: Space, mode: str, kernel: int | list[int] | None = None,
                 stride: int | list[int] | None = None, padding: int | list[int] = 0,
                 dilation: int | list[int] = 1, ceil_mode: bool = False, count_include_pad: bool = True,
                 output: list[int] | None = None, axes: int = 2) -> None:
        _check_name(self.kind, name)
        _one_wire(self.kind, name, "input", dom)
        _one_wire(self.kind, name, "output", cod)
        if mode not in POOLS:
            raise BoxError(f"Pool box '{name}': mode must be one of {', '.join(POOLS)}, got {mode!r:.40}")
        if mode.startswith("adaptive"):
            if not isinstance(output, (list, tuple)) or not 1 <= len(output) <= 3:
                raise BoxError(f"Pool box '{name}': adaptive pooling needs output sizes (1 to 3), got {output!r:.60}")
            output = _sizes(self.kind, name, "output", output, len(output))
            _check_width(self.kind, name, dom, cod, output[-1])
            super().__init__(name, dom, cod, {"mode": mode, "output": output})
            return
        n = len(kernel) if isinstance(kernel, (list, tuple)) else axes
        kernel = _sizes(self.kind, name, "kernel", kernel, n)
        stride = kernel if stride is None else _sizes(self.kind, name, "stride", stride, n)
        padding = _sizes(self.kind, name, "padding", padding, n, least=0)
        data: dict[str, Any] = {"mode": mode, "kernel": kernel, "stride": stride, "padding": padding,
                                "ceil_mode": bool(ceil_mode)}
        span = kernel[-1]
        if mode == "max":
            data["dilation"] = _sizes(self.kind, name, "dilation", dilation, n)
            span = data["dilation"][-1] * (kernel[-1] - 1) + 1
        else:
            data["count_include_pad"] = bool(count_include_pad)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise BoxError(f"Pool box '{name}': padding {padding} must be at most half the kernel {kernel}")
        room = dom.dim + 2 * padding[-1] - span
        width = (room + (stride[-1] - 1 if ceil_mode else 0)) // stride[-1] + 1
        if ceil_mode and (width - 1) * stride[-1] >= dom.dim + padding[-1]:
            width -= 1
        _check_width(self.kind, name, dom, cod, width)
        super().__init__(name, dom, cod, data)


class Flatten(Kind):
    """Merges the last ``len(shape)`` axes of ``(..., *shape)`` into one axis of ``prod(shape)`` (as
    ``torch.flatten(x, 1)`` on a batch of feature maps): from the wire ``shape[-1]`` to the wire
    ``prod(shape)``. No parameters.

    >>> Flatten("flat", Space("pool", 1), Space("flat", 512), shape=[512, 1, 1]).data
    {'shape': [512, 1, 1]}
    """

    kind = "Flatten"

    def __init__(self, name: str, dom: Space, cod: Space, shape: list[int]) -> None:
        _check_name(self.kind, name)
        _one_wire(self.kind, name, "input", dom)
        _one_wire(self.kind, name, "output", cod)
        if not isinstance(shape, (list, tuple)) or not 2 <= len(shape) <= 8:
            raise BoxError(f"Flatten box '{name}': shape must list 2 to 8 axes, got {shape!r:.60}")
        shape = _sizes(self.kind, name, "shape", shape, len(shape))
        size = 1
        for n in shape:
            size *= n
        if shape[-1] != dom.dim or size != cod.dim:
            raise BoxError(f"Flatten box '{name}': axes {shape} go from a wire of {shape[-1]} to one of {size}, "
                           f"but the box is {dom} -> {cod}")
        super().__init__(name, dom, cod, {"shape": shape})


class Opaque(Kind):
    """Any torch module, declared with its spaces; computed but not analysed.

    The module itself is not part of the box (boxes hold no tensors): pass it
    here to have a :class:`~compinterp.Model` pick it up, or give it to the model.
    """

    kind = "Opaque"
    opaque = True

    def __init__(self, name: str, dom: Space, cod: Space, module: Any = None,
                 description: str = "") -> None:
        _check_name(self.kind, name)
        for role, space in (("input", dom), ("output", cod)):
            if not isinstance(space, Space):
                raise BoxError(f"Opaque box '{name}': {role} must be a Space, got {space!r}")
        description = description or (type(module).__name__ if module is not None else "")
        super().__init__(name, dom, cod, {"description": description})
        self.module = module


KINDS: dict[str, type[Kind]] = {cls.kind: cls for cls in (
    Embed, PosEmbed, Linear, Unembed, Bilinear, Gated, Norm, Elementwise, TopK, Copy, Add, Mul, Attention,
    Conv, ChannelAffine, Pool, Flatten, Opaque)}
"""Every box kind by name, as written in files."""

READERS: dict[str, type[Box]] = {"Swap": Swap, **KINDS}
"""The class that reads each ``kind`` of a diagram file's boxes (its ``from_json``)."""


def box_to_json(box: Box) -> dict[str, Any]:
    """A box (of any kind, or a swap) as JSON."""
    if isinstance(box, Swap):
        return {"kind": "Swap", "name": "swap", "dom": box.dom.to_json(), "cod": box.cod.to_json(),
                "data": {}}
    return box.to_json()


def box_from_json(entry: dict[str, Any]) -> Box:
    """Rebuild a box written by :func:`box_to_json`, through its kind's constructor, so the
    same checks apply as when it was declared."""
    kind, name = entry["kind"], entry.get("name")
    dom, cod = Space.from_json(entry["dom"]), Space.from_json(entry["cod"])
    cls = READERS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise BoxError(f"unknown box kind {kind!r} for box {name!r}; known: {', '.join(KINDS)}")
    try:
        box = cls.from_json(name, dom, cod, dict(entry.get("data") or {}))
    except (TypeError, KeyError) as err:
        raise BoxError(f"its data {entry.get('data')!r} does not fit a {kind} box named {name!r} ({err})") from None
    if cls is Swap:
        return box
    if box.dom != dom or box.cod != cod or box.data != entry.get("data", {}):
        raise BoxError(f"its data {entry.get('data')!r} does not fit a {kind} box named {name!r} "
                       f"declared as {dom} -> {cod}: a {kind} with these arguments is "
                       f"{box.dom} -> {box.cod} with {box.data!r}")
    return box


def residual(block: Diagram) -> Diagram:
    """The residual stream around a block ``f : x -> x``: ``copy >> f @ id >> add``.

    >>> x = Space("x", 4)
    >>> residual(Linear("f", x, x)).dom == x
    True
    """
    if block.dom != block.cod or len(block.dom) != 1:
        raise BoxError(f"residual() needs a block from one wire to the same wire, got {block.dom} -> {block.cod}")
    x = block.dom
    return Copy(x).then(block @ Id(x), Add(x))


def chain(*diagrams: Diagram) -> Diagram:
    """Compose many diagrams in one pass (``>>`` in a loop is quadratic)."""
    if not diagrams:
        raise BoxError("chain() needs at least one diagram")
    return diagrams[0].then(*diagrams[1:])
