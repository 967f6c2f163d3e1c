"""Linear maps and what is built from them: Linear, Embed, pointwise functions, and the bilinear and gated MLPs.

``l(x) * r(x)`` is a bilinear layer and ``act(l(x)) * r(x)`` a gated one, each
folding a following ``down`` linear.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from compinterp.frontend.matching import GraphReader, LinearMap, Unit, base_name, is_plain, label, scope
from compinterp.syntax import Bilinear, Elementwise, Embed, Gated, Kind, Linear, Space


class MlpPatterns(GraphReader):
    """The matchers for linear maps, embeddings, pointwise functions and bilinear or gated products."""

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

    def _pair(self, left: LinearMap, right: LinearMap) -> bool:
        return left.x is right.x and left.W.shape == right.W.shape

    def _bilinear(self, mul: fx.Node, factors: list[fx.Node], left: LinearMap, right: LinearMap,
                  activation: str | None) -> None:
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
        if not is_plain(m, nn.Embedding) or m.max_norm is not None or x is None or not self.wire(x, floating=False):
            return False
        ids = self.values[x]
        if ids.is_floating_point() or ids.dtype == torch.bool or self.int_dims.setdefault(x, m.num_embeddings) != m.num_embeddings:
            return False
        return self.add(Unit("Embed", base_name(node), [node], [x], node, Embed, {"W": m.weight}, m))

    def elementwise_unit(self, node: fx.Node) -> bool:
        """ReLU, GELU, SiLU, sigmoid, tanh, softplus, exp, neg, ``x**2``, ``x * x`` -> Elementwise."""
        act = self.activation(node)
        if act is None:
            return False
        fn, x = act
        key = self.module(node) if node.op == "call_module" else node
        return self.add(Unit("Elementwise", base_name(node), [node], [x], node,
                             lambda n, dom, cod: Elementwise(fn, cod, name=n), key=key))


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
