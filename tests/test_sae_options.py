"""Dictionary training options, each against a hand computation: the aux-k dead-feature loss, the free decoder
norms (plain and rescaled pre-activations, the switch between them, the fold), the L1 weighed by the decoder's
norms, the JumpReLU (its loss, the straight-through gradients of its thresholds, the projection), activation
normalisation (and its scales folded into the diagram), the warm-up/decay schedule, gradient clipping,
BatchTopK, and the dead-feature count; and the SAELens files both ways (TopK, ReLU, JumpReLU), loaded by
SAELens itself when it is installed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from compinterp.errors import InputError
from compinterp.model import Model
from compinterp.refinement.dictionary import SAE, Dictionary, load_saelens, save_saelens, train
from compinterp.refinement.dictionary.core import schedule
from compinterp.syntax import Linear, Space

pytestmark = pytest.mark.usefixtures("one_thread")


def batches(n: int = 4, rows: int = 64, d: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, d, generator=g) * 3 + 1 for _ in range(n)]


def scramble(d: Dictionary, seed: int = 3) -> None:
    """Give every parameter of ``d`` random values (decoder columns of unequal norms, biases nonzero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (0.2 if p.dim() == 1 else 0.0))


def test_aux_k_loss_is_the_dead_features_reconstruction_of_the_residual() -> None:
    d = Dictionary("topk", 6, 6, width=10, k=2, seed=0, aux_k=3, aux_coeff=0.5, dead_window=5)
    with torch.no_grad():
        d.b_enc.copy_(torch.linspace(-0.2, 0.3, 10))
    d.idle.copy_(torch.tensor([9, 0, 7, 0, 5, 0, 0, 6, 0, 0]))         # features 0, 2, 4, 7 are dead
    x = batches(1)[0]
    loss, _ = d.loss(x, x)
    pre = F.linear(x - d.b_dec, d.encoder, d.b_enc).relu()             # by hand (plain p: the decoder as it is)
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


def test_aux_k_defaults_to_half_the_wire_with_coefficient_one() -> None:
    assert Dictionary("topk", 6, 6, width=10, k=2).aux_k == 3
    assert Dictionary("topk", 64, 64, width=16, k=2).aux_k == 16        # at most the width
    d = Dictionary("topk", 6, 6, width=10, k=2, aux_k=None)
    assert d.aux_k is None and Dictionary("topk", 6, 6, width=10, k=2).aux_coeff == 1.0


