"""Shared test settings: hypothesis profiles (``fast`` keeps the suite fast, ``thorough``, chosen by
``HYPOTHESIS_PROFILE=thorough``, digs), the ``one_thread`` fixture and a small imported GPT-2 (:func:`imported_gpt2`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings

import compinterp as ci

settings.register_profile("fast", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module (restored afterwards): small kernels run fastest so on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def imported_gpt2(layers: int = 2, width: int = 64, vocab: int = 100, batch: int = 64, length: int = 16,
                  ) -> tuple[ci.Model, tuple[torch.Tensor, torch.Tensor]]:
    """A HuggingFace GPT-2 from a small config (random weights, seed 0), imported with ``compinterp.from_hf``, and
    ``batch`` random token sequences with their next tokens as labels; skips without ``transformers``."""
    transformers = pytest.importorskip("transformers", reason="needs transformers (the [hf] extra)")
    config = transformers.GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=vocab, n_positions=2 * length,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = ci.from_hf(transformers.GPT2LMHeadModel(config).eval())
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))
    return model, (ids, ids.roll(-1, 1))
