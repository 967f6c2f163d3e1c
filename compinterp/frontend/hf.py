"""``from_hf``: a HuggingFace transformer as a diagram of our boxes, read from its module tree.

The model's ``forward`` is never traced: a table row (:mod:`compinterp.frontend.families`,
chosen by ``config.model_type``) says where the embedding, each block's norms, attention and
MLP, the final norm and the readout are, and one walker turns the module tree and the row
into ``Embed`` (``+ PosEmbed``) ``>>`` per block ``residual(Norm >> Attention)``,
``residual(Norm >> MLP)`` (both on one residual when the family is parallel; norms after the
sums for an encoder; the sums named ``resid_mid<i>`` and ``resid_post<i>``) ``>> Norm >>
Unembed``. Attention boxes carry heads, kv heads, head dim, rotary settings, scale, causality
and a padding mask; GPT-2's ``Conv1D`` weights are transposed into ``Linear`` ones; a readout
tied to the token embedding stays one tensor. transformers is imported only to read a directory.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from compinterp.errors import CompinterpError, ImportTraceError
from compinterp.files import check_target
from compinterp.frontend.families import FAMILIES, Family
from compinterp.model import Model
from compinterp.syntax import (
    KEEP,
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
    Swap,
    Unembed,
    chain,
)

ACTIVATIONS: MappingProxyType[str, str] = MappingProxyType({
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
    "silu": "silu", "swish": "silu", "tanh": "tanh", "sigmoid": "sigmoid",
})
"""HuggingFace activation names (``config.hidden_act``, ``activation_function``) as ours."""

Params = dict[str, dict[str, torch.Tensor]]
Projection = tuple[torch.Tensor, torch.Tensor | None]


def is_hf(obj: object) -> bool:
    """Whether ``obj``'s class comes from ``transformers`` (checked without importing it)."""
    return type(obj).__module__.startswith("transformers.")