def test_rescaled_preactivations_choose_by_the_decoder_norms_and_decode_through_unit_columns() -> None:
    d = Dictionary("topk", 6, 6, width=10, k=3, seed=0, aux_k=4, dead_window=1)
    scramble(d)
    d.idle.copy_(torch.tensor([2, 0, 0, 3, 0, 0, 0, 0, 1, 0]))          # features 0, 3, 8 dead
    d.rescale = True
    x = batches(1)[0]
    norms = d.decoder.detach().norm(dim=0)                              # by hand, SAELens's rescaling
    pre = (F.linear(x - d.b_dec, d.encoder, d.b_enc) * norms).relu()
    top = pre.topk(3, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    unit = d.decoder / norms
    x_hat = z @ unit.T + d.b_dec
    main = (x_hat - x).pow(2).sum(-1).mean()
    dead = torch.tensor([0, 3, 8])
    aux_top = pre[:, dead].topk(3, dim=-1)
    z_aux = torch.zeros_like(pre)
    z_aux[:, dead] = torch.zeros(len(x), 3).scatter(-1, aux_top.indices, aux_top.values)
    aux = (z_aux @ unit.T - (x - x_hat)).pow(2).sum(-1).mean()
    loss, features = d.loss(x, x)
    assert torch.allclose(features, z, atol=1e-6)
    assert loss.item() == pytest.approx((main + 1.0 * min(1.0, 3 / 4) * aux).item(), rel=1e-5)
    before = d(x)[0]
    d.fold()                                                            # same function, unit columns
    assert not d.rescale and torch.allclose(d.decoder.norm(dim=0), torch.ones(10), atol=1e-6)
    assert torch.allclose(d(x)[0], before, atol=1e-5)


def test_a_plain_topk_keeps_its_norms_and_runs_in_the_diagram_as_it_trains() -> None:
    d = Dictionary("topk", 6, 6, width=10, k=3, seed=0)
    scramble(d)
    x = batches(1)[0]
    d.fold()                                                            # plain p: folding would change the choice
    assert not torch.allclose(d.decoder.norm(dim=0), torch.ones(10))
    a = Space("a", 6)
    assert torch.allclose(Model(d.diagram("f", a, a), d.params("f"))(x), d(x)[0], atol=1e-5)
    d.rescale = True
    assert torch.allclose(Model(d.diagram("f", a, a), d.params("f"))(x), d(x)[0], atol=1e-5)


@pytest.mark.parametrize(("kind", "rescale_from", "expected"), [
    ("topk", 0.25, [False, False, True, True, True, True, True, True]),   # round(0.25 * 8) = 2
    ("batchtopk", 0.0, [True] * 8),
    ("topk", None, [False, False, True, True, True, True, True, True]),   # the defaults: a quarter for topk,
    ("batchtopk", None, [True] * 8),                                      # from the start for batchtopk
    ("topk", 1.0, [False] * 8),
    ("relu", 0.25, [False] * 8),                                          # relu and jumprelu: always plain
    ("jumprelu", 0.25, [False] * 8),
])
def test_topk_switches_to_rescaled_preactivations_after_rescale_from(kind: str, rescale_from: float | None,
                                                                      expected: list[bool]) -> None:
    d = Dictionary(kind, 6, 6, width=8, k=None if kind in ("relu", "jumprelu") else 2, seed=0)
    seen: list[bool] = []
    loss = d.loss

    def spy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(d.rescale)
        return loss(x, y)

    d.loss = spy                                                        # type: ignore[method-assign]
    train(d, lambda: ((x, x) for x in batches(n=8)), steps=8, lr=1e-2, rescale_from=rescale_from, progress=False)
    assert seen == expected
    folded = kind != "topk" or (rescale_from or 0) < 1        # the end: folded unless a plain topk
    assert torch.allclose(d.decoder.norm(dim=0), torch.ones(8), atol=1e-5) == folded


def test_free_norms_start_at_init_norm_with_the_encoder_the_decoder_transpose() -> None:
    for kind, start in (("topk", 0.3), ("batchtopk", 0.1), ("relu", 0.1), ("jumprelu", 0.1)):
        d = Dictionary(kind, 6, 6, width=8, k=2 if "topk" in kind else None, seed=0)
        assert torch.allclose(d.decoder.norm(dim=0), torch.full((8,), start))
        assert torch.equal(d.encoder, d.decoder.T)
    unit = Dictionary("topk", 6, 6, width=8, k=2, decoder_norm="unit")
    assert torch.allclose(unit.decoder.norm(dim=0), torch.ones(8))


def test_relu_l1_weighs_each_feature_by_its_decoder_norm() -> None:
    d = Dictionary("relu", 6, 6, width=10, l1=0.3, seed=0, aux_k=None)
    scramble(d)
    x = batches(1)[0]
    z = F.linear(x - d.b_dec, d.encoder, d.b_enc).relu()               # by hand (SAELens's standard SAE)
    mse = (z @ d.decoder.T + d.b_dec - x).pow(2).sum(-1).mean()
    l1 = (z.abs() * d.decoder.norm(dim=0)).sum(-1).mean()
    assert d.loss(x, x)[0].item() == pytest.approx((mse + 0.3 * l1).item(), rel=1e-6)
    unit = Dictionary("relu", 6, 6, width=10, l1=0.3, seed=0, aux_k=None, decoder_norm="unit")
    scramble(unit)                                                      # unit columns: the plain L1
    plain = F.linear(x - unit.b_dec, unit.encoder, unit.b_enc).relu()
    hand = (plain @ unit.decoder.T + unit.b_dec - x).pow(2).sum(-1).mean() + 0.3 * plain.abs().sum(-1).mean()
    assert unit.loss(x, x)[0].item() == pytest.approx(hand.item(), rel=1e-6)


def jumprelu_example() -> tuple[Dictionary, torch.Tensor]:
    """A 3-feature JumpReLU on 2 dimensions with pre-activations placed inside and outside the bandwidth."""
    d = Dictionary("jumprelu", 2, 2, width=3, seed=0, l0=0.7, bandwidth=0.5, aux_k=None)
    with torch.no_grad():
        d.encoder.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]))
        d.b_enc.copy_(torch.tensor([0.0, 0.1, 0.0]))
        d.decoder.copy_(torch.tensor([[1.0, 0.5, 0.0], [0.0, 2.0, 1.0]]))
        d.b_dec.copy_(torch.tensor([0.1, -0.1]))
        d.threshold.copy_(torch.tensor([0.5, 0.3, 0.2]))
    x = torch.tensor([[0.7, 0.2], [0.3, 0.9], [1.2, -0.4], [0.05, 0.5]])
    return d, x


