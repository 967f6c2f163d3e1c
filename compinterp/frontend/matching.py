"""What the pattern matchers share: the units they make and the ways they read a traced torch graph.

A :class:`Unit` is a recognised box in the making. :class:`GraphReader` holds the
traced graph and what is recognised so far, and reads nodes: which torch function
or module a node calls (the tables below), which linear map or pointwise function
it applies, who reads its value. The matchers themselves are in
:mod:`compinterp.frontend.mlp`, :mod:`compinterp.frontend.norms` and
:mod:`compinterp.frontend.attention`; :mod:`compinterp.frontend.patterns` runs them.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from compinterp.frontend.trace import Traced
from compinterp.syntax import Kind, Space

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
        return self.kind in ("Add", "Mul", "Elementwise", "Norm", "Attention", "ChannelAffine", "PosEmbed")


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
    **{fn: _Op("conv", ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
               {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
       for fn in (F.conv1d, F.conv2d, F.conv3d)},
    torch.flatten: _Op("flatten", ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}),
    F.batch_norm: _Op("batch_norm", ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum",
                                     "eps"), {"weight": None, "bias": None, "training": False, "momentum": 0.1,
                                              "eps": 1e-5}),
}
_METHODS: dict[str, _Op] = {
    **{name: _Op(name, ("input",)) for name in _UNARY},
    "add": _Op("add", ("input", "other", "alpha"), {"alpha": 1}),
    "mul": _Op("mul", ("input", "other")),
    "pow": _Op("pow", ("input", "exponent")),
    "contiguous": _Op("identity", ("input",)),
    "flatten": _Op("flatten", ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}),
}
_ACTIVATIONS = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu",
                nn.Softplus: "softplus"}


def is_plain(module: nn.Module, cls: type[nn.Module]) -> bool:
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


@dataclass(frozen=True)
class LinearMap:
    """A linear map found in the graph: ``y = W x + b``."""

    name: str
    path: str
    x: fx.Node
    W: torch.Tensor
    b: torch.Tensor | None
    key: object


class GraphReader:
    """The traced graph, what is recognised in it so far (``alias``, ``claimed``, ``units``) and ways to read its nodes.

    ``alias`` maps identity nodes to the value they pass on; ``claimed`` maps each
    node a unit covers to the unit.
    """

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

    def linear(self, node: fx.Node) -> LinearMap | None:
        """The linear map a node applies (``nn.Linear`` or ``F.linear`` with constant weights)."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if not is_plain(m, nn.Linear) or x is None:
                return None
            found = LinearMap(base_name(node), str(node.target), x, m.weight, m.bias, m)
        else:
            op = self.op(node)
            if op is None or op[0] != "linear":
                return None
            args = op[1]
            w, b = args["weight"], args["bias"]
            if not (isinstance(w, fx.Node) and self.const[w] and (b is None or isinstance(b, fx.Node) and self.const[b])):
                return None
            path = str(w.target).removesuffix(".weight") if w.op == "get_attr" else ""
            found = LinearMap(label(path) if path else base_name(node), path, self.resolve(args["input"]),
                              self.values[w], None if b is None else self.values[b], w)
        ok = (self.wire(found.x) and isinstance(found.W, torch.Tensor) and found.W.dim() == 2
              and found.W.shape[1] == self.values[found.x].shape[-1]
              and (found.b is None or found.b.shape == found.W.shape[:1]))
        return found if ok else None

    def activation(self, node: fx.Node) -> tuple[str, fx.Node] | None:
        """The pointwise function (an ``ELEMENTWISE`` name) a node applies, and its input."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            fn = next((name for cls, name in _ACTIVATIONS.items() if is_plain(m, cls)), None)
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

    def add(self, unit: Unit) -> bool:
        """Record a unit and claim its nodes."""
        self.units.append(unit)
        for node in unit.nodes:
            self.claimed[node] = unit
        return True


def _hashable(target: Any) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True


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