def from_hf(model: nn.Module | str | os.PathLike[str], example: torch.Tensor | None = None, *,
            padding: bool | None = None) -> Model:
    """The :class:`~compinterp.Model` of a HuggingFace transformer, box for box.

    Args:
        model: a ``transformers.PreTrainedModel`` of a family in
            :data:`~compinterp.frontend.families.FAMILIES` (a causal LM ends in ``Unembed`` to
            ``logits``; a bare base model in the final norm on ``resid``), or a local
            ``save_pretrained`` directory, read with ``local_files_only=True``.
        example: token ids ``(batch, seq)``; if given, the import is checked against the
            model's own forward on them and :class:`~compinterp.errors.ImportTraceError` raised
            if they differ.
        padding: whether attention reads a padding mask, the input wire ``keep:1`` (default:
            encoders do, decoders do not).

    A decoder's input wire is ``tokens:vocab`` (integer ids), and ``keep:1`` with ``padding``; an
    encoder also reads ``token_types`` (see :func:`hf_inputs`). There is no dropout: the import
    computes what the model computes in eval mode.
    """
    if isinstance(model, (str, os.PathLike)):
        model = _load(Path(model))
    if not isinstance(model, nn.Module) or not is_hf(model) or not hasattr(model, "config"):
        raise ImportTraceError(f"from_hf needs a transformers PreTrainedModel or a save_pretrained directory, "
                               f"got {type(model).__name__}")
    name, model_type = type(model).__name__, getattr(model.config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise ImportTraceError(f"from_hf: no table row for {name} (model_type {model_type!r}); known: "
                               f"{', '.join(FAMILIES)}; add a Family to compinterp.frontend.families.FAMILIES")
    _check_row(model, family)
    diagram, params, ties = _Walker(model, family, family.padded if padding is None else padding).diagram()
    try:
        imported = Model(diagram, params, ties=ties)
    except CompinterpError as err:
        raise ImportTraceError(f"from_hf: the weights of {name} do not fit its diagram: {err}") from None
    if example is not None:
        _check(imported, model, example, name)
    return imported


def convert(source: str | os.PathLike[str], out: str | os.PathLike[str],
            padding: bool | None = None) -> dict[str, Any]:
    """Import the ``save_pretrained`` directory ``source`` (``padding`` as for :func:`from_hf`) and save it
    as a compinterp model in ``out``; returns what was written (JSON: paths, model type, inputs,
    parameter count, recognised fraction, ties, boxes by kind)."""
    check_target(out)
    model = from_hf(source, padding=padding)
    model.save(out)
    kinds = Counter(box.kind for box in model.boxes.values())
    return {"source": str(source), "out": str(out), "model_type": _read_model_type(Path(source)),
            "dom": model.dom.to_json(), "num_params": model.num_params(), "recognised": recognised_fraction(model),
            "ties": model.ties, "boxes": dict(kinds)}


def _read_model_type(path: Path) -> str | None:
    """The ``model_type`` in a checkpoint directory's ``config.json``."""
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return config.get("model_type") if isinstance(config, dict) else None


def stream(block: Diagram, name: str) -> Diagram:
    """``residual(block)`` with its sum named ``name`` (``resid_mid0``: the cache holds the stream by that name)."""
    x = block.dom
    return Copy(x).then(block @ Id(x), Add(x, name=name))


class _Walker:
    """Reads one model's module tree along a family's row, collecting boxes' parameters on the way."""

    def __init__(self, model: nn.Module, family: Family, padded: bool) -> None:
        self.model, self.family, self.config, self.padded = model, family, model.config, padded
        self.base: nn.Module = getattr(model, "base_model", model)
        self.params: Params = {}

    def diagram(self) -> tuple[Diagram, Params, dict[str, str]]:
        """The diagram, its parameters by box, and the ties (``{"unembed.W": "embed.W"}`` when tied)."""
        family, config = self.family, self.config
        embed = self.model.get_input_embeddings()
        vocab, width = embed.weight.shape
        resid = Space("resid", width)
        self.params["embed"] = {"W": embed.weight}
        scale = getattr(embed, "scalar_embed_scale", 1.0)
        first: Diagram = Embed("embed", Space("tokens", vocab), resid, scale=None if scale == 1.0 else scale)
        if family.token_types:
            types = self.find(self.base, family.token_types).weight
            self.params["token_type"] = {"W": types}
            first = first @ Embed("token_type", Space("token_types", types.shape[0]), resid) >> Add(resid)
        parts = [self.beside(first)]
        if family.positions:
            table = self.find(self.base, family.positions).weight
            self.params["pos"] = {"W": table}
            parts.append(self.beside(PosEmbed("pos", resid, positions=table.shape[0], offset=family.position_offset)))
        if family.embed_norm:
            parts.append(self.beside(self.norm("ln_embed", resid, self.find(self.base, family.embed_norm))))
        parallel = family.parallel if isinstance(family.parallel, bool) \
            else bool(getattr(config, family.parallel, False))
        if parallel and family.post_norm:
            raise ImportTraceError(f"from_hf: {type(self.model).__name__}'s row asks for a parallel residual with "
                                   "norms after the sum, which the walker does not build")
        for i, block in enumerate(self.find(self.base, family.layers)):
            attn_norm = self.norm(f"ln_attn{i}", resid, self.find(block, family.attn_norm))
            attn = self.attention(f"attn{i}", resid, block)
            mlp = self.mlp(i, resid, block)
            mlp_norm = self.norm(f"ln_mlp{i}", resid, self.find(block, family.mlp_norm)) if family.mlp_norm else None
            if parallel:
                parts.append(self.parallel(i, attn_norm, attn, mlp_norm, mlp))
            elif family.post_norm:
                parts += [self.residual(attn, f"resid_mid{i}"), self.beside(attn_norm),
                          self.beside(stream(mlp, f"resid_post{i}")), self.beside(mlp_norm)]
            else:
                parts += [self.residual(self.beside(attn_norm) >> attn, f"resid_mid{i}"),
                          self.beside(stream(mlp_norm >> mlp, f"resid_post{i}"))]
        if self.padded:
            parts.append(Id(resid) @ Copy(KEEP, 0))
        if family.final_norm:
            parts.append(self.norm("ln_final", resid, self.find(self.base, family.final_norm)))
        if family.head:
            parts.append(self.head(resid))
        ties: dict[str, str] = {}
        head = self.model.get_output_embeddings()
        if head is not None:
            bias = getattr(head, "bias", None)
            parts.append(Unembed("unembed", resid, Space("logits", head.weight.shape[0]), bias=bias is not None))
            self.params["unembed"] = {} if bias is None else {"b": bias}
            if head.weight is embed.weight:
                ties["unembed.W"] = "embed.W"
            else:
                self.params["unembed"]["W"] = head.weight
        return chain(*parts), self.params, ties

    def beside(self, diagram: Diagram) -> Diagram:
        """``diagram`` with the padding wire passed alongside, when the model reads one."""
        return diagram @ Id(KEEP) if self.padded else diagram

    def residual(self, block: Diagram, name: str) -> Diagram:
        """The residual stream around a block with attention, ``resid (@ keep) -> resid^n``, which also
        reads the padding wire when there is one; the sum of the stream and the ``n`` outputs is named ``name``."""
        resid, n = block.cod[:1], len(block.cod)
        if not self.padded:
            return Copy(resid).then(block @ Id(resid), Add(resid, n + 1, name=name))
        return chain(Copy(resid) @ Copy(KEEP), Id(resid) @ Swap(resid, KEEP) @ Id(KEEP),
                     block @ Id(resid) @ Id(KEEP), Add(resid, n + 1, name=name) @ Id(KEEP))

    def parallel(self, i: int, attn_norm: Norm, attn: Attention, mlp_norm: Norm | None, mlp: Diagram) -> Diagram:
        """Block ``i`` with attention and MLP on one residual: their own norms, or one norm shared
        (``mlp_norm`` is ``None``)."""
        resid = attn.cod
        if not self.padded:
            if mlp_norm is None:
                return self.residual(chain(attn_norm, Copy(resid), attn @ mlp), f"resid_post{i}")
            return Copy(resid, 3) >> (attn_norm >> attn) @ (mlp_norm >> mlp) @ Id(resid) \
                >> Add(resid, 3, name=f"resid_post{i}")
        if mlp_norm is None:
            inner = chain(attn_norm @ Id(KEEP), Copy(resid) @ Id(KEEP), Id(resid) @ Swap(resid, KEEP), attn @ mlp)
        else:
            inner = chain(Copy(resid) @ Id(KEEP), Id(resid) @ Swap(resid, KEEP),
                          (attn_norm @ Id(KEEP) >> attn) @ (mlp_norm >> mlp))
        return self.residual(inner, f"resid_post{i}")

    def head(self, resid: Space) -> Diagram:
        """The prediction head between the last block and the readout: ``dense >> act >> norm``."""
        dense, norm = self.family.head
        weight, bias = self.projection(self.model, dense)
        self.params["head"] = {"W": weight} | ({"b": bias} if bias is not None else {})
        return chain(Linear("head", resid, resid, bias=bias is not None),
                     Elementwise(self.activation(), resid, name="head_act"),
                     self.norm("ln_head", resid, self.find(self.model, norm)))

    def find(self, root: nn.Module, path: str) -> Any:
        """The submodule at ``path`` (dots) under ``root``; an error naming the path and the row if absent."""
        try:
            return root.get_submodule(path)
        except AttributeError:
            raise ImportTraceError(f"from_hf: {type(self.model).__name__} has no module '{path}' under "
                                   f"{type(root).__name__}, which its family's row names") from None

    def projection(self, root: nn.Module, path: str) -> Projection:
        """Weight ``(out, in)`` and bias of a linear projection (a ``Conv1D``'s weight transposed)."""
        module = self.find(root, path)
        kind = type(module).__name__
        if self.family.conv1d != (kind == "Conv1D") or not (kind == "Conv1D" or isinstance(module, nn.Linear)):
            expected = "a Conv1D" if self.family.conv1d else "an nn.Linear"
            raise ImportTraceError(f"from_hf: module '{path}' of {type(self.model).__name__} is a {kind}; "
                                   f"its family's row expects {expected}")
        weight = module.weight.t().contiguous() if self.family.conv1d else module.weight
        return weight, module.bias

    def norm(self, name: str, resid: Space, module: nn.Module) -> Norm:
        """A norm module as one ``Norm`` box, its eps read from the row's attribute."""
        eps = getattr(module, self.family.eps, None)
        if not isinstance(eps, (int, float)):
            raise ImportTraceError(f"from_hf: norm {type(module).__name__} of {type(self.model).__name__} has no "
                                   f"numeric attribute '{self.family.eps}' (its family's eps attribute)")
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        box = Norm(name, resid, norm=self.family.norm, eps=eps, affine=weight is not None, bias=bias is not None,
                   offset=self.family.norm_offset)
        values = {role: t for role, t in (("weight", weight), ("bias", bias)) if t is not None}
        if values:
            self.params[name] = values
        return box

    def attention(self, name: str, resid: Space, block: nn.Module) -> Attention:
        """A block's attention as one ``Attention`` box: heads, kv heads, rotary, scale, window, biases."""
        config, family = self.config, self.family
        module = self.find(block, family.attn)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or resid.dim // heads
        if len(family.qkv) == 1:
            q, k, v = _split_fused(self.projection(block, family.qkv[0]), family.fused, heads, kv_heads, head_dim)
        else:
            q, k, v = (self.projection(block, path) for path in family.qkv)
        o = self.projection(block, family.out)
        projections = dict(zip("qkvo", (q, k, v, o)))
        scaling = getattr(module, "scaling", None)
        scale = None if scaling is None or math.isclose(scaling, head_dim ** -0.5, rel_tol=1e-12) else float(scaling)
        rotary_dim, base = (0, 10000.0) if family.positions else self.rotary(head_dim)
        window = {"config": getattr(config, "sliding_window", None),
                  "module": getattr(module, "sliding_window", None)}.get(family.window)
        box = Attention(name, resid, heads, head_dim=head_dim, causal=bool(getattr(module, "is_causal", True)),
                        bias="".join(p for p, (_, b) in projections.items() if b is not None), kv_heads=kv_heads,
                        rotary_dim=rotary_dim, rotary_base=base, rotary_interleaved=family.rotary_interleaved,
                        scale=scale, window=window, padded=self.padded, qk_norm=self.qk_eps(block))
        self.params[name] = {f"W{p}": w for p, (w, _) in projections.items()} \
            | {f"b{p}": b for p, (_, b) in projections.items() if b is not None} \
            | {role: self.find(block, path).weight for role, path in zip(("q_norm", "k_norm"), family.qk_norm)}
        return box

    def qk_eps(self, block: nn.Module) -> float | None:
        """The eps of the RMS norms on query and key heads, when the family has them (both must agree)."""
        if not self.family.qk_norm:
            return None
        eps = {getattr(self.find(block, path), self.family.eps, None) for path in self.family.qk_norm}
        if len(eps) != 1 or not isinstance(next(iter(eps)), (int, float)):
            raise ImportTraceError(f"from_hf: the query and key norms of {type(self.model).__name__} have eps "
                                   f"{sorted(map(repr, eps))}; one number is needed")
        return float(eps.pop())

    def rotary(self, head_dim: int) -> tuple[int, float]:
        """The rotary dimensions per head and the base, from the config (only the default rotary)."""
        if self.family.rotary_dim:
            return getattr(self.config, self.family.rotary_dim, None) or head_dim, 10000.0
        rope = dict(getattr(self.config, "rope_parameters", None) or {})
        kind = rope.get("rope_type", "default")
        if kind != "default":
            raise ImportTraceError(f"from_hf: {type(self.model).__name__} uses rope_type {kind!r}; only the "
                                   "default rotary embedding is read")
        base = rope.get("rope_theta", getattr(self.config, "rope_theta", None))
        if not isinstance(base, (int, float)):
            raise ImportTraceError(f"from_hf: {type(self.model).__name__}'s config gives no rope_theta")
        factor = rope.get("partial_rotary_factor", getattr(self.config, "partial_rotary_factor", None) or 1.0)
        return int(head_dim * factor), float(base)

    def activation(self) -> str:
        """The MLP's activation, by our name, from the config attribute the row names."""
        name = getattr(self.config, self.family.act, None)
        act = ACTIVATIONS.get(name) if isinstance(name, str) else None
        if act is None:
            raise ImportTraceError(f"from_hf: {type(self.model).__name__}'s activation {name!r} "
                                   f"(config.{self.family.act}) is not one of {', '.join(ACTIVATIONS)}")
        return act

    def mlp(self, i: int, resid: Space, block: nn.Module) -> Diagram:
        """The MLP of block ``i``: one ``Gated`` box, or ``Linear >> Elementwise >> Linear``."""
        act = self.activation()
        ins = [self.projection(block, path) for path in self.family.mlp_in]
        down, down_bias = self.projection(block, self.family.mlp_out)
        biased = {b is not None for _, b in ins} | {down_bias is not None}
        if len(biased) > 1:
            raise ImportTraceError(f"from_hf: block {i} of {type(self.model).__name__} has biases on some of its "
                                   "MLP projections only")
        if self.family.mlp == "gated":
            (gate, gate_bias), (up, up_bias) = ins
            self.params[f"mlp{i}"] = {"L": gate, "R": up, "D": down} | (
                {"l": gate_bias, "r": up_bias, "d": down_bias} if down_bias is not None else {})
            return Gated(f"mlp{i}", resid, resid, hidden=gate.shape[0], activation=act, bias=down_bias is not None)
        ((up, up_bias),) = ins
        hidden = Space("hidden", up.shape[0])
        self.params[f"mlp_in{i}"] = {"W": up} | ({"b": up_bias} if up_bias is not None else {})
        self.params[f"mlp_out{i}"] = {"W": down} | ({"b": down_bias} if down_bias is not None else {})
        return Linear(f"mlp_in{i}", resid, hidden, bias=up_bias is not None) \
            >> Elementwise(act, hidden, name=f"act{i}") \
            >> Linear(f"mlp_out{i}", hidden, resid, bias=down_bias is not None)


def _check_row(model: nn.Module, family: Family) -> None:
    """Refuse a model whose config or modules fall outside what its row is written for."""
    name = type(model).__name__
    for key, value in family.requires:
        if getattr(model.config, key, value) != value:
            raise ImportTraceError(f"from_hf: {name} has config.{key} = {getattr(model.config, key)!r}; its "
                                   f"family's row is written for {value!r}")
    base = getattr(model, "base_model", model)
    for path in family.absent:
        found = base
        for part in path.split("."):
            found = getattr(found, part, None)
        if found is not None:
            raise ImportTraceError(f"from_hf: {name} has a module '{path}' ({type(found).__name__}), for which "
                                   "its family's row has no box")


def recognised_fraction(model: Model) -> float:
    """The fraction of a model's parameters (each tensor once, tied ones too) held by non-Opaque boxes."""
    boxes, sizes, recognised = model.boxes, dict[int, int](), set[int]()
    for name, module in model.params.named_children():
        for p in module.parameters():
            sizes[id(p)] = p.numel()
            if not boxes[name].opaque:
                recognised.add(id(p))
    total = sum(sizes.values())
    return sum(sizes[i] for i in recognised) / total if total else 1.0


def _split_fused(qkv: Projection, layout: str, heads: int, kv_heads: int, head_dim: int) -> list[Projection]:
    """A fused q/k/v projection's weight and bias split into the three: ``"blocks"`` stacks all of q,
    then k, then v; ``"per_head"`` stacks head by head, einsum-like ``"(h three e) d"``."""
    weight, bias = qkv
    if layout == "blocks":
        sizes = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
        ws = weight.split(sizes)
        bs = bias.split(sizes) if bias is not None else (None, None, None)
        return [(w, b) for w, b in zip(ws, bs)]
    if layout == "per_head" and kv_heads == heads:
        ws = weight.unflatten(0, (heads, 3, head_dim)).unbind(1)
        bs = bias.unflatten(0, (heads, 3, head_dim)).unbind(1) if bias is not None else (None, None, None)
        return [(w.flatten(0, 1), b.flatten() if b is not None else None) for w, b in zip(ws, bs)]
    raise ImportTraceError(f"from_hf: a fused q/k/v projection laid out as {layout!r} with {kv_heads} kv heads "
                           f"for {heads} heads is not read")


def _load(path: Path) -> nn.Module:
    """The model saved with ``save_pretrained`` in directory ``path`` (the class its config names, else a
    causal LM), in eval mode, from local files only."""
    if not (path / "config.json").is_file():
        raise ImportTraceError(f"from_hf: {path} is not a save_pretrained directory (no config.json)")
    try:
        import transformers
    except ImportError:
        raise ImportTraceError(f"from_hf: reading {path} needs transformers: pip install 'compinterp[hf]'") from None
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        named = (getattr(config, "architectures", None) or [""])[0]
        cls = getattr(transformers, named, None) or transformers.AutoModelForCausalLM
        model = cls.from_pretrained(path, config=config, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ImportTraceError(f"from_hf: transformers cannot read {path}: {first}") from None
    return model.eval()


def hf_inputs(model: Model, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
              attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The inputs of a model imported by :func:`from_hf`, from HF's arguments: the token ids, then
    the token types (zeros if not given) and the padding mask as the ``keep:1`` wire (ones if not
    given) where its diagram reads them."""
    wires = [wire.label for wire in model.dom.wires]
    out = [input_ids]
    if "token_types" in wires:
        out.append(torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
    if KEEP.wires[0].label in wires:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        out.append(mask[..., None].to(model.box_params("embed")["W"].dtype))
    return tuple(out)


def _check(imported: Model, model: nn.Module, ids: torch.Tensor, name: str) -> None:
    """Raise if the import's outputs on token ids ``ids`` differ from the model's own forward."""
    with torch.no_grad():
        out = model(input_ids=ids)
        reference = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        got = imported(*hf_inputs(imported, ids))
    same_outputs("from_hf", name, got, reference)


def same_outputs(importer: str, name: str, got: torch.Tensor, reference: torch.Tensor) -> None:
    """Raise :class:`~compinterp.errors.ImportTraceError` unless an import's output ``got`` equals the
    model's ``reference`` on the example, up to round-off (the square root of the dtype's epsilon)."""
    if got.shape != reference.shape:
        raise ImportTraceError(f"{importer}: the import of {name} gives shape {tuple(got.shape)} on the example, "
                               f"the model {tuple(reference.shape)}")
    tol = torch.finfo(reference.dtype).eps ** 0.5
    scale = max(1.0, float(reference.abs().max()))
    if not torch.allclose(got, reference, rtol=tol, atol=tol * scale):
        diff = float((got.double() - reference.double()).abs().max())
        raise ImportTraceError(f"{importer}: the import of {name} differs from it on the example by up to "
                               f"{diff:.3g} (is the model in eval mode?)")
