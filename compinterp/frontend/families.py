"""Transformer families as table rows: where each piece of a HuggingFace model is, and its conventions.

A :class:`Family` names the modules of one block and of the model around it (paths
relative to the model's ``base_model``, or to a block for the block's own parts) and says
how to read them: norm kind and the attribute holding its eps, fused or separate q/k/v
projections, gated or plain MLP, ``Conv1D`` weights stored transposed, rotary or learned
positions, parallel or sequential residual, norms before or after the residual sum, where a
sliding window is set, and for encoders token types, a padding mask and a prediction head.
Everything a module or the config states itself (sizes, heads, kv heads, head dim, biases, the
attention scale, causality, tied embeddings, an embedding's scale) is read from there, not written
in the row.
:data:`FAMILIES` registers rows by the config's ``model_type``; adding a family of the same
shape is adding a row.

>>> FAMILIES["llama"].mlp, FAMILIES["gpt2"].conv1d
('gated', True)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType


@dataclass(frozen=True)
class Family:
    """One architecture family of transformers (see the module docstring)."""

    layers: str
    """The ``ModuleList`` of blocks, from the base model."""
    final_norm: str
    """The norm after the last block, from the base model."""
    attn_norm: str
    """In a block: the norm before attention."""
    attn: str
    """In a block: the attention module."""
    qkv: tuple[str, ...]
    """In a block: ``(q, k, v)`` projections, or one fused projection."""
    out: str
    """In a block: the attention's output projection."""
    mlp_norm: str
    """In a block: the norm before the MLP; ``""``: the attention's norm is shared (parallel blocks)."""
    mlp_in: tuple[str, ...]
    """In a block: ``(gate, up)`` projections of a gated MLP, or the one input projection."""
    mlp_out: str
    """In a block: the MLP's output projection."""
    norm: str = "rms"
    """``"rms"`` or ``"layer"``."""
    norm_offset: float = 0.0
    """What the norms add to their learned scale (Gemma's ``1 + w``: 1)."""
    eps: str = "variance_epsilon"
    """The attribute of a norm module holding its eps."""
    act: str = "hidden_act"
    """The config attribute naming the MLP's activation."""
    fused: str = ""
    """How a fused q/k/v projection's outputs are ordered: ``"blocks"`` (all q, all k, all v) or
    ``"per_head"`` (q, k, v of head 0, then of head 1, ...)."""
    conv1d: bool = False
    """Whether projections are GPT-2 ``Conv1D`` modules (weights stored ``in x out``)."""
    positions: str = ""
    """A learned position table (an ``nn.Embedding``) from the base model; ``""``: rotary positions."""
    position_offset: int = 0
    """The table's row for position 0 (OPT's tables start at row 2)."""
    rotary_dim: str = ""
    """The config attribute giving the rotary dimensions per head, base 10000 (GPT-J); ``""``: read
    ``rope_parameters`` (``rope_theta``, ``partial_rotary_factor``)."""
    rotary_interleaved: bool = False
    """Whether rotary turns adjacent pairs of dimensions (GPT-J) rather than ``i`` with ``i + dim/2``."""
    qk_norm: tuple[str, ...] = ()
    """In a block: RMS norms on each query and key head, ``(q_norm, k_norm)`` (Qwen3)."""
    parallel: bool | str = False
    """Whether attention and MLP read the same residual: always, never, or as the config attribute of
    this name says."""
    window: str = ""
    """Where a sliding window is set: ``"config"`` (``config.sliding_window``), ``"module"`` (the
    attention module's ``sliding_window``), ``""``: nowhere."""
    post_norm: bool = False
    """Whether each norm comes after its residual sum (BERT) rather than before the block reads it."""
    embed_norm: str = ""
    """A norm after the embeddings, from the base model."""
    token_types: str = ""
    """A token-type (segment) embedding, from the base model: a second input wire of type ids."""
    head: tuple[str, ...] = ()
    """From the model itself: a dense projection and a norm between the last block and the readout
    (``dense >> act >> norm``, BERT's masked-LM head)."""
    padded: bool = False
    """Whether attention reads a padding mask by default (``from_hf(padding=...)`` chooses): the last input
    wire ``keep:1``, 1.0 for tokens, 0.0 for padding."""
    requires: tuple[tuple[str, object], ...] = ()
    """Config values the row is written for, ``(attribute, value)``: a model with another value is refused."""
    absent: tuple[str, ...] = ()
    """Modules of the base model the row has no box for: a model that has one is refused."""

    @property
    def mlp(self) -> str:
        """``"gated"`` (``down(act(gate x) * up x)``) or ``"plain"`` (``out(act(in x))``)."""
        return "gated" if len(self.mlp_in) == 2 else "plain"