def test_jumprelu_loss_and_its_straight_through_gradients_by_hand() -> None:
    d, x = jumprelu_example()
    d.train()
    loss, z = d.loss(x, x)
    loss.backward()
    n, eps, l0 = len(x), 0.5, 0.7                                        # by hand, element by element
    E, b, D, c, theta = (t.detach() for t in (d.encoder, d.b_enc, d.decoder, d.b_dec, d.threshold))
    p = [[sum(E[f, i] * (x[r, i] - c[i]) for i in range(2)) + b[f] for f in range(3)] for r in range(n)]
    on = [[float(p[r][f] > theta[f]) for f in range(3)] for r in range(n)]
    zz = [[p[r][f] * on[r][f] for f in range(3)] for r in range(n)]
    err = [[sum(D[i, f] * zz[r][f] for f in range(3)) + c[i] - x[r, i] for i in range(2)] for r in range(n)]
    mse = sum(e * e for row in err for e in row) / n
    active = sum(v for row in on for v in row) / n
    assert torch.allclose(z, torch.tensor(zz), atol=1e-6)
    assert loss.item() == pytest.approx(float(mse + l0 * active), rel=1e-6)
    kernel = [[float(abs((p[r][f] - theta[f]) / eps) < 0.5) / eps for f in range(3)] for r in range(n)]
    dz = [[2 / n * sum(err[r][i] * D[i, f] for i in range(2)) for f in range(3)] for r in range(n)]
    hand = [sum(-dz[r][f] * theta[f] * kernel[r][f] - l0 / n * kernel[r][f] for r in range(n)) for f in range(3)]
    assert any(k > 0 for row in kernel for k in row)                    # the example reaches the kernel
    assert torch.allclose(d.threshold.grad, torch.tensor(hand, dtype=torch.float32), atol=1e-5)
    b_grad = [sum(dz[r][f] * on[r][f] for r in range(n)) for f in range(3)]   # no estimator to the input
    assert torch.allclose(d.b_enc.grad, torch.tensor(b_grad, dtype=torch.float32), atol=1e-5)
    d.eval()                                                            # once trained: p H(p - theta)
    assert torch.allclose(d.encode(x), torch.tensor(zz), atol=1e-6)


def test_jumprelu_thresholds_stay_non_negative_and_fold_with_the_decoder() -> None:
    d, x = jumprelu_example()
    with torch.no_grad():
        d.threshold.copy_(torch.tensor([-0.2, 0.3, 0.2]))
    d.project()
    assert torch.equal(d.threshold, torch.tensor([0.0, 0.3, 0.2]))
    before = d(x)[0]
    norms = d.decoder.detach().norm(dim=0)
    theta = d.threshold.detach().clone()
    d.fold()
    assert torch.allclose(d.threshold, theta * norms) and torch.allclose(d(x)[0], before, atol=1e-6)
    a = Space("a", 2)
    refined = Model(d.diagram("f", a, a), d.params("f"))                # the core JumpReLU box
    assert [b.kind for b in refined.diagram.boxes] == ["Linear", "JumpReLU", "Linear"]
    assert torch.equal(refined.params["f_jumprelu"]["theta"], d.threshold.detach())
    assert torch.allclose(refined(x), d(x)[0], atol=1e-6)


