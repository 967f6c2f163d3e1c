"""The tensor semantics ``[[-]]_T``: a polynomial diagram as an explicit tensor network.

Every polynomial box (``Embed``, ``Linear``/``Unembed`` with bias, ``Bilinear`` with
biases, ``Copy``, ``Add``, ``Mul``, ``Swap``, ``Elementwise`` identity/neg/square)
is sent to multilinear maps on *padded* vectors ``(1, x)``: the constant ``1`` in
dimension 0 carries biases and skip connections, so the whole diagram becomes one
homogeneous polynomial in ``x^ = (1, x_1, ..., x_N)`` (all input wires side by side).

The normal form is a chain of Hadamard stages (a :class:`PolyNet`)::

    s_0 = x^,    s_{k+1} = (L_k s_k) * (R_k s_k),    y = O s_K

Unit 0 of every stage is the constant ``1`` (``L_k[0] = R_k[0] = e_0``), so a bias is
a column 0 entry, and a wire that skips a stage rides through it as ``(M s_k) * 1``.
Each stage doubles the formal degree: ``s_k`` is a form of degree ``2**k`` in ``x^``.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear, residual
>>> x = Space("x", 3)
>>> model = Model(residual(Bilinear("mlp", x, x, hidden=4, bias=True)), seed=0)
>>> net = tensor_semantics(model)
>>> net
<PolyNet x:3 -> x:3: 1 stage, widths (4, 8), degree 2>
>>> inputs = torch.randn(5, 3, dtype=torch.float64)
>>> torch.allclose(net(inputs), model.double()(inputs))
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch

from compinterp.errors import CompinterpError, InputError, ParameterError
from compinterp.syntax import (Add, Attention, Bilinear, Box, ChannelAffine, Conv, Copy, Diagram, Elementwise, Embed,
                               Flatten, Gated, JumpReLU, Linear, Mul, Norm, Opaque, Pool, Space, Swap, TopK,
                               describe)

_MAX_DENSE = 50_000_000
"""Largest dense coefficient tensor :meth:`PolyNet.tensor` will build (entries)."""

_REASONS: dict[type[Box], str] = {
    Norm: "a normalisation divides by a norm of its input",
    Attention: "softmax attention is not a polynomial",
    Opaque: "an opaque torch module has no known polynomial form",
    TopK: "keeping the k largest features is not a polynomial",
    JumpReLU: "a threshold step is not a polynomial",
    Conv: "a convolution mixes channels and positions, axes the tensor semantics keeps apart (a wire is the last axis)",
    ChannelAffine: "its scale varies along the channel axis, which the tensor semantics treats as a batch axis",
    Pool: "pooling takes maxima or means across positions, axes the tensor semantics keeps apart",
    Flatten: "it moves the channel and position axes into the wire, which the tensor semantics cannot express",
}


class NotPolynomialError(CompinterpError, ValueError):
    """A diagram holds a box with no tensor semantics (not a polynomial of its inputs)."""


def why_not_polynomial(diagram: Any) -> str | None:
    """The first box of ``diagram`` (or of a model's diagram) that is not polynomial, named; else ``None``.

    >>> from compinterp.syntax import Space, Linear, Norm
    >>> x = Space("x", 2)
    >>> why_not_polynomial(Linear("f", x, x)) is None
    True
    >>> why_not_polynomial(Linear("f", x, x) >> Norm("ln", x))
    "box 'ln' (Norm x:2 -> x:2) is not polynomial: a normalisation divides by a norm of its input"
    """
    diagram = getattr(diagram, "diagram", diagram)
    for _, box in diagram.walk():
        reason = _reason(box)
        if reason is not None:
            return f"box '{box.name}' ({box.kind} {box.dom} -> {box.cod}) is not polynomial: {reason}"
    return None


def _reason(box: Box) -> str | None:
    """Why ``box`` has no tensor semantics, or ``None`` if it has one."""
    if isinstance(box, Swap):
        return None
    if box.polynomial and isinstance(box, tuple(TensorFunctor.KINDS)):
        return None
    if isinstance(box, Gated):
        return f"its gate applies {box.data['activation']}"
    if isinstance(box, Elementwise):
        return f"{box.data['fn']} is not a polynomial (only identity, neg and square are)"
    return next((reason for kind, reason in _REASONS.items() if isinstance(box, kind)),
                f"no tensor semantics for box kind {box.kind}")


@dataclass(frozen=True)
class PolyNet:
    """A polynomial diagram as a chain of padded Hadamard stages (see the module docstring).

    ``stages[k] = (L, R)`` with ``L, R : width_{k+1} x width_k``; ``out : outputs x width_K``
    stacks the output wires. ``tokens[i]`` says input wire ``i`` feeds an ``Embed``: in
    this semantics it carries one-hot rows (integer token ids are converted on call).
    """

    dom: Space
    cod: Space
    stages: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    out: torch.Tensor
    tokens: tuple[bool, ...]

    def __repr__(self) -> str:
        k = len(self.stages)
        return (f"<PolyNet {self.dom} -> {self.cod}: {k} stage{'s' * (k != 1)}, "
                f"widths {self.widths}, degree {self.degree}>")

    @property
    def depth(self) -> int:
        """The number of Hadamard stages ``K``."""
        return len(self.stages)

    @property
    def degree(self) -> int:
        """The formal degree ``2**K`` of the outputs as forms in ``(1, x)``."""
        return 2 ** self.depth

    @property
    def in_dim(self) -> int:
        """``N``, the input dimensions of all input wires together (the padded input has ``N + 1``)."""
        return sum(self.dom.dims)

    @property
    def widths(self) -> tuple[int, ...]:
        """The width of each stage state ``s_0 ... s_K`` (constant unit included)."""
        return (self.in_dim + 1, *(L.shape[0] for L, _ in self.stages))

    def __call__(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Contract the network on inputs: ``s_0 = (1, x)``, the stages, then ``O``."""
        y = self.apply(self.pad(*xs))
        parts = torch.split(y, list(self.cod.dims), dim=-1) if len(self.cod) else ()
        return parts[0] if len(parts) == 1 else tuple(parts)

    def apply(self, padded: torch.Tensor) -> torch.Tensor:
        """All outputs side by side, at padded inputs ``(..., N + 1)`` whose column 0 is ``1``."""
        s = padded
        for L, R in self.stages:
            s = (s @ L.T) * (s @ R.T)
        return s @ self.out.T

    def pad(self, *xs: torch.Tensor) -> torch.Tensor:
        """The padded input ``(1, x_1, ..., x_n)`` of batched inputs (token ids become one-hot rows)."""
        if len(xs) != len(self.dom):
            raise InputError(f"expected {len(self.dom)} inputs ({self.dom}), got {len(xs)}")
        rows = []
        for i, (x, wire, token) in enumerate(zip(xs, self.dom.wires, self.tokens)):
            if not isinstance(x, torch.Tensor):
                raise InputError(f"input {i} ({wire.name}) must be a torch.Tensor, got {type(x).__name__}")
            if token and not x.is_floating_point():
                if x.numel() and (x.min() < 0 or x.max() >= wire.dim):
                    raise InputError(f"input {i} ({wire.name}) holds token ids outside 0..{wire.dim - 1}")
                x = torch.nn.functional.one_hot(x, wire.dim)
            if x.dim() == 0 or x.shape[-1] != wire.dim:
                raise InputError(f"input {i} is wire {wire.name} but has shape {tuple(x.shape)}: "
                                 f"its last dimension must be {wire.dim}")
            rows.append(x.to(self.out.dtype))
        batch = torch.broadcast_shapes(*(x.shape[:-1] for x in rows)) if rows else ()
        one = torch.ones(*batch, 1, dtype=self.out.dtype, device=self.out.device)
        return torch.cat([one, *(x.expand(*batch, x.shape[-1]) for x in rows)], dim=-1)

    def lift(self, depth: int) -> PolyNet:
        """The same polynomial through ``depth`` stages: extra stages multiply every unit by ``1``."""
        stages = list(self.stages)
        while len(stages) < depth:
            width = stages[-1][0].shape[0] if stages else self.in_dim + 1
            eye = torch.eye(width, dtype=self.out.dtype, device=self.out.device)
            stages.append((eye, _e0(width, width, self.out)))
        return PolyNet(self.dom, self.cod, tuple(stages), self.out, self.tokens)

    def substitute(self, C: torch.Tensor) -> PolyNet:
        """The network of ``z^ -> f(C z^)``: the change of padded variables ``x^ = C z^`` folded into the first map."""
        if not self.stages:
            return PolyNet(self.dom, self.cod, (), self.out @ C, self.tokens)
        (L, R), *rest = self.stages
        return PolyNet(self.dom, self.cod, ((L @ C, R @ C), *rest), self.out, self.tokens)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> PolyNet:
        """The network with its tensors cast or moved."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(dtype=dtype or t.dtype, device=device or t.device)
        return PolyNet(self.dom, self.cod, tuple((move(L), move(R)) for L, R in self.stages), move(self.out),
                       self.tokens)

    def tensor(self) -> torch.Tensor:
        """The dense coefficient tensor ``T``: ``y_c = sum T[c, i_1, ..., i_d] x^_{i_1} ... x^_{i_d}``, ``d = 2**K``.

        Materialises ``outputs x (N + 1)**d`` numbers, so it is for small networks (and tests).
        """
        n = self.in_dim + 1
        size = self.out.shape[0] * n ** self.degree
        if size > _MAX_DENSE:
            raise InputError(f"the dense tensor of {self.dom} -> {self.cod} (degree {self.degree}) would hold "
                             f"{size} numbers; use the tensor network instead")
        T = torch.eye(n, dtype=self.out.dtype, device=self.out.device)
        for L, R in self.stages:
            a, b = L @ T, R @ T
            T = (a[:, :, None] * b[:, None, :]).flatten(1)
        return (self.out @ T).reshape(self.out.shape[0], *[n] * self.degree)


def _e0(rows: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """``rows`` copies of the row ``e_0`` of length ``width`` (reads the constant unit)."""
    out = torch.zeros(rows, width, dtype=like.dtype, device=like.device)
    out[:, 0] = 1
    return out


def _pad(M: torch.Tensor, width: int) -> torch.Tensor:
    """``M`` with zero columns appended up to ``width`` (units added to a stage after ``M`` was made)."""
    return M if M.shape[1] == width else torch.nn.functional.pad(M, (0, width - M.shape[1]))


@dataclass(frozen=True)
class _Value:
    """A wire's value during the walk: ``M s_stage``, and the input wire it is, if untouched.

    ``sel`` is set when ``M`` only selects units: ``M = [0 | I | 0]`` with the identity from
    column ``sel``, so that maps applied to the wire are placed instead of multiplied.
    """

    stage: int
    M: torch.Tensor
    origin: int | None = None
    sel: int | None = None


def _through(A: torch.Tensor, value: _Value) -> torch.Tensor:
    """``A @ value.M``; a copy into the selected columns when ``value`` only selects units."""
    return A @ value.M if value.sel is None else _place(A, value.sel, value.M.shape[1])


def _place(A: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """``A`` read on units ``start, start + 1, ...`` of a state of width ``width`` (zero elsewhere)."""
    rows = A.shape[0]
    return torch.cat([A.new_zeros(rows, start), A, A.new_zeros(rows, width - start - A.shape[1])], dim=1)


def _selection(rows: int, width: int, start: int, like: torch.Tensor) -> torch.Tensor:
    """``[0 | I_rows | 0]`` of width ``width``, the identity from column ``start``."""
    out = torch.zeros(rows, width, dtype=like.dtype, device=like.device)
    out[:, start:start + rows].diagonal().fill_(1)
    return out


class _Chain:
    """The stages under construction; units are only appended, so earlier matrices stay valid padded."""

    def __init__(self, in_dim: int, like: torch.Tensor) -> None:
        self.like = like
        self.widths = [in_dim + 1]
        self.blocks: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def append(self, stage: int, L: torch.Tensor, R: torch.Tensor) -> int:
        """Append units ``(L s) * (R s)`` on ``s = s_stage`` to stage ``stage + 1``; the index of the first."""
        if stage + 1 == len(self.widths):
            one = _e0(1, self.widths[stage], self.like)
            self.blocks.append([(one, one)])
            self.widths.append(1)
        start = self.widths[stage + 1]
        self.blocks[stage].append((L, R))
        self.widths[stage + 1] += L.shape[0]
        return start

    def units(self, stage: int, L: torch.Tensor, R: torch.Tensor) -> _Value:
        """Append units ``(L s) * (R s)`` on ``s = s_stage`` to stage ``stage + 1``; the value selecting them."""
        start, h = self.append(stage, L, R), L.shape[0]
        return _Value(stage + 1, _selection(h, start + h, start, self.like), sel=start)

    def lift(self, value: _Value, stage: int) -> _Value:
        """``value`` moved up to ``stage``, through units ``(M s) * 1``."""
        while value.stage < stage:
            M = value.M
            value = self.units(value.stage, M, _e0(M.shape[0], M.shape[1], M))
        return value

    def finish(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """The stage matrices, every block padded to the final widths."""
        return tuple((torch.cat([_pad(L, self.widths[k]) for L, _ in blocks]),
                      torch.cat([_pad(R, self.widths[k]) for _, R in blocks]))
                     for k, blocks in enumerate(self.blocks))


class TensorFunctor:
    """Sends a polynomial diagram and its parameters to a :class:`PolyNet`, one method per box kind.

    Like :class:`~compinterp.semantics.TorchFunctor`, it walks the diagram's layers once;
    each wire holds ``M s_k`` (a matrix on a stage state), so copies and swaps cost nothing.
    """

    KINDS: dict[type[Box], str] = {Embed: "embed", Linear: "linear", Bilinear: "bilinear", Copy: "copy",
                                   Add: "add", Mul: "mul", Elementwise: "elementwise"}
    """The box kinds with tensor semantics and the method computing each: ``linear`` for ``Linear``
    and ``Unembed``; ``Elementwise`` only for identity, neg and square; ``Gated`` is a ``Bilinear``
    but not polynomial, so has none."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        self.dtype = dtype

    def __call__(self, diagram: Diagram, params: Mapping[str, Mapping[str, torch.Tensor]]) -> PolyNet:
        """The network of ``diagram`` with ``params`` (box name -> role -> tensor), on their device."""
        reason = why_not_polynomial(diagram)
        if reason is not None:
            raise NotPolynomialError(f"no tensor semantics for {describe(diagram)}: {reason}")
        device = next((t.device for p in params.values() if isinstance(p, Mapping) for t in p.values()
                       if isinstance(t, torch.Tensor)), None)
        like = torch.zeros((), dtype=self.dtype, device=device)
        n = sum(diagram.dom.dims)
        chain = _Chain(n, like)
        tokens = [False] * len(diagram.dom)
        wires, start = [], 1
        for i, dim in enumerate(diagram.dom.dims):
            wires.append(_Value(0, _selection(dim, n + 1, start, like), i, sel=start))
            start += dim
        for offset, box in diagram.walk():
            k = len(box.dom)
            ins = wires[offset:offset + k]
            if isinstance(box, Swap):
                outs = ins[1:] + ins[:1]
            else:
                if isinstance(box, Embed) and ins[0].origin is not None:
                    tokens[ins[0].origin] = True
                p = {role: t.detach().to(like) for role, t in _box_params(box, params).items()}
                rule = next(method for kind, method in self.KINDS.items() if isinstance(box, kind))
                outs = getattr(self, rule)(chain, box, p, *ins)
            wires[offset:offset + k] = outs
        top = len(chain.widths) - 1
        lifted = [chain.lift(w, top) for w in wires]
        out = torch.cat([_pad(w.M, chain.widths[top]) for w in lifted]) if lifted \
            else like.new_zeros(0, chain.widths[top])
        return PolyNet(diagram.dom, diagram.cod, chain.finish(), out, tuple(tokens))

    def embed(self, chain: _Chain, box: Box, p: dict[str, torch.Tensor], x: _Value) -> list[_Value]:
        """``y = scale W^T x`` on one-hot rows ``x``."""
        return [_Value(x.stage, _through(p["W"].T * box.data.get("scale", 1.0), x))]

    def linear(self, chain: _Chain, box: Box, p: dict[str, torch.Tensor], x: _Value) -> list[_Value]:
        """``y = W x + b``, the bias on the constant unit."""
        M = _through(p["W"], x)
        if "b" in p:
            M = M + torch.outer(p["b"], _e0(1, M.shape[1], M)[0])
        return [_Value(x.stage, M)]

    unembed = linear

    def bilinear(self, chain: _Chain, box: Box, p: dict[str, torch.Tensor], x: _Value) -> list[_Value]:
        """``y = D((L x + l) * (R x + r)) + d``: ``hidden`` new units in the next stage."""
        e0 = _e0(1, x.M.shape[1], x.M)[0]
        L, R = _through(p["L"], x), _through(p["R"], x)
        if "l" in p:
            L, R = L + torch.outer(p["l"], e0), R + torch.outer(p["r"], e0)
        start = chain.append(x.stage, L, R)
        M = _place(p["D"], start, start + L.shape[0])
        if "d" in p:
            M = M + torch.outer(p["d"], _e0(1, M.shape[1], M)[0])
        return [_Value(x.stage + 1, M)]

    def copy(self, chain: _Chain, box: Box, p: dict[str, torch.Tensor], x: _Value) -> list[_Value]:
        """``n`` copies of the wire (none: discard)."""
        return [x] * box.data["n"]

    def add(self, chain: _Chain, box: Box, p: dict[str, torch.Tensor], *xs: _Value) -> list[_Value]:
        """The sum, each summand lifted to the latest stage among them."""
        if not xs:
            return [_Value(0, chain.like.new_zeros(box.cod.dim, chain.widths[0]))]
        top = max(x.stage for x in xs)
        lifted = [chain.lift(x, top) for x in xs]
        width = max(x.M.shape[1] for x in lifted)
        return [_Value(top, reduce(torch.add, (_pad(x.M, width) for x in lifted)))]

    def mul(self, chain: _Chain, box: Box, p: dict[str, torch.Tensor], *xs: _Value) -> list[_Value]:
        """The Hadamard product, as a balanced tree of two-factor stages."""
        level = list(xs)
        while len(level) > 1:
            pairs, level = list(zip(level[::2], level[1::2])), level[2 * (len(level) // 2):]
            level = [self._times(chain, a, b) for a, b in pairs] + level
        return level

    def elementwise(self, chain: _Chain, box: Box, p: dict[str, torch.Tensor], *xs: _Value) -> list[_Value]:
        """identity, neg or square on every wire."""
        fn = box.data["fn"]
        if fn == "neg":
            return [_Value(x.stage, -x.M) for x in xs]
        if fn == "square":
            return [self._times(chain, x, x) for x in xs]
        return list(xs)

    def _times(self, chain: _Chain, a: _Value, b: _Value) -> _Value:
        """``a * b``: one unit per coordinate in the stage after the later of the two."""
        top = max(a.stage, b.stage)
        a, b = chain.lift(a, top), chain.lift(b, top)
        width = max(a.M.shape[1], b.M.shape[1])
        return chain.units(top, _pad(a.M, width), _pad(b.M, width))


def _box_params(box: Box, params: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The parameters of ``box`` (none for parameter-free kinds)."""
    shapes = box.param_shapes() if hasattr(box, "param_shapes") else {}
    if not shapes:
        return {}
    if box.name not in params:
        raise ParameterError(f"no parameters for box '{box.name}' ({describe(box)})")
    given = params[box.name]
    for role, shape in shapes.items():
        if role not in given or tuple(given[role].shape) != shape:
            raise ParameterError(f"box '{box.name}' ({describe(box)}) parameter '{role}' is missing or not of "
                                 f"shape {shape}")
    return given


def tensor_semantics(model: Any, dtype: torch.dtype = torch.float64) -> PolyNet:
    """The :class:`PolyNet` of a :class:`~compinterp.Model` (its diagram and current parameters).

    Raises :class:`NotPolynomialError`, naming the box, if some box is not polynomial.
    """
    if isinstance(model, PolyNet):
        return model.to(dtype)
    diagram = getattr(model, "diagram", None)
    if not isinstance(diagram, Diagram):
        raise InputError(f"tensor semantics need a compinterp Model or PolyNet, got {type(model).__name__}")
    reason = why_not_polynomial(diagram)
    if reason is not None:
        raise NotPolynomialError(f"no tensor semantics for {describe(diagram)}: {reason}")
    boxes = model.boxes
    params = {name: model.box_params(name) for name in model.params if not boxes[name].opaque}
    return TensorFunctor(dtype)(diagram, params)
