"""Recognising norms: layer norm and RMS norm over the last axis, as modules or functions."""

from __future__ import annotations

import torch
from torch import fx, nn

from compinterp.frontend.matching import GraphReader, Unit, base_name, is_plain
from compinterp.syntax import Norm


class NormPatterns(GraphReader):
    """The matcher for norms."""

    def norm_unit(self, node: fx.Node) -> bool:
        """``nn.LayerNorm``, ``nn.RMSNorm``, ``F.layer_norm``, ``F.rms_norm`` over the last axis -> Norm."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if is_plain(m, nn.LayerNorm):
                norm, eps, weight, bias = "layer", m.eps, m.weight, m.bias
            elif is_plain(m, nn.RMSNorm):
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
