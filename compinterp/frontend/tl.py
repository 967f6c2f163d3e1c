"""``from_transformer_lens``: a TransformerLens ``HookedTransformer`` as a diagram of our boxes.

Its modules are read, never traced: ``embed`` (+ ``pos_embed``), per block ``ln1``, ``attn``,
``ln2``, ``mlp``, then ``ln_final`` and ``unembed``, into the same diagram shape as
:func:`~compinterp.frontend.hf.from_hf`'s (the same box names), from TransformerLens's own
weight layout: ``W_Q : heads x d_model x d_head`` becomes ``Wq : (heads d_head) x d_model``
(einsum ``"h d e -> (h e) d"``), ``W_O : heads x d_head x d_model`` becomes
``Wo : d_model x (heads d_head)``, ``W_in``, ``W_out`` and ``W_U`` are transposed. A setting
of the config the diagram cannot carry exactly is refused, naming it. transformer_lens is
never imported.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from compinterp.errors import CompinterpError, ImportTraceError, InputError
from compinterp.frontend.hf import ACTIVATIONS, same_outputs, stream
from compinterp.model import Model
from compinterp.syntax import (
    Add,
    Attention,
    Copy,
    Diagram,
    Elementwise,
    Embed,
    Gated,
    Id,
    Linear,
    Norm,
    PosEmbed,
    Space,
    Unembed,
    chain,
)

Params = dict[str, dict[str, torch.Tensor]]

NORMS: MappingProxyType[str, tuple[str, bool]] = MappingProxyType(
    {"LN": ("layer", True), "LNPre": ("layer", False), "RMS": ("rms", True), "RMSPre": ("rms", False)})
"""TransformerLens ``normalization_type`` as our norm kind and whether it has learned weights."""

_REFUSED: MappingProxyType[str, str] = MappingProxyType({
    "use_local_attn": "local attention windows",
    "post_embedding_ln": "a norm after the embedding",
    "use_normalization_before_and_after": "norms before and after each block",
    "attn_scores_soft_cap": "soft-capped attention scores", "output_logits_soft_cap": "soft-capped logits",
    "use_NTK_by_parts_rope": "NTK-by-parts rotary", "use_yarn_rope": "YaRN rotary", "use_logn_attn": "log-n attention",
    "clip_qkv": "clipped q, k, v", "num_experts": "mixtures of experts", "use_attention_sinks": "attention sinks",
})
"""Config settings the diagram does not carry: a model with any of them on (see :func:`_on`) is refused."""

POST_NORM = frozenset({"Olmo2ForCausalLM", "Olmo3ForCausalLM"})
"""Architectures TransformerLens runs with norms after the attention and MLP (refused)."""


def _on(value: Any) -> bool:
    """Whether a config setting is on: set, true, and not a non-positive number (a soft cap of -1 is off)."""
    return bool(value) and not (isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0)


BLOCK_HOOKS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "hook_resid_pre": ("resid_post{prev}",), "ln1.hook_normalized": ("ln_attn{i}",), "attn.hook_z": ("attn{i}.heads",),
    "hook_attn_out": ("attn{i}",), "hook_resid_mid": ("resid_mid{i}",), "ln2.hook_normalized": ("ln_mlp{i}",),
    "mlp.hook_pre": ("mlp_in{i}",), "mlp.hook_post": ("act{i}",), "hook_mlp_out": ("mlp_out{i}", "mlp{i}"),
    "hook_resid_post": ("resid_post{i}",),
})
"""TransformerLens's hook names inside block ``i`` (``blocks.{i}.<hook>``) and the names in our activation
cache (``compinterp.interventions.run_with_cache``) that hold the same values, the first that exists.
A norm's ``hook_normalized`` is its value before the learned scale and shift: the same as our norm box's
output only when the norm has none (``LNPre``, ``RMSPre``, folded weights)."""

HOOKS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({
    "hook_embed": ("embed",), "ln_final.hook_normalized": ("ln_final",), "blocks.0.hook_resid_pre": ("pos", "embed"),
})
"""TransformerLens's hook names outside the blocks (and block 0's input) and our cache names for them."""


def cache_name(model: Model, hook: str) -> str:
    """The name in our activation cache of ``model`` (imported by :func:`from_transformer_lens` or
    :func:`~compinterp.frontend.hf.from_hf`) that holds TransformerLens hook ``hook``'s value.

    >>> from compinterp.syntax import Space, Embed
    >>> cache_name(Model(Embed("embed", Space("tokens", 5), Space("resid", 4))), "blocks.0.hook_resid_pre")
    'embed'
    """
    parts = hook.split(".", 2)
    if hook in HOOKS:
        candidates = HOOKS[hook]
    elif len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in BLOCK_HOOKS:
        i = int(parts[1])
        candidates = tuple(c.format(i=i, prev=i - 1) for c in BLOCK_HOOKS[parts[2]])
    else:
        raise InputError(f"TransformerLens hook {hook!r} has no counterpart in our cache; known: "
                         f"{', '.join(HOOKS)}, blocks.<i>.{{{', '.join(BLOCK_HOOKS)}}}")
    boxes = model.boxes
    found = next((c for c in candidates if c.removesuffix(".heads") in boxes), None)
    if found is None:
        raise InputError(f"TransformerLens hook {hook!r} is not a value of this model: it has no box "
                         f"{' or '.join(repr(c) for c in candidates)}")
    if hook.endswith("hook_normalized") and boxes[found].data.get("affine"):
        raise InputError(f"TransformerLens hook {hook!r} is the value before norm '{found}' scales and shifts it, "
                         f"which is not a wire of this model ('{found}' is after)")
    return found


def is_transformer_lens(obj: object) -> bool:
    """Whether ``obj``'s class comes from ``transformer_lens`` (checked without importing it)."""
    return type(obj).__module__.startswith("transformer_lens.")


