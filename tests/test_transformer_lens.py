"""TransformerLens HookedTransformers come in as diagrams of our boxes, exactly, and load without it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from support import assert_error

import compinterp as ci
from compinterp.errors import ImportTraceError
from compinterp.frontend.hf import recognised_fraction
from compinterp.frontend.tl import cache_name
from compinterp.interventions.cache import attention_patterns, run_with_cache

tl = pytest.importorskip("transformer_lens", reason="transformer-lens is not installed")

BASE = {"n_layers": 2, "d_model": 64, "n_ctx": 80, "d_head": 16, "n_heads": 4, "d_mlp": 128, "d_vocab": 100}
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2_like": {**BASE, "act_fn": "gelu_new", "normalization_type": "LN"},
    "llama_like": {**BASE, "n_key_value_heads": 2, "act_fn": "silu", "normalization_type": "RMS",
                   "positional_embedding_type": "rotary", "rotary_dim": 16, "gated_mlp": True, "final_rms": True},
    "qwen3_like": {**BASE, "n_key_value_heads": 2, "act_fn": "silu", "normalization_type": "RMS",
                   "positional_embedding_type": "rotary", "rotary_dim": 16, "gated_mlp": True, "use_qk_norm": True},
    "neox_like": {**BASE, "act_fn": "gelu", "normalization_type": "LNPre", "positional_embedding_type": "rotary",
                  "rotary_dim": 8, "parallel_attn_mlp": True},
    "gptj_like": {**BASE, "act_fn": "gelu_new", "normalization_type": "LN", "positional_embedding_type": "rotary",
                  "rotary_dim": 8, "rotary_adjacent_pairs": True, "parallel_attn_mlp": True},
    "attn_only": {**BASE, "d_mlp": None, "act_fn": "relu", "normalization_type": None, "attn_only": True,
                  "scale_attn_by_inverse_layer_idx": True},
}
"""Tiny configs: GPT-2-like (layer norms, learned positions), Llama-like (RMS, rotary, grouped-query,
gated MLP; Qwen3-like with norms on query and key heads), GPT-NeoX-like (folded layer norms, partial rotary, parallel attention and MLP), GPT-J-like
(rotary on adjacent pairs), and an
attention-only model without norms, scaled by the inverse layer index."""
ARCHS = sorted(CONFIGS)


def build(arch: str) -> torch.nn.Module:
    """A random HookedTransformer of ``arch``, every parameter perturbed."""
    torch.manual_seed(0)
    model = tl.HookedTransformer(tl.HookedTransformerConfig(**CONFIGS[arch])).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, ci.Model]]:
    return {arch: (model, ci.from_transformer_lens(model)) for arch in ARCHS for model in [build(arch)]}


def ids(length: int) -> torch.Tensor:
    return torch.randint(100, (3, length), generator=torch.Generator().manual_seed(length))


@pytest.mark.parametrize("length", [1, 7, 64])
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_transformer_lens(models: dict, arch: str, length: int) -> None:
    model, imported = models[arch]
    with torch.no_grad():
        assert float((imported(ids(length)) - model(ids(length))).abs().max()) < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_parameters_are_recognised_and_counted(models: dict, arch: str) -> None:
    model, imported = models[arch]
    assert recognised_fraction(imported) == 1.0
    theirs = sum(p.numel() for p in model.parameters())
    folded = CONFIGS[arch]["n_layers"] * CONFIGS[arch]["d_mlp"] if CONFIGS[arch].get("gated_mlp") else 0
    assert imported.num_params() == theirs + folded     # a gated MLP's b_in folded into zero l, r and d


def test_same_diagram_shape_as_hf(models: dict) -> None:
    boxes = models["llama_like"][1].boxes
    assert boxes["attn0"].data == {"heads": 4, "head_dim": 16, "causal": True, "bias": True, "kv_heads": 2,
                                   "rotary_dim": 16, "rotary_base": 10000.0}
    assert boxes["mlp1"].kind == "Gated" and boxes["ln_final"].data["norm"] == "rms"
    assert models["attn_only"][1].boxes["attn1"].data["scale"] == pytest.approx(1 / (4 * 2))
    neox = models["neox_like"][1]
    assert [box.kind for box in neox.diagram.boxes][1:9] == ["Copy", "Norm", "Attention", "Norm", "Linear",
                                                             "Elementwise", "Linear", "Add"]
    assert neox.boxes["ln_attn0"].data["affine"] is False


def test_from_torch_dispatches_and_saved_models_load_without_it(models: dict, tmp_path: Path) -> None:
    model, _ = models["llama_like"]
    imported = ci.from_torch(model, ids(7))
    imported.save(tmp_path / "model")
    with torch.no_grad():
        save_file({"ids": ids(7), "logits": imported(ids(7))}, str(tmp_path / "io.safetensors"))
    code = ("import sys; sys.modules['transformer_lens'] = None; sys.modules['transformers'] = None\n"
            "import torch, compinterp; from safetensors.torch import load_file\n"
            f"m = compinterp.load({str(tmp_path / 'model')!r}); d = load_file({str(tmp_path / 'io.safetensors')!r})\n"
            "assert torch.equal(m(d['ids']), d['logits']); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_settings_it_cannot_carry_are_refused() -> None:
    local = tl.HookedTransformer(tl.HookedTransformerConfig(**{**CONFIGS["gpt2_like"], "use_local_attn": True,
                                                               "window_size": 4, "attn_types": ["local", "local"]}))
    assert_error(ImportTraceError, lambda: ci.from_transformer_lens(local), "local attention", "cfg.use_local_attn")
    assert_error(ImportTraceError, lambda: ci.from_transformer_lens(torch.nn.Linear(2, 2)), "HookedTransformer",
                 "Linear")


HOOKS = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_z",
         "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.1.ln2.hook_normalized", "blocks.1.mlp.hook_pre",
         "blocks.1.mlp.hook_post", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post",
         "ln_final.hook_normalized"]
NOT_WIRES = {("gpt2_like", "normalized"), ("llama_like", "normalized"), ("llama_like", "mlp.hook_p"),
             ("neox_like", "resid_mid")}
"""Hooks that are no wire of the import: a norm's value before its learned scale, a gated MLP's inside,
the middle of a parallel block (which TransformerLens does not fill either)."""


@pytest.mark.parametrize("arch", ["gpt2_like", "llama_like", "neox_like"])
def test_hook_names_map_to_our_cache(models: dict, arch: str) -> None:
    model, imported = models[arch]
    tokens = ids(7)
    with torch.no_grad():
        _, theirs = model.run_with_cache(tokens)
    ours = run_with_cache(imported, tokens)
    for hook in HOOKS:
        if any(a == arch and part in hook for a, part in NOT_WIRES):
            assert_error(ci.InputError, lambda: cache_name(imported, hook), repr(hook))
            continue
        torch.testing.assert_close(ours[cache_name(imported, hook)], theirs[hook], atol=1e-5, rtol=1e-4)
    patterns = attention_patterns(imported, tokens, box="attn1")
    torch.testing.assert_close(patterns, theirs["blocks.1.attn.hook_pattern"], atol=1e-5, rtol=1e-4)
    assert_error(ci.InputError, lambda: cache_name(imported, "blocks.0.attn.hook_rot_q"), "hook_rot_q")
