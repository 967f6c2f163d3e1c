"""Dictionary training options, each against a hand computation: the aux-k dead-feature loss, activation
normalisation (and its scales folded into the diagram), the warm-up/decay schedule, BatchTopK, and the
dead-feature count."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from compinterp.errors import InputError
from compinterp.model import Model
from compinterp.refinement.dictionary import SAE, Dictionary, train
from compinterp.refinement.dictionary.core import schedule
from compinterp.syntax import Linear, Space

pytestmark = pytest.mark.usefixtures("one_thread")


def batches(n: int = 4, rows: int = 64, d: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, d, generator=g) * 3 + 1 for _ in range(n)]


def test_aux_k_loss_is_the_dead_features_reconstruction_of_the_residual() -> None:
    d = Dictionary("topk", 6, 6, width=10, k=2, seed=0, aux_k=3, aux_coeff=0.5, dead_window=5)
    with torch.no_grad():
        d.b_enc.copy_(torch.linspace(-0.2, 0.3, 10))
    d.idle.copy_(torch.tensor([9, 0, 7, 0, 5, 0, 0, 6, 0, 0]))         # features 0, 2, 4, 7 are dead
    x = batches(1)[0]
    loss, _ = d.loss(x, x)
    pre = F.linear(x - d.b_dec, d.encoder, d.b_enc).relu()             # by hand
    top = pre.topk(2, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    x_hat = F.linear(z, d.decoder, d.b_dec)
    main = (x_hat - x).pow(2).sum(-1).mean()
    dead = torch.tensor([0, 2, 4, 7])
    aux_top = pre[:, dead].topk(3, dim=-1)
    z_aux = torch.zeros_like(pre)
    z_aux[:, dead] = torch.zeros(len(x), 4).scatter(-1, aux_top.indices, aux_top.values)
    aux = (z_aux @ d.decoder.T - (x - x_hat)).pow(2).sum(-1).mean()
    assert loss.item() == pytest.approx((main + 0.5 * min(1.0, 4 / 3) * aux).item(), rel=1e-6)
    d.idle.zero_()                                                      # no dead feature: no aux term
    assert d.loss(x, x)[0].item() == pytest.approx(main.item(), rel=1e-6)


def test_normalisation_scales_the_loss_and_folds_into_the_diagram() -> None:
    data = batches()
    d = Dictionary("topk", 6, 6, width=8, k=3, seed=0, normalise=True)
    train(d, lambda: ((x, x) for x in data), steps=3, lr=1e-3, progress=False)
    scale = math.sqrt(6) / data[0].norm(dim=-1).mean().item()          # from the first batch
    assert d.in_scale.item() == pytest.approx(scale, rel=1e-6) and d.out_scale.item() == pytest.approx(scale, rel=1e-6)
    x = data[1]
    pre = F.linear(x * scale - d.b_dec, d.encoder, d.b_enc).relu()
    top = pre.topk(3, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    hand = (F.linear(z, d.decoder, d.b_dec) - x * scale).pow(2).sum(-1).mean()
    assert d.loss(x, x)[0].item() == pytest.approx(hand.item(), rel=1e-5)
    a = Space("a", 6)
    model = Model(d.diagram("f", a, a), d.params("f"))                  # the wire's own units
    assert torch.allclose(model(x), d(x)[0], atol=1e-5)
    assert torch.allclose(d(x)[0], F.linear(z, d.decoder, d.b_dec) / scale, atol=1e-5)


def test_schedule_warms_up_and_decays_linearly() -> None:
    steps, warmup, decay = 20, 4, 0.25
    for t in range(steps):
        hand = min(1.0, (t + 1) / warmup) * (min(1.0, (steps - t) / 5) if t >= 15 else 1.0)
        assert schedule(t, steps, warmup, decay) == pytest.approx(hand)
    assert schedule(0, 10) == 1.0


def test_schedule_drives_the_optimiser() -> None:
    data = batches(n=1)
    seen: list[float] = []
    original = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        train(Dictionary("topk", 6, 6, width=8, k=2), lambda: ((x, x) for x in data), steps=6, lr=0.1, warmup=2,
              decay=0.5, progress=False)
    finally:
        torch.optim.Adam.step = original
    assert seen == pytest.approx([0.1 * schedule(t, 6, 2, 0.5) for t in range(6)])


def test_batch_topk_keeps_k_per_example_on_average_in_training_and_k_each_after() -> None:
    d = Dictionary("batchtopk", 6, 6, width=10, k=2, seed=0)
    x = batches(1, rows=16)[0]
    pre = F.linear(x - d.b_dec, d.encoder, d.b_enc).relu()
    d.train()
    z = d.encode(x)
    keep = pre.flatten().topk(2 * 16).indices                          # by hand: the 32 largest of the batch
    hand = torch.zeros(16 * 10).scatter(0, keep, pre.flatten()[keep]).reshape(16, 10)
    assert torch.equal(z, hand) and int((z != 0).sum()) == 32
    d.eval()
    assert int((d.encode(x) != 0).sum(-1).max()) <= 2


def test_dead_features_are_counted_and_aux_k_trains_them() -> None:
    g = torch.Generator().manual_seed(1)
    basis = F.normalize(torch.randn(8, 4, generator=g), dim=0)
    data = [(torch.randn(128, 4, generator=g) @ basis.T) for _ in range(60)]   # activity in 4 of 8 dimensions
    plain = Dictionary("topk", 8, 8, width=32, k=2, seed=0, dead_window=20)
    fired: list[torch.Tensor] = []
    loss = plain.loss

    def spy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = loss(x, y)
        fired.append((out[1] != 0).any(0))
        return out

    plain.loss = spy                                                     # type: ignore[method-assign]
    train(plain, lambda: ((x, x) for x in data), steps=60, lr=1e-2, resample_every=1000, progress=False)
    recent = torch.stack(fired[-20:]).any(0)                            # by hand: fired in the last 20 steps
    assert plain.dead == int((~recent).sum()) > 0
    x = data[0]                                                          # the aux term reaches dead features
    grads = []
    for aux_k in (None, 4):
        d = Dictionary("topk", 8, 8, width=32, k=1, seed=0, dead_window=1, aux_k=aux_k)
        d.idle.fill_(1)
        d.loss(x, x)[0].backward()
        unused = (d.encode(x) == 0).all(0)
        grads.append(d.encoder.grad[unused].abs().sum().item())
    assert grads[0] == 0 < grads[1]


def test_the_pass_takes_the_options_and_bad_ones_name_themselves() -> None:
    a = Space("a", 6)
    model = Model(Linear("f", a, a), seed=0)
    x = torch.cat(batches())
    p = SAE(x, ["f"], widths=[8], ks=[2], steps=20, kind="batchtopk", aux_k=4, normalise=True, warmup=5, decay=0.2,
            progress=False)
    d = p.fit(model, p.candidates(model)[0])
    assert d.kind == "batchtopk" and d.aux_k == 4 and d.normalised and d.in_scale.item() != 1.0
    refined = p.apply(model, p.candidates(model)[0])
    assert [b.name for b in refined.diagram.boxes] == ["f", "f_enc", "f_relu", "f_topk", "f_dec"]
    with pytest.raises(InputError, match="aux_k must be an integer from 1 to the width 8, got 9"):
        Dictionary("topk", 6, 6, width=8, k=2, aux_k=9)
    with pytest.raises(InputError, match="decay must be a fraction of the steps from 0 to 1, got 2"):
        train(Dictionary("topk", 6, 6, width=8, k=2), lambda: iter(()), steps=3, decay=2)


def test_saelens_format_both_ways(tmp_path) -> None:
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed beside compinterp")
    from compinterp.refinement.dictionary import from_saelens, load_saelens, save_saelens
    torch.manual_seed(0)
    theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=6, d_sae=16, k=3))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))                          # biases too
    theirs.save_model(tmp_path / "theirs")
    x = torch.cat(batches())
    a = Space("a", 6)
    model = Model(Linear("f", a, a), seed=0)
    refined = from_saelens(model, "f", tmp_path / "theirs").explanation
    ours = Dictionary("topk", 6, 6, width=16, k=3, seed=1, normalise=True)
    train(ours, lambda: ((b, b) for b in batches()), steps=5, lr=1e-2, progress=False)
    with torch.no_grad():
        assert torch.allclose(refined(x), theirs(model(x)), atol=1e-5)
        save_saelens(ours, tmp_path / "ours", hook_name="f")
        back = sae_lens.SAE.load_from_disk(tmp_path / "ours")
        assert type(back).__name__ == "TopKSAE" and back.cfg.k == 3
        assert torch.allclose(back(x), ours(x)[0], atol=1e-4)
        relu = Dictionary("relu", 6, 6, width=16, seed=2)
        save_saelens(relu, tmp_path / "relu")
        assert torch.allclose(sae_lens.SAE.load_from_disk(tmp_path / "relu")(x), relu(x)[0], atol=1e-5)
        assert torch.allclose(load_saelens(tmp_path / "relu")(x)[0], relu(x)[0], atol=1e-6)


def test_saelens_files_that_do_not_cross_say_why(tmp_path) -> None:
    from compinterp.errors import FormatError
    from compinterp.refinement.dictionary import load_saelens, save_saelens
    with pytest.raises(FormatError, match="is not a SAELens SAE directory: it has no cfg.json"):
        load_saelens(tmp_path)
    save_saelens(Dictionary("topk", 6, 6, width=8, k=2), tmp_path / "d")
    config = tmp_path / "d" / "cfg.json"
    config.write_text(config.read_text().replace('"topk"', '"jumprelu"'))
    with pytest.raises(FormatError, match="architecture 'jumprelu' does not load as a dictionary"):
        load_saelens(tmp_path / "d")
    with pytest.raises(InputError, match="a bilinear dictionary has no SAELens architecture"):
        save_saelens(Dictionary("bilinear", 6, 6, width=8, k=2), tmp_path / "b")


def test_clipping_caps_the_gradient_norm_and_b_dec_can_start_at_zero() -> None:
    data = batches(n=1)
    a, b = (Dictionary("topk", 6, 6, width=8, k=2, seed=0) for _ in range(2))
    train(a, lambda: ((x, x) for x in data), steps=1, lr=0.1, clip=1e-3, b_dec="zero", progress=False)
    x = data[0]                                                          # by hand: one Adam step on clipped grads
    loss, _ = b.loss(x, x)                                              # (b_dec starts at zero, as b's does)
    loss.backward()
    grads = [p.grad for p in b.parameters()]
    total = torch.sqrt(sum(g.square().sum() for g in grads))
    assert total > 1e-3
    opt = torch.optim.Adam(b.parameters(), lr=0.1)
    for p in b.parameters():
        p.grad = p.grad * (1e-3 / (total + 1e-6))
    opt.step()
    b.normalise()
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(InputError, match="clip must be a positive gradient norm, got 0"):
        train(Dictionary("topk", 6, 6, width=8, k=2), lambda: iter(()), steps=3, clip=0)
