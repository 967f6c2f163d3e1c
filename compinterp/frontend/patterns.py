"""Recognising our box kinds in a traced torch graph.

One pass finds the identities (dropout in eval mode, ``nn.Identity``,
``.contiguous()``), one the products (``l(x) * r(x)`` is a bilinear layer,
``act(l(x)) * r(x)`` a gated one, each folding a following ``down`` linear), and
one the single nodes (linear, embedding, norms, attention, pointwise functions,
sums and products). What is left is for :mod:`compinterp.frontend.regions`.
"""

from __future__ import annotations

import inspect
import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from compinterp.frontend.trace import Traced
from compinterp.syntax import (
    Add, Attention, Bilinear, Elementwise, Embed, Gated, Kind, Linear, Mul, Norm, Space,
)

Build = Callable[[str, Space, Space], Kind]


@dataclass(eq=False)
class Unit:
    """A recognised box in the making: the fx nodes it covers, the values it reads and the value it makes.

    ``build(name, dom, cod)`` makes the box once the wires are named; ``key``
    identifies the torch parameters it copies (two calls of one module share them).
    """

    kind: str
    name: str
    nodes: list[fx.Node]
    ins: list[fx.Node]
    out: fx.Node
    build: Build
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    key: object = None

    @property
    def ties(self) -> bool:
        """Whether the box's inputs and output are one space (spiders and endomorphisms)."""
        return self.kind in ("Add", "Mul", "Elementwise", "Norm", "Attention")


@dataclass(frozen=True)
class _Op:
    """A torch function we know: what it computes and its arguments (name and default)."""

    fn: str
    names: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)


_UNARY = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp,
          "neg": torch.neg, "square": torch.square}
_FUNCTIONS: dict[Any, _Op] = {
    **{fn: _Op(name, ("input",)) for name, fn in _UNARY.items()},
    F.sigmoid: _Op("sigmoid", ("input",)),
    F.tanh: _Op("tanh", ("input",)),
    operator.neg: _Op("neg", ("input",)),
    F.relu: _Op("relu", ("input", "inplace"), {"inplace": False}),
    F.silu: _Op("silu", ("input", "inplace"), {"inplace": False}),
    F.gelu: _Op("gelu", ("input", "approximate"), {"approximate": "none"}),
    F.softplus: _Op("softplus", ("input", "beta", "threshold"), {"beta": 1, "threshold": 20}),
    operator.add: _Op("add", ("input", "other")),
    torch.add: _Op("add", ("input", "other", "alpha"), {"alpha": 1}),
    operator.mul: _Op("mul", ("input", "other")),
    torch.mul: _Op("mul", ("input", "other")),
    operator.pow: _Op("pow", ("input", "exponent")),
    torch.pow: _Op("pow", ("input", "exponent")),
    F.dropout: _Op("dropout", ("input", "p", "training", "inplace"), {"p": 0.5, "training": True, "inplace": False}),
    F.linear: _Op("linear", ("input", "weight", "bias"), {"bias": None}),
    F.layer_norm: _Op("layer_norm", ("input", "normalized_shape", "weight", "bias", "eps"),
                      {"weight": None, "bias": None, "eps": 1e-5}),
    F.rms_norm: _Op("rms_norm", ("input", "normalized_shape", "weight", "eps"), {"weight": None, "eps": None}),
}
_METHODS: dict[str, _Op] = {
    **{name: _Op(name, ("input",)) for name in _UNARY},
    "add": _Op("add", ("input", "other", "alpha"), {"alpha": 1}),
    "mul": _Op("mul", ("input", "other")),
    "pow": _Op("pow", ("input", "exponent")),
    "contiguous": _Op("identity", ("input",)),
}
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_ACTIVATIONS = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu",
                nn.Softplus: "softplus"}


def _is(module: nn.Module, cls: type[nn.Module]) -> bool:
    """``module`` is a ``cls`` that computes what ``cls`` computes (its forward is not overridden)."""
    return isinstance(module, cls) and type(module).forward is cls.forward


