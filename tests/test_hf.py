"""HuggingFace transformers come in as diagrams of our boxes, exactly: logits, parameter counts, ties,
files that load without transformers, and the errors of the importer."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from support import assert_error

import compinterp as ci
from compinterp.errors import ImportTraceError, InputError
from compinterp.frontend.hf import hf_inputs, recognised_fraction

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install '.[hf]')")

SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
         "vocab_size": 100}
GQA = {**SMALL, "num_key_value_heads": 2}

CONFIGS: dict[str, Callable[[], object]] = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=80,
                                            bos_token_id=0, eos_token_id=0),
    "llama": lambda: transformers.LlamaConfig(**GQA),
    "llama_tied": lambda: transformers.LlamaConfig(**SMALL, tie_word_embeddings=True, attention_bias=True,
                                                   mlp_bias=True),
    "qwen2": lambda: transformers.Qwen2Config(**GQA, use_sliding_window=True, sliding_window=5, max_window_layers=1),
    "mistral": lambda: transformers.MistralConfig(**GQA, sliding_window=16),
    "qwen3": lambda: transformers.Qwen3Config(**GQA, head_dim=16),
    "gemma": lambda: transformers.GemmaConfig(**GQA, head_dim=16),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**SMALL, rope_parameters={
        "rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5}),
    "bert": lambda: transformers.BertConfig(**SMALL, max_position_embeddings=80),
    "distilbert": lambda: transformers.DistilBertConfig(n_layers=2, dim=64, n_heads=4, hidden_dim=128, vocab_size=100,
                                                        max_position_embeddings=80),
    "opt": lambda: transformers.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128,
                                          vocab_size=100, word_embed_proj_dim=64, max_position_embeddings=80),
    "phi": lambda: transformers.PhiConfig(**SMALL),
    "gptj": lambda: transformers.GPTJConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=100, rotary_dim=8,
                                            bos_token_id=0, eos_token_id=0),
}
"""Tiny random configurations: grouped-query attention (Llama, Qwen2, Qwen3, Mistral), biases on q/k/v
only (Qwen2), RMS norms on each query and key head (Qwen3), norms scaling by ``1 + w`` and embeddings
by ``sqrt(d)`` (Gemma), sliding windows shorter than the longest
test sequence (Qwen2's second layer, Mistral), tied embeddings (GPT-2, Llama tied, BERT, OPT),
parallel residual and partial rotary (GPT-NeoX; Phi and GPT-J with one norm shared by attention and
MLP), rotary on adjacent pairs (GPT-J), learned positions read from row 2 (OPT), and a bidirectional
encoder with post-norm blocks, token types and a padding mask (BERT, as a masked LM)."""

LENGTHS = (1, 7, 64)
ENCODERS = ("bert", "distilbert")
ARCHS = sorted(CONFIGS)


def build(arch: str, attention: str = "eager") -> torch.nn.Module:
    """A random model of ``arch`` in eval mode, every parameter (biases and norm scales too) perturbed."""
    torch.manual_seed(0)
    auto = transformers.AutoModelForMaskedLM if arch in ENCODERS else transformers.AutoModelForCausalLM
    model = auto.from_config(CONFIGS[arch](), attn_implementation=attention).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, ci.Model]]:
    out = {}
    for arch in ARCHS:
        model = build(arch)
        out[arch] = (model, ci.from_hf(model))
    return out


def ids(length: int, batch: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randint(100, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_logits(model: torch.nn.Module, tokens: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens, **kwargs).logits


def encoder_inputs(arch: str, length: int) -> dict[str, torch.Tensor]:
    """An encoder's padding mask (the second row padded after half its tokens, the third after one) and
    BERT's token types; nothing for a decoder."""
    if arch not in ENCODERS:
        return {}
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, length // 2 + 1:] = 0
    mask[2, 1:] = 0
    types = torch.randint(2, (3, length), generator=torch.Generator().manual_seed(2))
    return {"attention_mask": mask} | ({"token_type_ids": types} if arch == "bert" else {})


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_hf(models: dict, arch: str, length: int) -> None:
    model, imported = models[arch]
    tokens = ids(length)
    extra = encoder_inputs(arch, length)
    with torch.no_grad():
        got = imported(*hf_inputs(imported, tokens, **extra))
    assert got.shape == (3, length, 100)
    assert float((got - hf_logits(model, tokens, **extra)).abs().max()) < 1e-4


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_sdpa_attention_gives_the_same_import(arch: str) -> None:
    model = build(arch, attention="sdpa")
    imported = ci.from_hf(model)
    tokens = ids(64)
    extra = encoder_inputs(arch, 64)
    with torch.no_grad():
        got = imported(*hf_inputs(imported, tokens, **extra))
    assert float((got - hf_logits(model, tokens, **extra)).abs().max()) < 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_every_parameter_is_in_a_recognised_box_and_counted_once(models: dict, arch: str) -> None:
    model, imported = models[arch]
    assert recognised_fraction(imported) >= 0.98
    assert imported.num_params() == sum(p.numel() for p in model.parameters())


def test_diagram_shape(models: dict) -> None:
    gpt2 = models["gpt2"][1]
    kinds = [box.kind for box in gpt2.diagram.boxes]
    assert kinds[:2] == ["Embed", "PosEmbed"] and kinds[-2:] == ["Norm", "Unembed"]
    assert kinds[2:16] == ["Copy", "Norm", "Attention", "Add", "Copy", "Norm", "Linear", "Elementwise", "Linear",
                           "Add"] + ["Copy", "Norm", "Attention", "Add"]
    assert gpt2.boxes["attn0"].data == {"heads": 4, "head_dim": 16, "causal": True, "bias": True}
    llama = models["llama"][1].boxes
    assert llama["attn1"].data == {"heads": 4, "head_dim": 16, "causal": True, "bias": False, "kv_heads": 2,
                                   "rotary_dim": 16, "rotary_base": 10000.0}
    assert llama["mlp0"].kind == "Gated" and llama["ln_attn0"].data["norm"] == "rms"
    qwen2 = models["qwen2"][1].boxes
    assert qwen2["attn0"].data["bias"] == "qkv" and "window" not in qwen2["attn0"].data
    assert qwen2["attn1"].data["window"] == 5
    assert models["qwen3"][1].boxes["attn0"].data["qk_norm"] == 1e-6
    assert models["qwen3"][1].boxes["attn0"].param_shapes()["q_norm"] == (16,)
    gemma = models["gemma"][1].boxes
    assert gemma["embed"].data == {"scale": 8.0} and gemma["ln_attn0"].data["offset"] == 1.0
    neox = models["gpt_neox"][1]
    assert neox.boxes["attn0"].data["rotary_dim"] == 8 and neox.boxes["attn0"].data["rotary_base"] == 500.0
    assert [box.kind for box in neox.diagram.boxes][1:9] == ["Copy", "Norm", "Attention", "Norm", "Linear",
                                                             "Elementwise", "Linear", "Add"]
    phi = models["phi"][1]
    assert [box.kind for box in phi.diagram.boxes][1:9] == ["Copy", "Norm", "Copy", "Attention", "Linear",
                                                            "Elementwise", "Linear", "Add"]
    assert "ln_mlp0" not in phi.boxes and phi.boxes["attn0"].data["rotary_dim"] == 8
    assert models["opt"][1].boxes["pos"].data == {"positions": 82, "offset": 2}
    assert models["gptj"][1].boxes["attn1"].data == {"heads": 4, "head_dim": 16, "causal": True, "bias": False,
                                                     "rotary_dim": 8, "rotary_base": 10000.0,
                                                     "rotary_interleaved": True}
    bert = models["bert"][1]
    assert str(bert.dom) == "tokens:100 @ token_types:2 @ keep:1" and str(bert.cod) == "logits:100"
    assert bert.boxes["attn0"].data == {"heads": 4, "head_dim": 16, "causal": False, "bias": True, "padded": True}
    assert [box.kind for box in bert.diagram.boxes][-5:] == ["Copy", "Linear", "Elementwise", "Norm", "Unembed"]


@pytest.mark.parametrize("arch", ["gpt2", "llama_tied", "bert"])
def test_tied_weights_stay_tied(models: dict, arch: str) -> None:
    model, imported = models[arch]
    assert imported.ties == {"unembed.W": "embed.W"}
    assert imported.box_params("unembed")["W"] is imported.box_params("embed")["W"]
    trained = ci.from_hf(model)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.1)
    trained(*hf_inputs(trained, ids(7))).square().mean().backward()
    optimizer.step()
    W = trained.box_params("embed")["W"]
    assert trained.box_params("unembed")["W"] is W and not torch.equal(W, imported.box_params("embed")["W"])
    bits = {part.name: part.parameters for part in ci.description_length(imported).parts}
    assert bits["unembed"] < 32 * 100 + 64 < bits["embed"]     # the tied W is sent once, then referred to