def test_the_jumprelu_box_keeps_each_feature_above_its_threshold_by_hand() -> None:
    from compinterp.semantics.kernels import RULES
    from compinterp.syntax import JumpReLU as JumpReLUBox
    box = JumpReLUBox("jump", Space("features", 4))
    theta = torch.tensor([0.5, -1.0, 2.0, 0.0])
    x = torch.tensor([[1.0, -0.5, 2.0, 0.0], [0.4, -2.0, 3.0, -0.1], [0.5, 0.0, -3.0, 1e-3]])
    y = RULES["JumpReLU"](box)({"theta": theta}, x)[0]
    hand = torch.tensor([[1.0, -0.5, 0.0, 0.0],                          # 2 = theta: not above it, zero
                         [0.0, 0.0, 3.0, 0.0],
                         [0.0, 0.0, 0.0, 1e-3]])
    assert torch.equal(y, hand)
    model = Model(box, {"jump": {"theta": theta}})
    assert torch.equal(model(x), hand)
    assert torch.equal(Model(box, seed=0).params["jump"]["theta"], torch.zeros(4))    # zeros: a ReLU to start


def test_the_jumprelu_box_round_trips_through_json() -> None:
    from compinterp.syntax import JumpReLU as JumpReLUBox
    from compinterp.syntax import box_from_json, box_to_json
    box = JumpReLUBox("f_jumprelu", Space("features", 12))
    entry = box_to_json(box)
    assert entry == {"kind": "JumpReLU", "name": "f_jumprelu", "dom": box.dom.to_json(), "cod": box.cod.to_json(),
                     "data": {}}
    again = box_from_json(entry)
    assert again == box and type(again) is JumpReLUBox and again.param_shapes() == {"theta": (12,)}


def test_a_jumprelu_refined_model_saves_and_loads_without_trust_code(tmp_path) -> None:
    from compinterp.files import save
    from compinterp.model import load
    d, x = jumprelu_example()
    d.eval()
    a = Space("a", 2)
    model = Model(Linear("f", a, a), seed=0)
    weights = {"f": {"W": model.params["f"]["W"].detach().clone()}} | d.params("f")
    refined = Model(Linear("f", a, a) >> d.diagram("f", a, a), weights)
    folder = save(refined, tmp_path / "m")
    assert not (folder / "opaque.pt").exists()
    again = load(folder)                                                # no trust_code
    assert again.diagram == refined.diagram
    assert [b.kind for b in again.diagram.boxes] == ["Linear", "Linear", "JumpReLU", "Linear"]
    with torch.no_grad():
        assert torch.equal(again(x), refined(x))
        assert torch.allclose(refined(x), d(model(x))[0], atol=1e-6)
        assert 0 < int((d.encode(model(x)) != 0).sum()) < 3 * len(x)    # the thresholds cut somewhere


