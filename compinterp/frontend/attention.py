"""Recognising self-attention: ``nn.MultiheadAttention``, or ``F.scaled_dot_product_attention`` between linear
projections, with no mask, ``is_causal``, or the causal mask."""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from compinterp.frontend.matching import GraphReader, Unit, base_name, is_plain, label, scope
from compinterp.semantics.kernels import attention
from compinterp.syntax import Attention, Space


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

    # -- attention written out around F.scaled_dot_product_attention (timm, hand-written models) ----------

    def sdpa(self, node: fx.Node) -> None:
        """``proj(merge(sdpa(split(lq(x)), split(lk(x)), split(lv(x)))))`` -> Attention, with any head split and
        merge made of reshapes, permutes and selections (one fused ``qkv`` linear or three); kept only if the
        box reproduces the recorded output."""
        if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
            return
        try:
            bound = inspect.signature(_sdpa_signature).bind(*node.args, **node.kwargs)
        except TypeError:
            return
        bound.apply_defaults()
        a = bound.arguments
        sources = [self._head_source(a[role]) for role in ("query", "key", "value")]
        if any(s is None for s in sources) or a["dropout_p"] not in (0, 0.0) or isinstance(a["scale"], fx.Node):
            return
        (lq, q_chain), (lk, k_chain), (lv, v_chain) = sources  # type: ignore[misc]
        maps = [self.linear(n) for n in (lq, lk, lv)]
        q, k = self.values[self.resolve(a["query"])], self.values[self.resolve(a["key"])]
        x = maps[0].x if maps[0] is not None else None
        if x is None or any(m is None or m.x is not x for m in maps) or q.dim() < 4:
            return
        if k.shape[-3] != q.shape[-3] and not a["enable_gqa"]:
            return
        t = q.shape[-2]
        mask = a["attn_mask"]
        if mask is None:
            causal = bool(a["is_causal"])
        elif causal_mask(self.values.get(mask) if isinstance(mask, fx.Node) else mask, t) and not a["is_causal"]:
            causal = True
        else:
            return
        merged = self._merge_target(node)
        if merged is None:
            return
        out_chain, proj_node = merged
        proj = self.linear(proj_node)
        heads, kv_heads, head_dim = q.shape[-3], k.shape[-3], q.shape[-1]
        rows = [self._rows(lin, chain) for lin, chain in zip((lq, lk, lv), (q_chain, k_chain, v_chain))]
        order = self._merge_order(node, out_chain, heads, head_dim)
        if proj is None or any(r is None for r in rows) or order is None:
            return
        params = {f"W{p}": m.W[r] for p, m, r in zip("qkv", maps, rows)}
        letters = "".join(p for p, m in zip("qkv", maps) if m.b is not None)
        params |= {f"b{p}": m.b[r] for p, m, r in zip("qkv", maps, rows) if m.b is not None}
        Wo = proj.W.new_zeros(proj.W.shape)
        Wo[:, order] = proj.W
        params["Wo"] = Wo
        if proj.b is not None:
            params["bo"], letters = proj.b, letters + "o"
        settings = {"heads": heads, "head_dim": head_dim, "causal": causal, "bias": letters or False,
                    "kv_heads": kv_heads, "scale": a["scale"]}
        box = Attention("check", Space("x", self.values[x].shape[-1]), **settings)
        with torch.no_grad():
            got = attention(heads, causal, box.data["bias"], params, self.values[x],
                            **{k: v for k, v in box.data.items() if k in ("kv_heads", "scale")})[0]
        want = self.values[proj_node]
        tol = 1e-5 * max(1.0, float(want.abs().max()))
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=tol):
            return
        nodes = [*dict.fromkeys([lq, lk, lv, *q_chain, *k_chain, *v_chain]), node, *out_chain, proj_node]
        inside = set(nodes)
        if any(n in self.claimed or any(u not in inside for u in self.consumers(n)) for n in nodes[:-1]):
            return
        where = scope(node)
        self.add(Unit("Attention", label(where) if where else base_name(node), nodes, [x], proj_node,
                      lambda n, dom, cod: Attention(n, cod, **settings), params,
                      (maps[0].key, maps[1].key, maps[2].key, proj.key)))

    def _head_source(self, value: Any) -> tuple[fx.Node, list[fx.Node]] | None:
        """The linear map's node a head split starts from, and the moves from it to ``value`` (last first)."""
        node, chain = self.resolve(value), []
        while isinstance(node, fx.Node) and self.linear(node) is None:
            if not _moves(node) or len(chain) > 16:
                return None
            chain.append(node)
            node = self.resolve(node.args[0])
        return (node, chain) if isinstance(node, fx.Node) else None

    def _merge_target(self, node: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
        """The moves after the attention's output up to the output projection, and the projection's node."""
        chain: list[fx.Node] = []
        while True:
            users = self.consumers(node)
            if len(users) != 1:
                return None
            (node,) = users
            lin = self.linear(node)
            if lin is not None and chain and self.resolve(lin.x) is chain[-1]:
                return chain, node
            if not _moves(node) or len(chain) > 16:
                return None
            chain.append(node)

    def _replay(self, start: fx.Node, value: torch.Tensor, chain: list[fx.Node]) -> Any:
        """The chain of moves (in order) run on ``value`` in place of ``start``'s value."""
        env: dict[fx.Node, Any] = {start: value}
        for step in chain:
            def get(n: fx.Node) -> Any:
                n = self.resolve(n)
                return env[n] if n in env else self.values[n]
            args, kwargs = fx.node.map_arg((step.args, step.kwargs), get)
            env[step] = (step.target(*args, **kwargs) if step.op == "call_function"
                         else getattr(args[0], str(step.target))(*args[1:], **kwargs))
        return env[chain[-1]] if chain else value

    def _rows(self, linear: fx.Node, chain: list[fx.Node]) -> torch.Tensor | None:
        """The rows of ``linear``'s weight giving each (head, dim) of the split, head by head; ``None`` if they
        vary along the batch or sequence axes."""
        out = self.values[linear]
        index = torch.arange(out.shape[-1], dtype=torch.float64).expand(out.shape)
        try:
            split = self._replay(linear, index, list(reversed(chain)))
        except Exception:
            return None
        if not isinstance(split, torch.Tensor) or split.dim() < 4:
            return None
        first = split[..., :1, :].expand(split.shape)
        lead = split.reshape(-1, *split.shape[-3:])
        if not torch.equal(split, first) or not (lead == lead[:1]).all():
            return None
        return lead[0, :, 0, :].reshape(-1).long()

    def _merge_order(self, sdpa: fx.Node, chain: list[fx.Node], heads: int, head_dim: int) -> torch.Tensor | None:
        """For each input of the output projection, the (head, dim) of the attention's output it reads, as
        ``head * head_dim + dim``; ``None`` unless that is a permutation fixed along batch and sequence."""
        out = self.values[sdpa]
        index = torch.arange(heads * head_dim, dtype=torch.float64).reshape(heads, 1, head_dim).expand(out.shape)
        try:
            merged = self._replay(sdpa, index, chain)
        except Exception:
            return None
        if not isinstance(merged, torch.Tensor) or merged.shape[-1] != heads * head_dim:
            return None
        flat = merged.reshape(-1, heads * head_dim)
        order = flat[0].long()
        if not (flat == flat[:1]).all() or not torch.equal(order.sort().values, torch.arange(heads * head_dim)):
            return None
        return order


def _sdpa_signature(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: float = 0.0,
                    is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> None:
    """The arguments of ``F.scaled_dot_product_attention``, to bind a call's."""


_MOVE_METHODS = {"reshape", "view", "permute", "transpose", "unbind", "chunk", "split", "contiguous", "flatten",
                 "unflatten", "swapaxes", "__getitem__"}
_MOVE_FUNCTIONS = {torch.reshape, torch.permute, torch.transpose, torch.unbind, torch.chunk, torch.split,
                   torch.flatten, torch.unflatten, torch.swapaxes, operator.getitem}


def _moves(node: fx.Node) -> bool:
    """Whether ``node`` only moves entries (reshapes, permutes, selects) of its first argument."""
    if node.op == "call_method":
        return str(node.target) in _MOVE_METHODS
    return node.op == "call_function" and node.target in _MOVE_FUNCTIONS and bool(node.args)
