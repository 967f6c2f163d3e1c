"""Interventions on a HuggingFace GPT-2 brought in with from_hf, against the HF model itself: its
hidden states, and patches written with plain torch forward hooks on its blocks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def run_hooked(hf: torch.nn.Module, x: torch.Tensor, hooks: list[tuple[torch.nn.Module, Callable[..., Any]]],
               pre: bool = False) -> torch.Tensor:
    """``hf(x).logits`` without gradients, with forward (``pre``: forward-pre) hooks registered for the run only."""
    handles = [m.register_forward_pre_hook(h) if pre else m.register_forward_hook(h) for m, h in hooks]
    try:
        with torch.no_grad():
            return hf(x).logits
    finally:
        for handle in handles:
            handle.remove()


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

    run_hooked(hf, clean, [(hf.transformer.h[layer], keep(layer)) for layer in range(LAYERS)])
    for layer in range(LAYERS):
        for p in range(T):
            def patch(module: torch.nn.Module, args: tuple, output: torch.Tensor, p: int = p,
                      layer: int = layer) -> torch.Tensor:
                hidden = (output[0] if isinstance(output, tuple) else output).clone()
                hidden[:, p] = stored[layer][:, p]
                return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
            want = metric(run_hooked(hf, corrupted, [(hf.transformer.h[layer], patch)]))
            assert abs(float(sweep.values[layer, p]) - float(want)) < 1e-4, (layer, p)


def test_head_zero_ablation_equals_a_hand_edit_of_hf_attention(pair: tuple[torch.nn.Module, ci.Model]) -> None:
    hf, model = pair
    x = ids(3)
    got = ci.intervene(model, x, [ci.zero(ci.Site("attn1", heads=[2]))])

    def zero_head(module: torch.nn.Module, args: tuple) -> tuple:
        z = args[0].clone()
        z[..., 2 * 16:3 * 16] = 0
        return (z, *args[1:])

    want = run_hooked(hf, x, [(hf.transformer.h[1].attn.c_proj, zero_head)], pre=True)
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
    run_hooked(hf, source, [(act, lambda module, args, output: seen.append(output.detach()))])

    def patch(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., [7, 100]] = seen[0][..., [7, 100]]
        return output

    want = run_hooked(hf, base, [(act, patch)])
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.equal(base, kept[0]) and torch.equal(source, kept[1])