def test_jumprelu_matches_saelens_loss_and_gradients() -> None:
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed beside compinterp")
    from sae_lens.saes.sae import TrainStepInput
    torch.manual_seed(0)
    theirs = sae_lens.JumpReLUTrainingSAE(sae_lens.JumpReLUTrainingSAEConfig(
        d_in=6, d_sae=12, l0_coefficient=0.3, jumprelu_bandwidth=0.5, jumprelu_init_threshold=0.2))
    ours = Dictionary("jumprelu", 6, 6, width=12, l0=0.3, bandwidth=0.5, aux_k=None)
    with torch.no_grad():
        for p in (theirs.W_enc, theirs.b_enc, theirs.b_dec):
            p.add_(0.3 * torch.randn_like(p))
        ours.encoder.copy_(theirs.W_enc.T)
        ours.b_enc.copy_(theirs.b_enc)
        ours.decoder.copy_(theirs.W_dec.T)
        ours.b_dec.copy_(theirs.b_dec)
        ours.threshold.copy_(theirs.threshold)
    x = torch.randn(64, 6) * 0.5
    out = theirs.training_forward_pass(TrainStepInput(sae_in=x, coefficients={"l0": 0.3}, dead_neuron_mask=None,
                                                      n_training_steps=0, is_logging_step=False))
    out.loss.backward()
    ours.train()
    loss, z = ours.loss(x, x)
    loss.backward()
    assert loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    assert torch.allclose(z, out.feature_acts, atol=1e-6)
    assert bool(theirs.threshold.grad.abs().sum() > 0)
    for mine, their in ((ours.threshold.grad, theirs.threshold.grad), (ours.encoder.grad, theirs.W_enc.grad.T),
                        (ours.decoder.grad, theirs.W_dec.grad.T), (ours.b_dec.grad, theirs.b_dec.grad)):
        assert torch.allclose(mine, their, atol=1e-5)


def test_the_jumprelu_pass_refines_a_box(tmp_path) -> None:
    from compinterp.files import save
    from compinterp.model import load
    a = Space("a", 6)
    model = Model(Linear("f", a, a), seed=0)
    x = torch.cat(batches())
    p = SAE(x, ["f"], widths=[8], kind="jumprelu", l0=0.1, steps=30, progress=False)
    assert [str(r) for r in p.candidates(model)] == ["sae(f, width=8, l0=0.1)"]
    d = p.fit(model, p.candidates(model)[0])
    refined = p.interpret(model, p.candidates(model)[0], d).explanation
    assert [b.name for b in refined.diagram.boxes] == ["f", "f_enc", "f_jumprelu", "f_dec"]
    assert torch.allclose(refined(x), d(model(x))[0], atol=1e-5)
    again = load(save(refined, tmp_path / "m"))                         # a core box: no opaque.pt, no trust_code
    with torch.no_grad():
        assert torch.equal(again(x), refined(x))
    assert bool((d.threshold >= 0).all()) and 0 < (d.encode(model(x)) != 0).float().sum(-1).mean() < 8


def test_normalisation_scales_the_loss_and_folds_into_the_diagram() -> None:
    data = batches()
    d = Dictionary("topk", 6, 6, width=8, k=3, seed=0, normalise=True)
    train(d, lambda: ((x, x) for x in data), steps=3, lr=1e-3, progress=False)
    scale = math.sqrt(6) / data[0].norm(dim=-1).mean().item()          # from the first batch
    assert d.in_scale.item() == pytest.approx(scale, rel=1e-6) and d.out_scale.item() == pytest.approx(scale, rel=1e-6)
    x = data[1]
    pre = F.linear(x * scale - d.b_dec, d.encoder, d.b_enc).relu()      # folded: unit columns, plain p
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


def test_schedule_drives_the_optimiser_and_decays_over_the_last_tenth_by_default() -> None:
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
        train(Dictionary("topk", 6, 6, width=8, k=2), lambda: ((x, x) for x in data), steps=20, lr=0.1,
              progress=False)
    finally:
        torch.optim.Adam.step = original
    assert seen[:6] == pytest.approx([0.1 * schedule(t, 6, 2, 0.5) for t in range(6)])
    assert seen[6:] == pytest.approx([0.1] * 18 + [0.1, 0.05])           # round(0.1 * 20) = 2 steps of decay


def test_batch_topk_keeps_k_per_example_on_average_in_training_and_k_each_after() -> None:
    d = Dictionary("batchtopk", 6, 6, width=10, k=2, seed=0)
    x = batches(1, rows=16)[0]
    pre = F.linear(x - d.b_dec, d.encoder, d.b_enc).relu()
    d.train()
    z = d.encode(x)
    keep = pre.flatten().topk(2 * 16).indices                          # by hand: the 32 largest of the batch
    hand = torch.zeros(16 * 10).scatter(0, keep, pre.flatten()[keep]).reshape(16, 10)
    assert torch.equal(z, hand) and int((z != 0).sum()) == 32
    d.eval()                                                            # no threshold yet: TopK per example
    assert int((d.encode(x) != 0).sum(-1).max()) <= 2