def label(text: str) -> str:
    """A valid box name or wire label from a module path or node name: ``blocks.0.mlp`` -> ``blocks_0_mlp``.

    >>> label("blocks.0.mlp"), label("0.weight")
    ('blocks_0_mlp', 'layer_0_weight')
    """
    text = re.sub(r"[^A-Za-z0-9_\-]", "_", text) or "value"
    return text if re.match(r"[A-Za-z_]", text) else f"layer_{text}"


def scope(node: fx.Node) -> str:
    """The path of the innermost module whose forward made ``node`` (``""`` at the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.values()))[0] if stack else ""


def base_name(node: fx.Node) -> str:
    """A readable name for what ``node`` computes: module path, parameter path, or scoped op name."""
    if node.op in ("call_module", "get_attr", "placeholder"):
        return label(str(node.target))
    where = scope(node)
    return label(f"{where}_{node.name}" if where else node.name)


def causal_mask(mask: Any, length: int) -> bool:
    """Whether ``mask`` is exactly the causal attention mask for ``length`` positions (bool or additive).

    >>> causal_mask(torch.ones(3, 3, dtype=torch.bool).triu(1), 3)
    True
    >>> causal_mask(torch.zeros(3, 3), 3)
    False
    """
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (length, length):
        return False
    upper = torch.ones(length, length, dtype=torch.bool, device=mask.device).triu(1)
    if mask.dtype == torch.bool:
        return torch.equal(mask, upper)
    if mask.is_floating_point():
        return bool((mask[upper] == float("-inf")).all() and (mask[~upper] == 0).all())
    return False


@dataclass(frozen=True)
class _Lin:
    """A linear map found in the graph: ``y = W x + b``."""

    name: str
    path: str
    x: fx.Node
    W: torch.Tensor
    b: torch.Tensor | None
    key: object


class Recognizer:
    """Finds units in a traced graph; ``alias`` maps identity nodes to the value they pass on."""

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        self.values = traced.values
        self.alias: dict[fx.Node, fx.Node] = {}
        self.claimed: dict[fx.Node, Unit] = {}
        self.units: list[Unit] = []
        self.int_dims: dict[fx.Node, int] = {}
        self.const = _constants(traced.graph)
        self.alive = _alive(traced.graph)

    # -- reading the graph -------------------------------------------------------------------

    def resolve(self, node: Any) -> Any:
        """The value a node passes on, through identities."""
        while isinstance(node, fx.Node) and node in self.alias:
            node = self.alias[node]
        return node

    def consumers(self, node: fx.Node) -> list[fx.Node]:
        """The live nodes that read ``node``'s value, looking through identities."""
        out: list[fx.Node] = []
        for user in node.users:
            if user in self.alias:
                out.extend(self.consumers(user))
            elif user in self.alive:
                out.append(user)
        return out

    def only_consumer(self, node: fx.Node, user: fx.Node) -> bool:
        """Whether ``user`` is the one live reader of ``node``."""
        return self.consumers(node) == [user] and node not in self.claimed

    def module(self, node: fx.Node) -> nn.Module:
        """The submodule a ``call_module`` node calls."""
        return self.traced.root.get_submodule(str(node.target))

    def wire(self, node: Any, floating: bool = True) -> bool:
        """Whether ``node`` carries a batched tensor that can be a wire (not a constant)."""
        value = self.values.get(node) if isinstance(node, fx.Node) else None
        return (isinstance(value, torch.Tensor) and value.dim() >= 1 and not self.const[node]
                and (value.is_floating_point() or not floating))

    def op(self, node: fx.Node) -> tuple[str, dict[str, Any]] | None:
        """What a function or method node computes and its bound arguments, if we know it."""
        if node.op == "call_function":
            spec = _FUNCTIONS.get(node.target) if _hashable(node.target) else None
        elif node.op == "call_method":
            spec = _METHODS.get(str(node.target))
        else:
            return None
        if spec is None or len(node.args) > len(spec.names) or set(node.kwargs) - set(spec.names[len(node.args):]):
            return None
        bound = {**spec.defaults, **dict(zip(spec.names, node.args)), **node.kwargs}
        return (spec.fn, bound) if all(n in bound for n in spec.names) else None

    def single_input(self, node: fx.Node) -> fx.Node | None:
        """The one positional input of a module call, resolved."""
        if len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
            return self.resolve(node.args[0])
        return None

    def linear(self, node: fx.Node) -> _Lin | None:
        """The linear map a node applies (``nn.Linear`` or ``F.linear`` with constant weights)."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if not _is(m, nn.Linear) or x is None:
                return None
            found = _Lin(base_name(node), str(node.target), x, m.weight, m.bias, m)
        else:
            op = self.op(node)
            if op is None or op[0] != "linear":
                return None
            args = op[1]
            w, b = args["weight"], args["bias"]
            if not (isinstance(w, fx.Node) and self.const[w] and (b is None or isinstance(b, fx.Node) and self.const[b])):
                return None
            path = str(w.target).removesuffix(".weight") if w.op == "get_attr" else ""
            found = _Lin(label(path) if path else base_name(node), path, self.resolve(args["input"]), self.values[w],
                         None if b is None else self.values[b], w)
        ok = (self.wire(found.x) and isinstance(found.W, torch.Tensor) and found.W.dim() == 2
              and found.W.shape[1] == self.values[found.x].shape[-1]
              and (found.b is None or found.b.shape == found.W.shape[:1]))
        return found if ok else None

    def activation(self, node: fx.Node) -> tuple[str, fx.Node] | None:
        """The pointwise function (an ``ELEMENTWISE`` name) a node applies, and its input."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            fn = next((name for cls, name in _ACTIVATIONS.items() if _is(m, cls)), None)
            if fn is None or x is None:
                return None
            if fn == "gelu":
                fn = {"none": "gelu", "tanh": "gelu_tanh"}.get(m.approximate)
            if fn == "softplus" and (m.beta != 1 or m.threshold != 20):
                fn = None
            inplace = getattr(m, "inplace", False)
        else:
            op = self.op(node)
            if op is None or not isinstance(op[1]["input"], fx.Node):
                return None
            (fn, args), x = op, self.resolve(op[1]["input"])
            if fn == "gelu":
                fn = {"none": "gelu", "tanh": "gelu_tanh"}.get(args["approximate"])
            elif fn == "softplus" and (args["beta"] != 1 or args["threshold"] != 20):
                fn = None
            elif fn == "pow" and type(args["exponent"]) in (int, float) and args["exponent"] == 2:
                fn = "square"
            elif fn == "mul" and self.resolve(args["other"]) is x:
                fn = "square"
            elif fn not in _UNARY and fn not in ("silu", "gelu", "softplus"):
                fn = None
            inplace = args.get("inplace", False)
        if fn is None or not self.wire(x) or (inplace and self.consumers(x) != [node]):
            return None
        return fn, x

    # -- the passes --------------------------------------------------------------------------

    def run(self) -> list[Unit]:
        """Recognise every unit of the graph, in the graph's order."""
        nodes = [n for n in self.traced.graph.nodes if n in self.alive]
        for node in nodes:
            self.identity(node)
        for node in nodes:
            if node not in self.alias:
                self.product(node)
        for node in nodes:
            if node not in self.alias and node not in self.claimed:
                for attempt in (self.linear_unit, self.embed_unit, self.norm_unit, self.attention_unit,
                                self.elementwise_unit, self.sum_unit):
                    if attempt(node):
                        break
        return sorted(self.units, key=lambda u: self.traced.order[u.out])

    def add(self, unit: Unit) -> bool:
        """Record a unit and claim its nodes."""
        self.units.append(unit)
        for node in unit.nodes:
            self.claimed[node] = unit
        return True

    def identity(self, node: fx.Node) -> None:
        """Dropout that does nothing (eval mode or ``p = 0``), ``nn.Identity``, ``.contiguous()``."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if x is not None and (_is(m, nn.Identity) or (
                    isinstance(m, _DROPOUTS) and type(m).forward in [c.forward for c in _DROPOUTS]
                    and (not m.training or m.p == 0))):
                self.alias[node] = x
            return
        op = self.op(node)
        if op is None or not isinstance(op[1]["input"], fx.Node):
            return
        fn, args = op
        if fn == "identity" or (fn == "dropout" and (args["training"] is False or args["p"] == 0)):
            self.alias[node] = self.resolve(args["input"])

    def product(self, node: fx.Node) -> None:
        """``l(x) * r(x)`` -> Bilinear, ``act(l(x)) * r(x)`` -> Gated, folding a ``down`` linear after."""
        op = self.op(node)
        if op is None or op[0] != "mul":
            return
        a, b = self.resolve(op[1]["input"]), self.resolve(op[1]["other"])
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or a is b:
            return
        left, right = self.linear(a), self.linear(b)
        if left and right and self._pair(left, right) and self.only_consumer(a, node) and self.only_consumer(b, node):
            self._bilinear(node, [a, b], left, right, None)
            return
        for gate, other in ((a, b), (b, a)):
            act = self.activation(gate)
            if act is None or act[0] == "identity" or not self.only_consumer(gate, node):
                continue
            inner, right = self.linear(act[1]), self.linear(other)
            if (inner and right and self._pair(inner, right) and self.only_consumer(act[1], gate)
                    and self.only_consumer(other, node)):
                self._bilinear(node, [act[1], gate, other], inner, right, act[0])
                return

    def _pair(self, left: _Lin, right: _Lin) -> bool:
        return left.x is right.x and left.W.shape == right.W.shape

    def _bilinear(self, mul: fx.Node, factors: list[fx.Node], left: _Lin, right: _Lin, activation: str | None) -> None:
        hidden, W = left.W.shape[0], left.W
        users = self.consumers(mul)
        down = self.linear(users[0]) if len(users) == 1 and users[0] not in self.claimed else None
        if down is not None and (down.x is not mul or down.W.shape[1] != hidden):
            down = None
        D = down.W if down else torch.eye(hidden, dtype=W.dtype, device=W.device)
        params = {"L": left.W, "R": right.W, "D": D}
        bias = any(lin is not None and lin.b is not None for lin in (left, right, down))
        if bias:
            def zeros(n: int) -> torch.Tensor:
                return torch.zeros(n, dtype=W.dtype, device=W.device)
            params |= {"l": zeros(hidden) if left.b is None else left.b,
                       "r": zeros(hidden) if right.b is None else right.b,
                       "d": zeros(D.shape[0]) if down is None or down.b is None else down.b}
        kind = "Gated" if activation else "Bilinear"
        where = scope(mul) or _common_prefix([left.path, right.path])
        name = label(where) if where else kind.lower()
        if activation:
            def build(n: str, dom: Space, cod: Space) -> Kind:
                return Gated(n, dom, cod, hidden=hidden, activation=activation, bias=bias)
        else:
            def build(n: str, dom: Space, cod: Space) -> Kind:
                return Bilinear(n, dom, cod, hidden=hidden, bias=bias)
        nodes = [*factors, mul] + ([users[0]] if down else [])
        out = users[0] if down else mul
        self.add(Unit(kind, name, nodes, [left.x], out, build, params,
                      (left.key, right.key, down.key if down else None)))

    def linear_unit(self, node: fx.Node) -> bool:
        """``nn.Linear`` or ``F.linear`` -> Linear."""
        lin = self.linear(node)
        if lin is None:
            return False
        params = {"W": lin.W} | ({"b": lin.b} if lin.b is not None else {})
        bias = lin.b is not None
        return self.add(Unit("Linear", lin.name, [node], [lin.x], node,
                             lambda n, dom, cod: Linear(n, dom, cod, bias=bias), params, lin.key))

    def embed_unit(self, node: fx.Node) -> bool:
        """``nn.Embedding`` on integer ids -> Embed; the ids' wire has the vocabulary's size."""
        if node.op != "call_module":
            return False
        m, x = self.module(node), self.single_input(node)
        if not _is(m, nn.Embedding) or m.max_norm is not None or x is None or not self.wire(x, floating=False):
            return False
        ids = self.values[x]
        if ids.is_floating_point() or ids.dtype == torch.bool or self.int_dims.setdefault(x, m.num_embeddings) != m.num_embeddings:
            return False
        return self.add(Unit("Embed", base_name(node), [node], [x], node, Embed, {"W": m.weight}, m))

    def norm_unit(self, node: fx.Node) -> bool:
        """``nn.LayerNorm``, ``nn.RMSNorm``, ``F.layer_norm``, ``F.rms_norm`` over the last axis -> Norm."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if _is(m, nn.LayerNorm):
                norm, eps, weight, bias = "layer", m.eps, m.weight, m.bias
            elif _is(m, nn.RMSNorm):
                norm, eps, weight, bias = "rms", m.eps, m.weight, None
            else:
                return False
            shape, name, key = tuple(m.normalized_shape), base_name(node), m
        else:
            op = self.op(node)
            if op is None or op[0] not in ("layer_norm", "rms_norm") or not isinstance(op[1]["input"], fx.Node):
                return False
            args = op[1]
            norm, eps, x = ("layer" if op[0] == "layer_norm" else "rms"), args["eps"], self.resolve(args["input"])
            shape = args["normalized_shape"]
            if isinstance(shape, fx.Node):
                shape = self.values.get(shape)
            shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else None
            weight, bias = args["weight"], args.get("bias")
            if any(isinstance(p, fx.Node) and not self.const[p] for p in (weight, bias)) or isinstance(eps, fx.Node):
                return False
            weight, bias = (self.values[p] if isinstance(p, fx.Node) else p for p in (weight, bias))
            name, key = base_name(node), node
        if x is None or not self.wire(x) or shape != tuple(self.values[x].shape[-1:]) or (bias is not None and weight is None):
            return False
        params = ({"weight": weight} if weight is not None else {}) | ({"bias": bias} if bias is not None else {})
        affine, has_bias = weight is not None, bias is not None
        return self.add(Unit("Norm", name, [node], [x], node,
                             lambda n, dom, cod: Norm(n, cod, norm=norm, eps=eps, affine=affine, bias=has_bias),
                             params, key))

    def attention_unit(self, node: fx.Node) -> bool:
        """Causal or full self-attention with ``nn.MultiheadAttention`` -> Attention."""
        if node.op != "call_module":
            return False
        m = self.module(node)
        if not _is(m, nn.MultiheadAttention):
            return False
        try:
            bound = inspect.signature(m.forward).bind(*node.args, **node.kwargs)
        except TypeError:
            return False
        bound.apply_defaults()
        a = bound.arguments
        x = self.resolve(a["query"])
        getters = self.consumers(node)
        if not (self.wire(x) and self.resolve(a["key"]) is x and self.resolve(a["value"]) is x
                and a["key_padding_mask"] is None and m._qkv_same_embed_dim and m.in_proj_weight is not None
                and m.bias_k is None and m.bias_v is None and not m.add_zero_attn
                and not (m.training and m.dropout > 0)
                and (self.values[x].dim() == 2 or (self.values[x].dim() == 3 and m.batch_first))
                and getters and all(g.op == "call_function" and g.target is operator.getitem
                                    and g.args == (node, 0) for g in getters)):
            return False
        mask = a["attn_mask"]
        if mask is None:
            causal = bool(a["is_causal"])
        elif causal_mask(self.values.get(mask) if isinstance(mask, fx.Node) else mask, self.values[x].shape[-2]):
            causal = True
        else:
            return False
        out = getters[0]
        for g in getters[1:]:
            self.alias[g] = out
        E = m.embed_dim
        Wq, Wk, Wv = m.in_proj_weight.split(E)
        params = {"Wq": Wq, "Wk": Wk, "Wv": Wv, "Wo": m.out_proj.weight}
        bias = m.in_proj_bias is not None or m.out_proj.bias is not None
        if bias:
            zeros = torch.zeros(3 * E, dtype=Wq.dtype, device=Wq.device)
            bq, bk, bv = (zeros if m.in_proj_bias is None else m.in_proj_bias).split(E)
            bo = zeros[:E] if m.out_proj.bias is None else m.out_proj.bias
            params |= {"bq": bq, "bk": bk, "bv": bv, "bo": bo}
        heads = m.num_heads
        return self.add(Unit("Attention", base_name(node), [node, *getters], [x], out,
                             lambda n, dom, cod: Attention(n, cod, heads=heads, causal=causal, bias=bias),
                             params, m))

    def elementwise_unit(self, node: fx.Node) -> bool:
        """ReLU, GELU, SiLU, sigmoid, tanh, softplus, exp, neg, ``x**2``, ``x * x`` -> Elementwise."""
        act = self.activation(node)
        if act is None:
            return False
        fn, x = act
        key = self.module(node) if node.op == "call_module" else node
        return self.add(Unit("Elementwise", base_name(node), [node], [x], node,
                             lambda n, dom, cod: Elementwise(fn, cod, name=n), key=key))

    def sum_unit(self, node: fx.Node) -> bool:
        """``a + b`` -> Add and ``a * b`` -> Mul, for same-shaped float tensors."""
        op = self.op(node)
        if op is None or op[0] not in ("add", "mul") or op[1].get("alpha", 1) != 1:
            return False
        a, b = self.resolve(op[1]["input"]), self.resolve(op[1]["other"])
        if not (self.wire(a) and self.wire(b)):
            return False
        va, vb = self.values[a], self.values[b]
        if va.shape != vb.shape or va.dtype != vb.dtype:
            return False
        cls = Add if op[0] == "add" else Mul
        return self.add(Unit(cls.kind, base_name(node), [node], [a, b], node,
                             lambda n, dom, cod: cls(cod, n=2, name=n), key=node))