def test_untied_readout_is_its_own_parameter(models: dict) -> None:
    imported = models["llama"][1]
    assert imported.ties == {} and imported.box_params("unembed")["W"] is not imported.box_params("embed")["W"]


LOADER = """
import sys
sys.modules["transformers"] = None
import torch
import compinterp
from safetensors.torch import load_file
for folder in sys.argv[1:]:
    model = compinterp.load(folder + "/model")
    data = load_file(folder + "/io.safetensors")
    inputs = [data[f"in{i}"] for i in range(len(data) - 1)]
    with torch.no_grad():
        assert torch.equal(model(*inputs), data["logits"]), folder
    assert model.box_params("unembed")["W"] is model.box_params("embed")["W"] or not model.ties, folder
print("loaded", len(sys.argv) - 1)
"""


def test_saved_models_load_without_transformers(models: dict, tmp_path: Path) -> None:
    folders = []
    for arch in ARCHS:
        imported = models[arch][1]
        folder = tmp_path / arch
        imported.save(folder / "model")
        inputs = hf_inputs(imported, ids(7), **encoder_inputs(arch, 7))
        with torch.no_grad():
            save_file({"logits": imported(*inputs)} | {f"in{i}": x for i, x in enumerate(inputs)},
                      str(folder / "io.safetensors"))
        assert sorted(p.name for p in (folder / "model").iterdir()) == ["diagram.json", "meta.json",
                                                                         "weights.safetensors"]
        weights = load_file(str(folder / "model" / "weights.safetensors"))
        meta = json.loads((folder / "model" / "meta.json").read_text())
        assert meta["num_params"] == imported.num_params()
        if imported.ties:
            assert meta["ties"] == {"unembed.W": "embed.W"} and "unembed.W" not in weights
        folders.append(str(folder))
    done = subprocess.run([sys.executable, "-c", LOADER, *folders], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"loaded {len(ARCHS)}"


def test_compinterp_never_imports_transformers_itself() -> None:
    code = ("import sys, compinterp; from compinterp.frontend import from_hf, from_torch; compinterp.from_hf; "
            "print('transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_from_torch_dispatches_and_checks(models: dict) -> None:
    model, _ = models["mistral"]
    tokens = ids(7)
    imported = ci.from_torch(model, tokens)
    assert "Attention" in {box.kind for box in imported.diagram.boxes}
    with torch.no_grad():
        assert float((imported(tokens) - hf_logits(model, tokens)).abs().max()) < 1e-4


def test_from_a_save_pretrained_directory(models: dict, tmp_path: Path) -> None:
    model, imported = models["gpt2"]
    model.save_pretrained(tmp_path / "hf")
    again = ci.from_hf(tmp_path / "hf", ids(7))
    assert torch.equal(again(ids(7)), imported(ids(7)))
    assert again.ties == {"unembed.W": "embed.W"}


def test_errors_name_the_culprit(models: dict, tmp_path: Path) -> None:
    assert_error(ImportTraceError, lambda: ci.from_hf(torch.nn.Linear(2, 2)), "from_hf", "Linear")
    bloom = transformers.AutoModelForCausalLM.from_config(transformers.BloomConfig(n_layer=1, hidden_size=32, n_head=2,
                                                                                   vocab_size=50))
    assert_error(ImportTraceError, lambda: ci.from_hf(bloom), "BloomForCausalLM", "'bloom'", "no table row", "gpt2")
    assert_error(ImportTraceError, lambda: ci.from_hf(tmp_path), str(tmp_path), "config.json")
    assert_error(InputError, lambda: models["gpt2"][1](ids(81)), "'pos'", "81", "80 positions")
    scaled = transformers.LlamaConfig(**SMALL, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                                "rope_theta": 10000.0})
    llama = transformers.AutoModelForCausalLM.from_config(scaled)
    assert_error(ImportTraceError, lambda: ci.from_hf(llama), "LlamaForCausalLM", "'linear'")
    post_norm = transformers.AutoModelForCausalLM.from_config(transformers.OPTConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, ffn_dim=64, vocab_size=50, word_embed_proj_dim=32,
        do_layer_norm_before=False))
    assert_error(ImportTraceError, lambda: ci.from_hf(post_norm), "OPTForCausalLM", "do_layer_norm_before", "True")
    projected = transformers.AutoModelForCausalLM.from_config(transformers.OPTConfig(
        num_hidden_layers=1, hidden_size=32, num_attention_heads=2, ffn_dim=64, vocab_size=50, word_embed_proj_dim=16))
    assert_error(ImportTraceError, lambda: ci.from_hf(projected), "'decoder.project_in'", "no box")
    training = build("gpt2").train()
    assert_error(ImportTraceError, lambda: ci.from_hf(training, ids(7)), "GPT2LMHeadModel", "differs", "eval mode")


