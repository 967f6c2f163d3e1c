"""Dictionary passes recover known sparse ground truths: directions, width, a sparse map."""

from __future__ import annotations

import math

import pytest
import torch
from test_dictionary import best_cosines, identity_model, sparse_data
from torch import nn
from torch.nn import functional as F

from compinterp.faithfulness import check
from compinterp.model import Model
from compinterp.refinement.dictionary import SAE, Transcoder, best, sweep
from compinterp.syntax import Linear, Opaque, Space

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sae_recovers_true_directions() -> None:
    x, true = sparse_data(32, 48, 3, 4096)
    model = identity_model(32)
    p = SAE(x, ["f"], widths=[48], ks=[3], steps=500, lr=1e-2, progress=False)
    dictionary = p.fit(model, p.candidates(model)[0])
    assert best_cosines(dictionary.decoder.detach(), true).mean() >= 0.9
    assert torch.allclose(dictionary.decoder.norm(dim=0), torch.ones(48), atol=1e-5)


def test_sweep_chooses_width_near_true_size() -> None:
    x, _ = sparse_data(32, 48, 3, 4096)
    model = identity_model(32)
    p = SAE(x, ["f"], widths=[24, 36, 48, 60, 72], ks=[3], steps=500, lr=1e-2, restarts=2, progress=False)
    points = sweep(model, p, x[:2048])
    chosen = best(points, 0.9)
    assert chosen is not None
    assert abs(chosen.rewrite.settings["width"] - 48) <= 0.25 * 48
    narrowest = min(points, key=lambda q: q.rewrite.settings["width"])
    assert narrowest.local < 0.9
    for q in points:
        assert q.l0 == pytest.approx(3.0)
        assert q.bits.code == pytest.approx(2048 * 3 * (8 + math.log2(q.rewrite.settings["width"])))


class SparseMap(nn.Module):
    """A known sparse map ``y = V TopK_k(relu(W x))``."""

    def __init__(self, w: torch.Tensor, v: torch.Tensor, k: int) -> None:
        super().__init__()
        self.w, self.v, self.k = nn.Parameter(w), nn.Parameter(v), k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.linear(x, self.w).relu()
        index = pre.topk(self.k, dim=-1).indices
        return F.linear(torch.zeros_like(pre).scatter(-1, index, pre.gather(-1, index)), self.v)


def test_transcoder_recovers_a_known_sparse_map() -> None:
    x, d_in = sparse_data(24, 32, 2, 4096)
    v = F.normalize(torch.randn(16, 32, generator=torch.Generator().manual_seed(5)), dim=0)
    a, b = Space("a", 24), Space("b", 16)
    model = Model(Opaque("mlp", a, b, module=SparseMap(d_in.T.clone(), v, 2)) >> Linear("out", b, Space("y", 3)))
    p = Transcoder(x, ["mlp"], widths=[32], ks=[2], steps=600, lr=1e-2, progress=False)
    rewrite = p.candidates(model)[0]
    dictionary = p.fit(model, rewrite)
    assert best_cosines(dictionary.decoder.detach(), v).mean() >= 0.9
    report = check(model, p.interpret(model, rewrite, dictionary), x[:1024], progress=False, logits=False)
    assert report.end_to_end.faithfulness >= 0.9
    assert [b.name for b in p.apply(model, rewrite).diagram.boxes] == ["mlp_enc", "mlp_relu", "mlp_topk", "mlp_dec",
                                                                         "out"]
