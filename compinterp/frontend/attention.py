"""Recognising self-attention: ``nn.MultiheadAttention`` with no mask, ``is_causal``, or the causal mask."""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import fx, nn

from compinterp.frontend.matching import GraphReader, Unit, base_name, is_plain
from compinterp.syntax import Attention


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


class AttentionPatterns(GraphReader):
    """The matcher for self-attention."""

    def attention_unit(self, node: fx.Node) -> bool:
        """Causal or full self-attention with ``nn.MultiheadAttention`` -> Attention."""
        if node.op != "call_module":
            return False
        m = self.module(node)
        if not is_plain(m, nn.MultiheadAttention):
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