def test_cli_import_gives_the_same_logits(models: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from compinterp.cli import main
    model, _ = models["qwen2"]
    model.save_pretrained(tmp_path / "hf")
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "ours"), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["model_type"] == "qwen2" and done["recognised"] == 1.0 and done["boxes"]["Attention"] == 2
    tokens = ids(64)
    with torch.no_grad():
        assert float((ci.load(tmp_path / "ours")(tokens) - hf_logits(model, tokens)).abs().max()) < 1e-4
    assert main(["import", str(tmp_path / "ours"), "--out", str(tmp_path / "again")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("compinterp: error: from_hf:") and error.count("\n") == 1
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "padded"), "--padding"]) == 0
    assert "on tokens:100 @ keep:1," in capsys.readouterr().out
    assert main(["info", str(tmp_path / "ours")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  attn1: 4 heads x 16, 2 key/value heads, rotary on 16 of 16 (base 10000), causal, window 5" in lines
    assert "recognised: 100.0% of the parameters are in boxes that are not Opaque" in lines


def test_info_counts_tied_parameters_once(models: dict, tmp_path: Path) -> None:
    imported = models["gpt2"][1]
    imported.save(tmp_path / "gpt2")
    summary = ci.files.info(tmp_path / "gpt2")
    assert summary["ties"] == {"unembed.W": "embed.W"} and summary["recognised"] == 1.0
    assert summary["num_params"] == imported.num_params()


def test_bert_from_a_directory_and_through_from_torch(models: dict, tmp_path: Path) -> None:
    model, imported = models["bert"]
    model.save_pretrained(tmp_path / "bert")
    again = ci.from_hf(tmp_path / "bert", ids(7))
    inputs = hf_inputs(again, ids(7), **encoder_inputs("bert", 7))
    with torch.no_grad():
        assert torch.equal(again(*inputs), imported(*inputs))
        assert ci.from_torch(model, ids(7)).diagram == imported.diagram


def test_a_base_model_ends_on_the_residual_stream() -> None:
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(CONFIGS["llama"]()).eval()
    imported = ci.from_hf(model, ids(9))
    assert str(imported.cod) == "resid:64" and imported.diagram.boxes[-1].name == "ln_final"
    with torch.no_grad():
        torch.testing.assert_close(imported(ids(9)), model(input_ids=ids(9)).last_hidden_state)


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in ENCODERS])
def test_decoders_read_a_padding_mask_on_request(models: dict, arch: str) -> None:
    model, _ = models[arch]
    imported = ci.from_hf(model, padding=True)
    assert str(imported.dom) == "tokens:100 @ keep:1" and imported.boxes["attn0"].data["padded"]
    tokens = ids(64)
    right = torch.ones(3, 64, dtype=torch.long)
    right[1, 40:], right[2, 3:] = 0, 0
    left = torch.ones(3, 64, dtype=torch.long)
    left[1, :20], left[2, :61] = 0, 0
    for mask in (right, left) if arch != "opt" else (right,):      # OPT counts positions from the first token
        with torch.no_grad():
            got = imported(*hf_inputs(imported, tokens, attention_mask=mask))
        assert torch.isfinite(got).all()
        tokens_only = mask.bool()
        assert float((got - hf_logits(model, tokens, attention_mask=mask))[tokens_only].abs().max()) < 1e-4