def test_batch_topk_runs_as_a_jumprelu_at_the_running_mean_of_the_smallest_kept_value(tmp_path: Path) -> None:
    data = batches(12, rows=16)
    d = Dictionary("batchtopk", 6, 6, width=10, k=2, seed=0, aux_k=None)
    smallest: list[float] = []
    loss = d.loss

    def spy(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = loss(x, y)
        smallest.append(out[1][out[1] > 0].min().item())
        return out

    d.loss = spy                                                        # type: ignore[method-assign]
    train(d, lambda: ((x, x) for x in data), steps=12, lr=1e-2, rescale_from=0.5, progress=False)
    tau = smallest[6]                                                   # restarted where the choice switches
    for m in smallest[7:]:
        tau = 0.99 * tau + 0.01 * m
    assert d.batch_threshold.item() == pytest.approx(tau, rel=1e-5)
    x = data[0]
    pre = F.linear(x - d.b_dec, d.encoder, d.b_enc)                     # folded: unit columns, plain p
    hand = pre * (pre > tau)
    assert torch.allclose(d.encode(x), hand, atol=1e-6)
    a = Space("a", 6)
    model = Model(d.diagram("f", a, a), d.params("f"))
    assert "f_jumprelu" in model.boxes and "f_topk" not in model.boxes
    assert torch.allclose(model(x), F.linear(hand, d.decoder, d.b_dec), atol=1e-5)
    save_saelens(d, tmp_path / "sae")
    config = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert config["architecture"] == "jumprelu"
    back = load_saelens(tmp_path / "sae")
    assert torch.allclose(back(x)[0], d(x)[0], atol=1e-5)


def test_dead_features_are_counted_and_aux_k_trains_them() -> None:
    g = torch.Generator().manual_seed(1)
    basis = F.normalize(torch.randn(8, 4, generator=g), dim=0)
    data = [(torch.randn(128, 4, generator=g) @ basis.T) for _ in range(60)]   # activity in 4 of 8 dimensions
    plain = Dictionary("topk", 8, 8, width=32, k=2, seed=0, dead_window=20, aux_k=None, decoder_norm="unit")
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
    assert [b.name for b in refined.diagram.boxes] == ["f", "f_enc", "f_jumprelu", "f_dec"]   # runs at its threshold
    with pytest.raises(InputError, match="aux_k must be an integer from 1 to the width 8, 'auto' or None, got 9"):
        Dictionary("topk", 6, 6, width=8, k=2, aux_k=9)
    with pytest.raises(InputError, match="decoder_norm must be 'free' or 'unit', got 'fixed'"):
        Dictionary("topk", 6, 6, width=8, k=2, decoder_norm="fixed")
    with pytest.raises(InputError, match="decay must be a fraction of the steps from 0 to 1, got 2"):
        train(Dictionary("topk", 6, 6, width=8, k=2), lambda: iter(()), steps=3, decay=2)
    with pytest.raises(InputError, match="rescale_from must be a fraction of the steps from 0 to 1, got -1"):
        train(Dictionary("topk", 6, 6, width=8, k=2), lambda: iter(()), steps=3, rescale_from=-1)


def test_clipping_caps_the_gradient_norm_at_one_by_default_and_b_dec_can_start_at_zero() -> None:
    data = batches(n=1)
    for clip, given in ((1e-3, {"clip": 1e-3}), (1.0, {})):
        a, b = (Dictionary("topk", 6, 6, width=8, k=2, seed=0) for _ in range(2))
        train(a, lambda: ((x, x) for x in data), steps=1, lr=0.1, b_dec="zero", rescale_from=1.0, progress=False,
              **given)
        x = data[0]                                                      # by hand: one Adam step on clipped grads
        loss, _ = b.loss(x, x)                                          # (b_dec starts at zero, as b's does)
        loss.backward()
        grads = [p.grad for p in b.parameters()]
        total = torch.sqrt(sum(g.square().sum() for g in grads))
        assert total > clip
        opt = torch.optim.Adam(b.parameters(), lr=0.1)
        for p in b.parameters():
            p.grad = p.grad * (clip / (total + 1e-6))
        opt.step()
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(InputError, match="clip must be a positive gradient norm, got 0"):
        train(Dictionary("topk", 6, 6, width=8, k=2), lambda: iter(()), steps=3, clip=0)


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
        scramble(relu)                                                  # free norms, folded on saving
        save_saelens(relu, tmp_path / "relu")
        assert torch.allclose(sae_lens.SAE.load_from_disk(tmp_path / "relu")(x), relu(x)[0], atol=1e-5)
        assert torch.allclose(load_saelens(tmp_path / "relu")(x)[0], relu(x)[0], atol=1e-5)


def test_jumprelu_crosses_to_saelens_and_back(tmp_path) -> None:
    sae_lens = pytest.importorskip("sae_lens", reason="sae-lens is not installed beside compinterp")
    from compinterp.refinement.dictionary import from_saelens, load_saelens, save_saelens
    ours = Dictionary("jumprelu", 6, 6, width=16, seed=1, normalise=True, l0=0.05)
    train(ours, lambda: ((b, b) for b in batches()), steps=20, lr=1e-2, progress=False)
    x = torch.cat(batches())
    with torch.no_grad():
        save_saelens(ours, tmp_path / "ours", hook_name="f")
        back = sae_lens.SAE.load_from_disk(tmp_path / "ours")
        assert type(back).__name__ == "JumpReLUSAE"
        z = ours.encode(x)
        assert 0 < int((z != 0).sum()) < z.numel()                      # the thresholds cut somewhere
        assert torch.allclose(back.encode(x), z, atol=1e-5)                # equal encodings
        assert torch.equal(back.encode(x) != 0, z != 0)                 # the same features fire
        assert torch.allclose(back(x), ours(x)[0], atol=1e-4)
        torch.manual_seed(0)                                            # theirs, with a negative threshold
        theirs = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=6, d_sae=16))
        for p in theirs.parameters():
            p.add_(0.3 * torch.randn_like(p))
        theirs.threshold[0] = -0.5
        theirs.save_model(tmp_path / "theirs")
        loaded = load_saelens(tmp_path / "theirs")
        assert torch.allclose(loaded.encode(x), theirs.encode(x), atol=1e-5)
        assert torch.allclose(loaded(x)[0], theirs(x), atol=1e-5)
        a = Space("a", 6)
        model = Model(Linear("f", a, a), seed=0)
        refined = from_saelens(model, "f", tmp_path / "theirs").explanation
        assert torch.allclose(refined(x), theirs(model(x)), atol=1e-5)
        assert refined.boxes["f_jumprelu"].kind == "JumpReLU"
        assert torch.equal(refined.params["f_jumprelu"]["theta"], theirs.threshold.detach().clamp_min(0))


def test_saelens_files_that_do_not_cross_say_why(tmp_path) -> None:
    from compinterp.errors import FormatError
    from compinterp.refinement.dictionary import load_saelens, save_saelens
    with pytest.raises(FormatError, match="is not a SAELens SAE directory: it has no cfg.json"):
        load_saelens(tmp_path)
    save_saelens(Dictionary("topk", 6, 6, width=8, k=2), tmp_path / "d")
    config = tmp_path / "d" / "cfg.json"
    config.write_text(config.read_text().replace('"topk"', '"gated"'))
    with pytest.raises(FormatError, match="architecture 'gated' does not load as a dictionary"):
        load_saelens(tmp_path / "d")
    config.write_text(config.read_text().replace('"gated"', '"jumprelu"'))
    with pytest.raises(FormatError, match="sae_weights.safetensors lacks threshold"):
        load_saelens(tmp_path / "d")
    with pytest.raises(InputError, match="a bilinear dictionary has no SAELens architecture"):
        save_saelens(Dictionary("bilinear", 6, 6, width=8, k=2), tmp_path / "b")
