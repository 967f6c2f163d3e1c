"""Recognising our box kinds in a traced torch graph.

One pass finds the identities (dropout in eval mode, ``nn.Identity``,
``.contiguous()``), one attention written around ``F.scaled_dot_product_attention``,
one the products (``l(x) * r(x)`` is a bilinear layer, ``act(l(x)) * r(x)`` a gated
one, each folding a following ``down`` linear), and one the single nodes (linear,
embedding, norms, attention, convolutions, batch norm, pooling, flattening, position
tables, pointwise functions, sums and products). What is left is for
:mod:`compinterp.frontend.regions`.

The matchers live by what they recognise: :mod:`compinterp.frontend.mlp`,
:mod:`compinterp.frontend.norms`, :mod:`compinterp.frontend.attention`,
:mod:`compinterp.frontend.vision`; what they share is in
:mod:`compinterp.frontend.matching`. Here are the passes, the identities, and sums
and products of wires.
"""

from __future__ import annotations

from torch import fx, nn

from compinterp.frontend.attention import AttentionPatterns
from compinterp.frontend.matching import Unit, base_name, is_plain
from compinterp.frontend.mlp import MlpPatterns
from compinterp.frontend.norms import NormPatterns
from compinterp.frontend.vision import VisionPatterns
from compinterp.syntax import Add, Mul

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class Recognizer(MlpPatterns, NormPatterns, AttentionPatterns, VisionPatterns):
    """Finds units in a traced graph; ``alias`` maps identity nodes to the value they pass on."""

    # -- the passes --------------------------------------------------------------------------

    def run(self) -> list[Unit]:
        """Recognise every unit of the graph, in the graph's order."""
        nodes = [n for n in self.traced.graph.nodes if n in self.alive]
        for node in nodes:
            self.identity(node)
        for node in nodes:
            if node not in self.alias:
                self.sdpa(node)
        for node in nodes:
            if node not in self.alias and node not in self.claimed:
                self.product(node)
        for node in nodes:
            if node not in self.alias and node not in self.claimed:
                for attempt in (self.linear_unit, self.embed_unit, self.norm_unit, self.attention_unit,
                                self.conv_unit, self.batch_norm_unit, self.pool_unit, self.flatten_unit,
                                self.channel_scale_unit, self.pos_table_unit, self.elementwise_unit, self.sum_unit):
                    if attempt(node):
                        break
        return sorted(self.units, key=lambda u: self.traced.order[u.out])

    def identity(self, node: fx.Node) -> None:
        """Dropout that does nothing (eval mode or ``p = 0``), ``nn.Identity``, ``.contiguous()``."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if x is not None and (is_plain(m, nn.Identity) or (
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