def _hashable(target: Any) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True


def _common_prefix(paths: list[str]) -> str:
    """The module path shared by all ``paths``: ``mlp.up``, ``mlp.gate`` -> ``mlp``."""
    parts = [p.split(".")[:-1] for p in paths if p]
    if len(parts) != len(paths) or not parts:
        return ""
    common: list[str] = []
    for names in zip(*parts):
        if len(set(names)) != 1:
            break
        common.append(names[0])
    return ".".join(common)


def node_args(node: fx.Node) -> Iterator[fx.Node]:
    """Every node among a node's arguments (nested in tuples, lists, dicts)."""
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), out.append)
    return iter(out)


def _constants(graph: fx.Graph) -> dict[fx.Node, bool]:
    """Whether each node's value is fixed by the module alone (it reads no input)."""
    const: dict[fx.Node, bool] = {}
    for node in graph.nodes:
        const[node] = node.op != "placeholder" and all(const[a] for a in node_args(node))
    return const


def _alive(graph: fx.Graph) -> set[fx.Node]:
    """The nodes the output depends on."""
    alive: set[fx.Node] = set()
    todo = [n for n in graph.nodes if n.op == "output"]
    while todo:
        node = todo.pop()
        if node not in alive:
            alive.add(node)
            todo.extend(node_args(node))
    return alive