def from_transformer_lens(model: nn.Module, example: torch.Tensor | None = None) -> Model:
    """The :class:`~compinterp.Model` of a ``HookedTransformer``: ``tokens:d_vocab -> logits:d_vocab_out``,
    box for box, as :func:`~compinterp.frontend.hf.from_hf` builds it.

    Norms (``LN``, ``LNPre``, ``RMS``, ``RMSPre`` or none), standard or rotary positions, grouped-query
    attention, gated or plain MLPs, parallel attention and MLP, attention-only models, causal or
    bidirectional attention are read. A gated MLP's ``b_in`` (added after the gate's product)
    is folded into its output bias ``d = W_out^T b_in + b_out``, and dropped with ``b_out`` when both
    are zero, so the parameter count then differs from TransformerLens's by those biases. Given
    ``example`` token ids, the import is checked against the model's forward on them.
    """
    cfg = getattr(model, "cfg", None)
    if not isinstance(model, nn.Module) or not is_transformer_lens(model) or cfg is None \
            or not hasattr(model, "blocks"):
        raise ImportTraceError(f"from_transformer_lens needs a transformer_lens HookedTransformer, "
                               f"got {type(model).__name__}")
    for key, what in _REFUSED.items():
        if _on(getattr(cfg, key, None)):
            raise ImportTraceError(f"from_transformer_lens: {type(model).__name__} uses {what} (cfg.{key}), "
                                   "which the diagram does not carry")
    if getattr(cfg, "rotary_scaling_factor", 1.0) != 1.0 or getattr(cfg, "original_architecture", None) in POST_NORM:
        raise ImportTraceError(f"from_transformer_lens: {type(model).__name__} scales its rotary frequencies or puts "
                               "norms after the blocks (cfg.rotary_scaling_factor, cfg.original_architecture), "
                               "which the diagram does not carry")
    positions = getattr(cfg, "positional_embedding_type", "standard")
    if positions not in ("standard", "rotary"):
        raise ImportTraceError(f"from_transformer_lens: positional_embedding_type {positions!r} is not read "
                               "(only 'standard' and 'rotary')")
    if cfg.normalization_type is not None and cfg.normalization_type not in NORMS:
        raise ImportTraceError(f"from_transformer_lens: normalization_type {cfg.normalization_type!r} is not one of "
                               f"{', '.join(NORMS)} or None")
    params: Params = {}
    diagram = _diagram(model, cfg, params)
    try:
        imported = Model(diagram, params)
    except CompinterpError as err:
        raise ImportTraceError(f"from_transformer_lens: the weights of {type(model).__name__} do not fit its "
                               f"diagram: {err}") from None
    if example is not None:
        with torch.no_grad():
            same_outputs("from_transformer_lens", type(model).__name__, imported(example), model(example))
    return imported


def _diagram(model: nn.Module, cfg: Any, params: Params) -> Diagram:
    """The diagram of ``model``, filling ``params`` with each box's parameters."""
    resid = Space("resid", cfg.d_model)
    params["embed"] = {"W": model.embed.W_E}
    parts: list[Diagram] = [Embed("embed", Space("tokens", model.embed.W_E.shape[0]), resid)]
    if cfg.positional_embedding_type == "standard":
        params["pos"] = {"W": model.pos_embed.W_pos}
        parts.append(PosEmbed("pos", resid, positions=model.pos_embed.W_pos.shape[0]))
    for i, block in enumerate(model.blocks):
        ln1 = _norm(f"ln_attn{i}", resid, getattr(block, "ln1", None), cfg, params)
        attn = _attention(f"attn{i}", resid, block.attn, cfg, i, params)
        if cfg.attn_only:
            parts.append(stream(ln1 >> attn, f"resid_post{i}"))
            continue
        mlp = _mlp(i, resid, block.mlp, cfg, params)
        if cfg.parallel_attn_mlp and block.ln2 is block.ln1:
            parts.append(Copy(resid) >> (ln1 >> Copy(resid) >> attn @ mlp) @ Id(resid)
                         >> Add(resid, 3, name=f"resid_post{i}"))
            continue
        attn = ln1 >> attn
        mlp = _norm(f"ln_mlp{i}", resid, getattr(block, "ln2", None), cfg, params) >> mlp
        parts += [Copy(resid, 3) >> attn @ mlp @ Id(resid) >> Add(resid, 3, name=f"resid_post{i}")] \
            if cfg.parallel_attn_mlp else [stream(attn, f"resid_mid{i}"), stream(mlp, f"resid_post{i}")]
    parts.append(_norm("ln_final", resid, getattr(model, "ln_final", None), cfg, params))
    W_U = model.unembed.W_U
    params["unembed"] = {"W": W_U.t().contiguous(), "b": model.unembed.b_U}
    parts.append(Unembed("unembed", resid, Space("logits", W_U.shape[1]), bias=True))
    return chain(*parts)


