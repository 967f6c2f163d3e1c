"""Dictionary passes on synthetic data with a known sparse ground truth."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch.nn import functional as F

from compinterp.complexity.dictionary import code_bits, dictionary_bits
from compinterp.errors import BoxError, InputError
from compinterp.faithfulness import check
from compinterp.files import load, save
from compinterp.model import Model
from compinterp.refinement.dictionary import (
    RULES,
    SAE,
    BilinearAE,
    Dictionary,
    TopK,
    Transcoder,
    box_activations,
    features,
    sae,
)
from compinterp.syntax import Linear, Space


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Training tests run on one thread (the machine is shared), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sparse_data(d: int, width: int, k: int, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, D)``: ``n`` rows ``x = D c`` with ``c`` k-sparse (values in [0.5, 1.5]) over unit columns ``D``."""
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(d, width, generator=g), dim=0)
    index = torch.rand(n, width, generator=g).argsort(-1)[:, :k]
    codes = torch.zeros(n, width).scatter(-1, index, torch.rand(n, k, generator=g) + 0.5)
    return codes @ dictionary.T, dictionary


def best_cosines(learned: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """For each true column, the largest |cosine| with a learned column."""
    return (F.normalize(learned, dim=0).T @ F.normalize(true, dim=0)).abs().max(0).values


def identity_model(d: int) -> Model:
    x = Space("x", d)
    return Model(Linear("f", x, x) >> Linear("out", x, Space("y", 4)), params={"f": {"W": torch.eye(d)}}, seed=0)


def test_sae_is_deterministic_for_a_seed() -> None:
    x, _ = sparse_data(8, 12, 2, 512)
    model = identity_model(8)
    a, b = (sae(model, "f", x, 12, 2, steps=20, progress=False) for _ in range(2))
    assert all(torch.equal(a.box_params(n)[r], b.box_params(n)[r]) for n in ("f_enc", "f_dec") for r in ("W", "b"))


def test_bilinear_ae_reproduces_quadratic_features() -> None:
    g = torch.Generator().manual_seed(3)
    u = torch.rand(4096, 3, generator=g) * 2 - 1
    a, b = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    x = torch.cat([u, (u @ a.T) * (u @ b.T)], 1) @ torch.randn(9, 16, generator=g)
    x = x / x.std()
    model = identity_model(16)
    p = BilinearAE(x, ["f"], widths=[9], ks=[9], steps=600, lr=1e-2, progress=False)
    rewrite = p.candidates(model)[0]
    interpretation = p.interpret(model, rewrite, p.fit(model, rewrite))
    refined = interpretation.explanation
    report = check(model, interpretation, x[:1024], progress=False, logits=False)
    assert {row.box: row.metrics.faithfulness for row in report.boxes}["f"] >= 0.99
    left, right, dec = (refined.box_params(n) for n in ("f_left", "f_right", "f_dec"))
    by_hand = F.linear(F.linear(x[:8], left["W"], left["b"]) * F.linear(x[:8], right["W"], right["b"]),
                       dec["W"], dec["b"])
    assert torch.allclose(next(box_activations(refined, "f_dec", x[:8]))[1], by_hand, atol=1e-4)


def test_check_reports_local_and_end_to_end_squares_separately() -> None:
    x, _ = sparse_data(8, 12, 2, 1024)
    model = identity_model(8)
    p = SAE(x, ["f"], widths=[6], ks=[2], steps=100, lr=1e-2, progress=False)
    rewrite = p.candidates(model)[0]
    dictionary = p.fit(model, rewrite)
    report = check(model, p.interpret(model, rewrite, dictionary), x, progress=False, logits=False)
    with torch.no_grad():
        recon = dictionary(x)[0]
        out = model.box_params("out")["W"]
        y, y_hat = x @ out.T, recon @ out.T
    local = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    whole = ((y_hat - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    rows = {row.box: row.metrics.fvu for row in report.boxes}
    assert rows["f"] == pytest.approx(local.item(), rel=1e-3)
    assert rows["out"] == pytest.approx(0.0, abs=1e-6)
    assert report.end_to_end.fvu == pytest.approx(whole.item(), rel=1e-3)
    assert rows["f"] != pytest.approx(report.end_to_end.fvu, rel=1e-2)


@pytest.mark.parametrize("cls", [SAE, Transcoder, BilinearAE])
def test_every_pass_type_checks_inside_a_model(cls: type) -> None:
    x = torch.randn(256, 6)
    a = Space("a", 6)
    model = Model(Linear("f", a, a) >> Linear("g", a, Space("b", 3)), seed=0)
    p = cls(x, widths=[8, 4], ks=[2], steps=5, progress=False)
    rewrites = p.candidates(model)
    assert [(r.box, r.settings["width"]) for r in rewrites] == [("f", 8), ("f", 4), ("g", 8), ("g", 4)]
    for rewrite in rewrites:
        refined = p.apply(model, rewrite)
        assert refined.dom == model.dom and refined.cod == model.cod
        assert Space("features", rewrite.settings["width"]) in [w for box in refined.diagram.boxes for w in box.cod]
        assert refined(x[:5]).shape == (5, 3)


def test_relu_sae_is_sparse_and_saves(tmp_path) -> None:
    x, _ = sparse_data(8, 12, 2, 1024)
    model = identity_model(8)
    refined = sae(model, "f", x, 16, steps=100, l1=1e-2, progress=False)
    assert [b.kind for b in refined.diagram.boxes] == ["Linear", "Linear", "Elementwise", "Linear", "Linear"]
    assert torch.allclose(refined.box_params("f_dec")["W"].norm(dim=0), torch.ones(16), atol=1e-5)
    again = load(save(refined, tmp_path / "sae"))
    assert torch.equal(again(x[:4]), refined(x[:4]))


def test_dictionary_bits_count_code_parameters_and_error() -> None:
    assert code_bits(3, 32, 8) == 3 * (8 + 5)
    x, _ = sparse_data(8, 12, 2, 256)
    refined = sae(identity_model(8), "f", x, 12, 2, steps=5, progress=False)
    bits = dictionary_bits(refined, ["f_enc", "f_dec"], width=12, l0=2, examples=100, fvu=0.01, numbers=8)
    assert bits.code == pytest.approx(100 * 2 * (8 + math.log2(12)))
    assert bits.parameters >= 32 * (12 * 8 + 12 + 8 * 12 + 8)
    assert bits.error == pytest.approx(100 * 8 * 0.5 * math.log2(2 * math.pi * math.e * 0.01 / 0.01 ** 2))
    assert bits.total == pytest.approx(bits.code + bits.parameters + bits.error)


def test_errors_name_the_culprit() -> None:
    model = identity_model(4)
    with pytest.raises(InputError, match="no box named 'nope'"):
        SAE(torch.randn(8, 4), ["nope"]).candidates(model)
    with pytest.raises(InputError, match="k from 1 to its width 4, got 9"):
        Dictionary("topk", 4, 4, 4, 9)
    with pytest.raises(InputError, match="unknown dictionary kind 'sparse'"):
        Dictionary("sparse", 4, 4, 4, 1)
    with pytest.raises(BoxError, match="TopK box 't': k must be from 1 to the width 3"):
        TopK("t", Space("f", 3), 0)
    assert "TopK" in RULES


def test_cli_refine_with_a_dictionary_pass(tmp_path, capsys) -> None:
    from compinterp.cli import main
    x = Space("pixels", 64)
    Model(Linear("embed", x, Space("h", 8)) >> Linear("out", Space("h", 8), Space("logits", 10)), seed=0).save(
        tmp_path / "m")
    assert main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "r"), "--pass", "sae", "--wire", "embed"]) == 1
    assert "the sae pass trains on activations" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "r"), "--data", "gaussian:64",
                 "--pass", "transcoder", "--wire", "embed", "--widths", "0"]) == 1
    assert "--widths takes positive integers" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "r"), "--data", "gaussian:256",
                 "--pass", "transcoder", "--wire", "embed", "--widths", "16", "--ks", "4", "--steps", "20",
                 "--budget", "3", "--no-quantise", "--json"]) == 0
    assert '"faithfulness"' in capsys.readouterr().out


def test_feature_view_directions_top_inputs_and_effects() -> None:
    x, _ = sparse_data(8, 12, 2, 600)
    model = identity_model(8)
    p = SAE(x, ["f"], widths=[12], ks=[2], steps=60, lr=1e-2, batch_size=128, progress=False)
    rewrite = p.candidates(model)[0]
    dictionary = p.fit(model, rewrite)
    view = features(model, p, rewrite, dictionary, x, top=3)
    with torch.no_grad():
        z = dictionary.encode(x)
    out = model.box_params("out")["W"].detach()
    assert len(view) == 12
    for feature in view:
        f = feature.index
        fired = z[:, f] != 0
        assert feature.active == int(fired.sum())
        assert torch.allclose(feature.direction, dictionary.decoder[:, f].detach())
        expected = z[fired, f].sort(descending=True).values[:3]
        assert torch.allclose(feature.top_values, expected)
        assert torch.allclose(dictionary.encode(feature.top_inputs)[:, f], expected, atol=1e-5)
        if feature.active:
            by_hand = (z[fired, f, None] * dictionary.decoder[:, f].detach()).mean(0) @ out.T
            assert torch.allclose(feature.effect, by_hand, atol=1e-4)
