"""Which HuggingFace architectures ``compinterp.from_hf`` imports, how much of each it recognises, how exactly.

For every architecture tried (tiny random configs: 2 layers, d = 64, 4 heads, vocabulary 100;
every parameter perturbed so that biases and norm scales are not their defaults) it prints the
fraction of the model's parameters that sit in recognised (non-Opaque) boxes, whether the
parameter count equals the model's, and the largest logit difference from the model's own
forward at batch 3 and sequence lengths 1, 7 and 64; an architecture that does not import shows
its error. ``docs/import.md`` quotes this table.

    .venv/bin/python benchmarks/import_families.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

import compinterp as ci
from compinterp.frontend.hf import hf_inputs, recognised_fraction

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
         "vocab_size": 100}

TRIED: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=80,
                                            bos_token_id=0, eos_token_id=0),
    "llama (GQA)": lambda: transformers.LlamaConfig(**SMALL, num_key_value_heads=2),
    "llama (tied, biases)": lambda: transformers.LlamaConfig(**SMALL, tie_word_embeddings=True,
                                                             attention_bias=True, mlp_bias=True),
    "qwen2 (GQA, sliding)": lambda: transformers.Qwen2Config(**SMALL, num_key_value_heads=2, use_sliding_window=True,
                                                             sliding_window=5, max_window_layers=1),
    "mistral (GQA, window 16)": lambda: transformers.MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=16),
    "gpt_neox (parallel, rotary 1/2)": lambda: transformers.GPTNeoXConfig(**SMALL, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    "bert (masked LM, padding mask)": lambda: transformers.BertConfig(**SMALL),
    "opt (learned positions from row 2, ReLU)": lambda: transformers.OPTConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128, vocab_size=100,
        word_embed_proj_dim=64, max_position_embeddings=80),
    "phi (parallel, one shared norm, rotary 1/2)": lambda: transformers.PhiConfig(**SMALL),
    "distilbert (masked LM, padding mask)": lambda: transformers.DistilBertConfig(
        n_layers=2, dim=64, n_heads=4, hidden_dim=128, vocab_size=100),
    "gptj (parallel, one shared norm, rotary on adjacent pairs)": lambda: transformers.GPTJConfig(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, rotary_dim=8, bos_token_id=0, eos_token_id=0),
    "qwen3 (GQA, norms on query and key heads)": lambda: transformers.Qwen3Config(**SMALL, num_key_value_heads=2,
                                                                                   head_dim=16),
    "gemma (GQA, norms scaled by 1 + w, embeddings by sqrt(d))": lambda: transformers.GemmaConfig(
        **SMALL, num_key_value_heads=2, head_dim=16),
}


def measure(config: Any) -> dict[str, Any]:
    """The import's recognised fraction, parameter counts and largest logit difference, or its error;
    an encoder (BERT) as a masked LM, with token types and a padding mask on two of the three rows."""
    torch.manual_seed(0)
    encoder = config.model_type in ("bert", "distilbert")
    auto = transformers.AutoModelForMaskedLM if encoder else transformers.AutoModelForCausalLM
    try:
        model = auto.from_config(config, attn_implementation="eager").eval()
    except ValueError as err:
        return {"imported": False, "error": f"transformers has no causal LM for it: {str(err).splitlines()[0]}"}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theirs = sum(p.numel() for p in model.parameters())
    try:
        imported = ci.from_hf(model)
    except ci.CompinterpError as err:
        return {"imported": False, "error": str(err), "model_params": theirs}
    diffs = {}
    for length in (1, 7, 64):
        ids = torch.randint(100, (3, length), generator=torch.Generator().manual_seed(length))
        extra = {}
        if encoder:
            mask = torch.ones(3, length, dtype=torch.long)
            mask[1, length // 2 + 1:], mask[2, 1:] = 0, 0
            extra = {"attention_mask": mask} | ({"token_type_ids": torch.randint(2, (3, length))}
                                                if config.model_type == "bert" else {})
        with torch.no_grad():
            got = imported(*hf_inputs(imported, ids, **extra))
            diffs[length] = float((got - model(input_ids=ids, **extra).logits).abs().max())
    return {"imported": True, "recognised": recognised_fraction(imported), "params": imported.num_params(),
            "model_params": theirs, "max_logit_diff": diffs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    results = {name: measure(make()) for name, make in TRIED.items()}
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"{'architecture':44} {'recognised':>10} {'params':>8} {'HF params':>9}  max |logit diff| (T = 1, 7, 64)")
    for name, r in results.items():
        if r["imported"]:
            diffs = ", ".join(f"{d:.1e}" for d in r["max_logit_diff"].values())
            print(f"{name:44} {r['recognised']:>10.1%} {r['params']:>8} {r['model_params']:>9}  {diffs}")
        else:
            print(f"{name:44} {'not imported':>10}  {r['error']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
