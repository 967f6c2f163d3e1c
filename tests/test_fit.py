"""Learned alignments: fit recovers a planted subspace, and its IIA matches an independent DAS loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import compinterp as ci
from compinterp.errors import InputError

X, HIDDEN, VAR, LOGITS = ci.Space("x", 2), ci.Space("hidden", 8), ci.Space("var", 1), ci.Space("logits", 2)


def planted(seed: int = 0) -> tuple[ci.Model, torch.Tensor]:
    """A network whose hidden layer carries ``a + b`` along ``u`` only, ``a - b`` along ``w`` (never read);
    its logits are ``(3 u.h, -3 u.h)``: the class is the sign of ``a + b``."""
    g = torch.Generator().manual_seed(seed)
    u, w = torch.linalg.qr(torch.randn(8, 2, generator=g))[0].T
    enc = torch.outer(u, torch.tensor([1.0, 1.0])) + torch.outer(w, torch.tensor([1.0, -1.0]))
    dec = torch.stack([3 * u, -3 * u])
    model = ci.Model(ci.Linear("enc", X, HIDDEN) >> ci.Unembed("dec", HIDDEN, LOGITS),
                     {"enc": {"W": enc}, "dec": {"W": dec}})
    return model, u


def hypothesis(model: ci.Model, seed: int = 1) -> ci.Interpretation:
    """The high-level model: ``var = a + b``, logits ``(3 var, -3 var)``, aligned by a learned rotation."""
    return ci.Interpretation(
        model, boxes={"enc": ci.Linear("sum", X, VAR), "dec": ci.Unembed("read", VAR, LOGITS)},
        wires={"hidden": ("var:1", ci.maps.rotation(8, 1, seed=seed))},
        params={"sum": {"W": torch.tensor([[1.0, 1.0]])}, "read": {"W": torch.tensor([[3.0], [-3.0]])}})


def data(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def test_fit_recovers_the_planted_direction() -> None:
    model, u = planted()
    interp = hypothesis(model)
    before = interp.maps["hidden:8"].rotation.basis.detach()[0]
    result = ci.fit(model, interp, data(2000, 0), free=["hidden"], wire="enc", steps=300, lr=0.05, progress=False)
    q = interp.maps["hidden:8"].rotation.basis.detach()[0]
    assert abs(float(before @ u)) < 0.9
    assert float(q @ u) >= 0.99
    assert result.iia is not None and result.iia >= 0.98
    assert result.losses[-1] < result.losses[0]
    again = ci.fit(model, hypothesis(model), data(2000, 0), free=["hidden"], wire="enc", steps=300, lr=0.05,
                   progress=False)
    assert again.losses == result.losses and again.iia == result.iia


def iia_by_hand(model: ci.Model, q: torch.Tensor, base: torch.Tensor, source: torch.Tensor) -> float:
    """Interchange-intervention accuracy with plain torch: the model patched on span(q) against the
    high-level model run with ``var`` taken from the source."""
    W, D = model.box_params("enc")["W"].detach(), model.box_params("dec")["W"].detach()
    h, s = base @ W.T, source @ W.T
    patched = h + torch.outer((s - h) @ q, q)
    low = (patched @ D.T).argmax(-1)
    var = source.sum(-1)
    high = torch.stack([3 * var, -3 * var], -1).argmax(-1)
    return float((low == high).double().mean())


def das_by_hand(model: ci.Model, x: torch.Tensor, steps: int, lr: float, seed: int) -> torch.Tensor:
    """An independent DAS loop: a rotation under torch's orthogonal parametrisation, trained with
    plain torch so that the model patched on its first coordinate matches the high-level label."""
    W, D = model.box_params("enc")["W"].detach(), model.box_params("dec")["W"].detach()
    rotation = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(8, 8, bias=False))
    optimiser = torch.optim.Adam(rotation.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = torch.randint(0, len(x), (256,), generator=g)
        base, source = x[rows], x[rows][torch.randperm(256, generator=g)]
        q = rotation.weight[0]
        h, s = base @ W.T, source @ W.T
        logits = (h + torch.outer((s - h) @ q, q)) @ D.T
        label = (source.sum(-1) < 0).long()
        loss = F.cross_entropy(logits, label)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return rotation.weight[0].detach()


def test_held_out_iia_equals_an_independent_computation_and_a_das_loop() -> None:
    model, u = planted(seed=2)
    interp = hypothesis(model, seed=5)
    ci.fit(model, interp, data(2000, 1), free=["hidden"], wire="enc", steps=300, lr=0.05, progress=False)
    q = interp.maps["hidden:8"].rotation.basis.detach()[0]
    base, source = data(1000, 7), data(1000, 8)
    report = ci.interchange(model, interp, base, source, ci.Site("enc", subspace=q[None]), own_value=True,
                            progress=False)
    assert report.end_to_end.top1 == pytest.approx(iia_by_hand(model, q, base, source), abs=1e-12)
    q_hand = das_by_hand(model, data(2000, 1), steps=300, lr=0.05, seed=0)
    assert abs(float(q_hand @ u)) >= 0.99
    assert iia_by_hand(model, q_hand * torch.sign(q_hand @ u), base, source) == pytest.approx(
        report.end_to_end.top1, abs=0.01)


def test_fit_without_interventions_learns_a_linear_map() -> None:
    model, u = planted(seed=3)
    interp = ci.Interpretation(
        model, boxes={"enc": ci.Linear("sum", X, VAR), "dec": ci.Unembed("read", VAR, LOGITS)},
        wires={"hidden": ("var:1", ci.maps.linear(torch.zeros(1, 8)))},
        params={"sum": {"W": torch.tensor([[1.0, 1.0]])}, "read": {"W": torch.zeros(2, 1)}})
    result = ci.fit(model, interp, data(1000, 2), free=["hidden", "read"], steps=400, lr=0.05, progress=False)
    assert result.site is None and result.iia is None
    assert result.held_out.end_to_end.top1 >= 0.98


def test_fit_refuses_unknown_parts() -> None:
    model, _ = planted()
    interp = hypothesis(model)
    with pytest.raises(InputError, match="no wire or explanation box of that name"):
        ci.fit(model, interp, data(100, 0), free=["nothing"], progress=False)
    with pytest.raises(InputError, match="names a box output"):
        ci.fit(model, interp, data(100, 0), free=["hidden"], wire="nowhere", progress=False)
    with pytest.raises(InputError, match="held_out"):
        ci.fit(model, interp, data(100, 0), free=["hidden"], held_out=1.5, progress=False)
