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

from typing import Any, ClassVar

from compinterp.errors import BoxError
from compinterp.syntax.attention import Attention
from compinterp.syntax.diagram import Box, Diagram, Id, Swap
from compinterp.syntax.kind import Kind, check_name, one_wire, positive
from compinterp.syntax.spaces import Space
from compinterp.syntax.vision import ChannelAffine, Conv, Flatten, Pool

MAX_LEGS = 1024
"""The most wires a spider (copy, add, multiply) joins."""

ELEMENTWISE = ("identity", "relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh", "square", "exp", "neg", "softplus")
"""Names of the pointwise functions an :class:`Elementwise` box may apply."""

NORMS = ("rms", "layer")


class Embed(Kind):
    """Token ids (or one-hot rows) on ``tokens:V`` to vectors: ``y = W[i]`` or ``y = x W``, times
    ``scale`` when one is given (Gemma scales by ``sqrt(dim)``; not written in ``data`` otherwise).

    >>> Embed("embed", Space("tokens", 5), Space("resid", 4), scale=2.0).data
    {'scale': 2.0}
    """

    kind = "Embed"
    polynomial = True

    def __init__(self, name: str, dom: Space, cod: Space, scale: float | None = None) -> None:
        check_name(self.kind, name)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 0):
            raise BoxError(f"Embed box '{name}': scale must be a non-zero number, got {scale!r}")
        super().__init__(name, one_wire(self.kind, name, "input", dom),
                         one_wire(self.kind, name, "output", cod), {} if scale is None else {"scale": float(scale)})

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.dom.dim, self.cod.dim)}


class Linear(Kind):
    """An affine map ``y = W x + b`` with ``W : out x in``."""

    kind = "Linear"
    polynomial = True
    affine = True

    def __init__(self, name: str, dom: Space, cod: Space, bias: bool = False) -> None:
        check_name(self.kind, name)
        super().__init__(name, one_wire(self.kind, name, "input", dom),
                         one_wire(self.kind, name, "output", cod), {"bias": bool(bias)})

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
        check_name(self.kind, name)
        one_wire(self.kind, name, "space", space)
        data = {"positions": positive(self.kind, name, "positions", positions)}
        if offset:
            if positive(self.kind, name, "offset", offset) >= positions:
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
        check_name(self.kind, name)
        super().__init__(name, one_wire(self.kind, name, "input", dom),
                         one_wire(self.kind, name, "output", cod),
                         {"hidden": positive(self.kind, name, "hidden", hidden), "bias": bool(bias)})

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
        check_name(self.kind, name)
        one_wire(self.kind, name, "space", space)
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
        name = check_name(self.kind, name or fn)
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
        check_name(self.kind, name)
        width = one_wire(self.kind, name, "space", space).dim
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width:
            raise BoxError(f"TopK box '{name}': k must be from 1 to the width {width} of {space}, got {k!r}")
        super().__init__(name, space, space, {"k": k, "absolute": bool(absolute)})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, dom, **data)


class JumpReLU(Kind):
    """A learnt threshold per feature (JumpReLU sparse autoencoders): ``y_f = x_f H(x_f - theta_f)``, ``H``
    the Heaviside step (``H(0) = 0``), so a feature passes unchanged where it exceeds its threshold
    ``theta_f`` and is zero elsewhere; ``theta`` (shape ``(dim,)``) is its one parameter.

    >>> box = JumpReLU("jump", Space("features", 4))
    >>> box.param_shapes(), box.data
    ({'theta': (4,)}, {})
    >>> box_from_json(box_to_json(box)) == box
    True
    """

    kind = "JumpReLU"

    def __init__(self, name: str, space: Space) -> None:
        check_name(self.kind, name)
        one_wire(self.kind, name, "space", space)
        super().__init__(name, space, space, {})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, dom, **data)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"theta": (self.dom.dim,)}


class Spider(Kind):
    """Base of the spiders (Frobenius structure on one space): copy, add, multiply; no parameters."""

    polynomial = True
    spider = True
    polymorphic = True


class Copy(Spider):
    """The copy spider ``x -> x @ ... @ x`` (``n`` copies; ``n = 0`` discards)."""

    kind = "Copy"

    def __init__(self, space: Space, n: int = 2, name: str = "copy") -> None:
        one_wire(self.kind, name, "space", space)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_LEGS:
            raise BoxError(f"Copy box '{name}': n must be an integer from 0 to {MAX_LEGS}, got {n!r:.40}")
        super().__init__(check_name(self.kind, name), space, Space(*[space.inside[0]] * n), {"n": n})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Copy:
        return cls(dom, name=name, **data)


class _Merge(Spider):
    """A spider ``x @ ... @ x -> x`` merging ``n`` wires, ``n`` at least :attr:`least`."""

    least: ClassVar[int] = 0

    def __init__(self, space: Space, n: int = 2, name: str | None = None) -> None:
        name = self.kind.lower() if name is None else name
        one_wire(self.kind, name, "space", space)
        if isinstance(n, bool) or not isinstance(n, int) or not self.least <= n <= MAX_LEGS:
            raise BoxError(f"{self.kind} box '{name}': n must be an integer from {self.least} to {MAX_LEGS}, "
                           f"got {n!r:.40}")
        super().__init__(check_name(self.kind, name), Space(*[space.inside[0]] * n), space, {"n": n})

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


class Opaque(Kind):
    """Any torch module, declared with its spaces; computed but not analysed.

    The module itself is not part of the box (boxes hold no tensors): pass it
    here to have a :class:`~compinterp.Model` pick it up, or give it to the model.
    """

    kind = "Opaque"
    opaque = True

    def __init__(self, name: str, dom: Space, cod: Space, module: Any = None,
                 description: str = "") -> None:
        check_name(self.kind, name)
        for role, space in (("input", dom), ("output", cod)):
            if not isinstance(space, Space):
                raise BoxError(f"Opaque box '{name}': {role} must be a Space, got {space!r}")
        description = description or (type(module).__name__ if module is not None else "")
        super().__init__(name, dom, cod, {"description": description})
        self.module = module


KINDS: dict[str, type[Kind]] = {cls.kind: cls for cls in (
    Embed, PosEmbed, Linear, Unembed, Bilinear, Gated, Norm, Elementwise, TopK, JumpReLU, Copy, Add, Mul,
    Attention, Conv, ChannelAffine, Pool, Flatten, Opaque)}
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
