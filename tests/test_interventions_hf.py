"""Interventions on a HuggingFace GPT-2 brought in with from_hf, against the HF model itself: its
hidden states, and patches written with plain torch forward hooks on its blocks."""

from __future__ import annotations

import pytest
import torch

import compinterp as ci

transformers = pytest.importorskip("transformers", reason="the HF tests need transformers (the [hf] extra)")

LAYERS, T, B = 2, 7, 3


@pytest.fixture(scope="module")
def pair() -> tuple[torch.nn.Module, ci.Model]:
    config = transformers.GPT2Config(n_layer=LAYERS, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    return hf, ci.from_hf(hf)


def ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 100, (B, T), generator=torch.Generator().manual_seed(seed))


def test_cache_equals_hf_hidden_states(pair: tuple[torch.nn.Module, ci.Model]) -> None:
    hf, model = pair
    x = ids(0)
    with torch.no_grad():
        hidden = hf(x, output_hidden_states=True).hidden_states
    cache = model.run_with_cache(x)
    assert torch.allclose(cache["pos"], hidden[0], atol=1e-5)
    assert torch.allclose(cache["resid_post0"], hidden[1], atol=1e-5)
    assert torch.allclose(cache["ln_final"], hidden[2], atol=1e-5)
    assert cache["attn1.heads"].shape == (B, T, 4, 16)


def metric(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 3] - logits[:, -1, 4]).mean()


def test_patching_sweep_equals_plain_torch_hooks_on_the_hf_model(pair: tuple[torch.nn.Module, ci.Model]) -> None:
    hf, model = pair
    clean, corrupted = ids(1), ids(2)
    sweep = ci.patching(model, clean, corrupted, ci.grid(model, ["resid_post0", "resid_post1"], T), metric)
    stored: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            stored[layer] = (output[0] if isinstance(output, tuple) else output).detach()
        return hook

    handles = [hf.transformer.h[layer].register_forward_hook(keep(layer)) for layer in range(LAYERS)]
    try:
        with torch.no_grad():
            hf(clean)
    finally:
        for handle in handles:
            handle.remove()
    for layer in range(LAYERS):
        for p in range(T):
            def patch(module: torch.nn.Module, args: tuple, output: torch.Tensor, p: int = p,
                      layer: int = layer) -> torch.Tensor:
                hidden = (output[0] if isinstance(output, tuple) else output).clone()
                hidden[:, p] = stored[layer][:, p]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            handle = hf.transformer.h[layer].register_forward_hook(patch)
            try:
                with torch.no_grad():
                    want = metric(hf(corrupted).logits)
            finally:
                handle.remove()
            assert abs(float(sweep.values[layer, p]) - float(want)) < 1e-4, (layer, p)


def test_head_zero_ablation_equals_a_hand_edit_of_hf_attention(pair: tuple[torch.nn.Module, ci.Model]) -> None:
    hf, model = pair
    x = ids(3)
    got = ci.intervene(model, x, [ci.zero(ci.Site("attn1", heads=[2]))])

    def zero_head(module: torch.nn.Module, args: tuple) -> tuple:
        z = args[0].clone()
        z[..., 2 * 16:3 * 16] = 0
        return (z, *args[1:])

    handle = hf.transformer.h[1].attn.c_proj.register_forward_pre_hook(zero_head)
    try:
        with torch.no_grad():
            want = hf(x).logits
    finally:
        handle.remove()
    assert torch.allclose(got, want, atol=1e-4)


def test_neuron_interchange_equals_a_hook_on_the_hf_mlp_activation(pair: tuple[torch.nn.Module, ci.Model]) -> None:
    """A neuron of layer 0's MLP activation taken from a source run (compinterp writes it into its own fresh
    value) equals the same patch made with plain torch hooks on the HF model; the inputs are left untouched."""
    hf, model = pair
    base, source = ids(4), ids(5)
    kept = base.clone(), source.clone()
    neuron = torch.eye(4 * 64)[[7, 100]]
    got = ci.intervene(model, base, [ci.patch(ci.Site("act0", subspace=neuron), source)], batch_size=2)
    act = hf.transformer.h[0].mlp.act
    seen: list[torch.Tensor] = []
    handle = act.register_forward_hook(lambda module, args, output: seen.append(output.detach()))
    try:
        with torch.no_grad():
            hf(source)
    finally:
        handle.remove()

    def patch(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., [7, 100]] = seen[0][..., [7, 100]]
        return output

    handle = act.register_forward_hook(patch)
    try:
        with torch.no_grad():
            want = hf(base).logits
    finally:
        handle.remove()
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(base, kept[0]) and torch.equal(source, kept[1])