_LLAMA = Family(layers="layers", final_norm="norm", attn_norm="input_layernorm", attn="self_attn",
                qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), out="self_attn.o_proj",
                mlp_norm="post_attention_layernorm", mlp_in=("mlp.gate_proj", "mlp.up_proj"), mlp_out="mlp.down_proj")

FAMILIES: MappingProxyType[str, Family] = MappingProxyType({
    "gpt2": Family(layers="h", final_norm="ln_f", attn_norm="ln_1", attn="attn", qkv=("attn.c_attn",),
                   out="attn.c_proj", mlp_norm="ln_2", mlp_in=("mlp.c_fc",), mlp_out="mlp.c_proj", norm="layer",
                   eps="eps", act="activation_function", fused="blocks", conv1d=True, positions="wpe"),
    "llama": _LLAMA,
    "mistral": replace(_LLAMA, window="config"),
    "qwen2": replace(_LLAMA, window="module"),
    "qwen3": replace(_LLAMA, window="module", qk_norm=("self_attn.q_norm", "self_attn.k_norm")),
    "gemma": replace(_LLAMA, eps="eps", norm_offset=1.0),
    "gpt_neox": Family(layers="layers", final_norm="final_layer_norm", attn_norm="input_layernorm",
                       attn="attention", qkv=("attention.query_key_value",), out="attention.dense",
                       mlp_norm="post_attention_layernorm", mlp_in=("mlp.dense_h_to_4h",),
                       mlp_out="mlp.dense_4h_to_h", norm="layer", eps="eps", fused="per_head",
                       parallel="use_parallel_residual"),
    "phi": Family(layers="layers", final_norm="final_layernorm", attn_norm="input_layernorm", attn="self_attn",
                  qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), out="self_attn.dense",
                  mlp_norm="", mlp_in=("mlp.fc1",), mlp_out="mlp.fc2", norm="layer", eps="eps", parallel=True,
                  requires=(("qk_layernorm", False),)),
    "gptj": Family(layers="h", final_norm="ln_f", attn_norm="ln_1", attn="attn",
                   qkv=("attn.q_proj", "attn.k_proj", "attn.v_proj"), out="attn.out_proj", mlp_norm="",
                   mlp_in=("mlp.fc_in",), mlp_out="mlp.fc_out", norm="layer", eps="eps", act="activation_function",
                   parallel=True, rotary_dim="rotary_dim", rotary_interleaved=True),
    "opt": Family(layers="decoder.layers", final_norm="decoder.final_layer_norm", attn_norm="self_attn_layer_norm",
                  attn="self_attn", qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  out="self_attn.out_proj", mlp_norm="final_layer_norm", mlp_in=("fc1",), mlp_out="fc2", norm="layer",
                  eps="eps", act="activation_function", positions="decoder.embed_positions", position_offset=2,
                  requires=(("do_layer_norm_before", True),), absent=("decoder.project_in", "decoder.project_out")),
    "bert": Family(layers="encoder.layer", final_norm="", attn_norm="attention.output.LayerNorm",
                   attn="attention.self", qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
                   out="attention.output.dense", mlp_norm="output.LayerNorm", mlp_in=("intermediate.dense",),
                   mlp_out="output.dense", norm="layer", eps="eps", positions="embeddings.position_embeddings",
                   post_norm=True, embed_norm="embeddings.LayerNorm", token_types="embeddings.token_type_embeddings",
                   head=("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"), padded=True),
    "distilbert": Family(layers="transformer.layer", final_norm="", attn_norm="sa_layer_norm", attn="attention",
                         qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"), out="attention.out_lin",
                         mlp_norm="output_layer_norm", mlp_in=("ffn.lin1",), mlp_out="ffn.lin2", norm="layer",
                         eps="eps", act="activation", positions="embeddings.position_embeddings", post_norm=True,
                         embed_norm="embeddings.LayerNorm", head=("vocab_transform", "vocab_layer_norm"), padded=True),
})
"""The families :func:`~compinterp.frontend.hf.from_hf` reads, by the HF config's ``model_type``."""