def _norm(name: str, resid: Space, module: nn.Module | None, cfg: Any, params: Params) -> Diagram:
    """A TransformerLens norm as one ``Norm`` box (the identity when the model has none)."""
    if cfg.normalization_type is None:
        return Id(resid)
    kind, learned = NORMS[cfg.normalization_type]
    box = Norm(name, resid, norm=kind, eps=cfg.eps, affine=learned, bias=learned and kind == "layer")
    if learned:
        params[name] = {"weight": module.w} | ({"bias": module.b} if kind == "layer" else {})
    return box


def _attention(name: str, resid: Space, attn: nn.Module, cfg: Any, layer: int, params: Params) -> Attention:
    """A TransformerLens attention as one ``Attention`` box, its per-head weights flattened head-major."""
    heads, head_dim = cfg.n_heads, cfg.d_head
    W_K, W_V = getattr(attn, "_W_K", attn.W_K), getattr(attn, "_W_V", attn.W_V)
    b_K, b_V = getattr(attn, "_b_K", attn.b_K), getattr(attn, "_b_V", attn.b_V)
    scale = (cfg.attn_scale if cfg.use_attn_scale else 1.0) * (layer + 1 if cfg.scale_attn_by_inverse_layer_idx else 1)
    rotary = cfg.positional_embedding_type == "rotary"
    box = Attention(name, resid, heads, head_dim=head_dim, causal=cfg.attention_dir == "causal", bias=True,
                    kv_heads=W_K.shape[0], rotary_dim=cfg.rotary_dim if rotary else 0,
                    rotary_base=float(cfg.rotary_base) if rotary else 10000.0,
                    rotary_interleaved=rotary and bool(cfg.rotary_adjacent_pairs),
                    scale=None if math.isclose(scale, head_dim ** 0.5, rel_tol=1e-12) else 1.0 / scale,
                    qk_norm=cfg.eps if cfg.use_qk_norm else None)
    params[name] = {"Wq": _heads_in(attn.W_Q), "Wk": _heads_in(W_K), "Wv": _heads_in(W_V),
                    "Wo": attn.W_O.flatten(0, 1).t().contiguous(), "bq": attn.b_Q.flatten(), "bk": b_K.flatten(),
                    "bv": b_V.flatten(), "bo": attn.b_O} \
        | ({"q_norm": attn.q_norm.w, "k_norm": attn.k_norm.w} if cfg.use_qk_norm else {})
    return box


def _heads_in(W: torch.Tensor) -> torch.Tensor:
    """A per-head input projection ``heads x d_model x d_head`` as one ``(heads d_head) x d_model`` matrix."""
    return torch.einsum("h d e -> h e d", W).flatten(0, 1).contiguous()


def _mlp(i: int, resid: Space, mlp: nn.Module, cfg: Any, params: Params) -> Diagram:
    """A TransformerLens MLP: a ``Gated`` box, or ``Linear >> Elementwise >> Linear``."""
    act = ACTIVATIONS.get(cfg.act_fn)
    if act is None:
        raise ImportTraceError(f"from_transformer_lens: act_fn {cfg.act_fn!r} is not one of {', '.join(ACTIVATIONS)}")
    if cfg.gated_mlp:
        d = mlp.W_out.t() @ mlp.b_in + mlp.b_out
        biased = bool(mlp.b_in.any() or mlp.b_out.any())
        params[f"mlp{i}"] = {"L": mlp.W_gate.t().contiguous(), "R": mlp.W_in.t().contiguous(),
                             "D": mlp.W_out.t().contiguous()} \
            | ({"l": torch.zeros_like(mlp.b_in), "r": torch.zeros_like(mlp.b_in), "d": d} if biased else {})
        return Gated(f"mlp{i}", resid, resid, hidden=mlp.W_in.shape[1], activation=act, bias=biased)
    hidden = Space("hidden", mlp.W_in.shape[1])
    params[f"mlp_in{i}"] = {"W": mlp.W_in.t().contiguous(), "b": mlp.b_in}
    params[f"mlp_out{i}"] = {"W": mlp.W_out.t().contiguous(), "b": mlp.b_out}
    return Linear(f"mlp_in{i}", resid, hidden, bias=True) >> Elementwise(act, hidden, name=f"act{i}") \
        >> Linear(f"mlp_out{i}", hidden, resid, bias=True)
