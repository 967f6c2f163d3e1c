"""Dictionary passes on synthetic data with a known sparse ground truth."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from compinterp.complexity import description_length
from compinterp.complexity.dictionary import code_bits, dictionary_bits
from compinterp.errors import BoxError, InputError
from compinterp.faithfulness import check
from compinterp.files import save
from compinterp.model import Model, load
from compinterp.refinement import refine
from compinterp.refinement.dictionary import (
    SAE,
    BilinearAE,
    Dictionary,
    Transcoder,
    bilinear_ae,
    box_activations,
    features,
    sae,
    transcoder,
)
from compinterp.syntax import Linear, Space, TopK


pytestmark = pytest.mark.usefixtures("one_thread")


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


def test_relu_sae_is_sparse() -> None:
    x, _ = sparse_data(8, 12, 2, 1024)
    refined = sae(identity_model(8), "f", x, 16, steps=100, l1=1e-2, progress=False)
    assert [b.kind for b in refined.diagram.boxes] == ["Linear", "Linear", "Elementwise", "Linear", "Linear"]
    assert torch.allclose(refined.box_params("f_dec")["W"].norm(dim=0), torch.ones(16), atol=1e-5)
    with torch.no_grad():
        z = next(box_activations(refined, "f_relu", x))[1]
    assert 0 < (z != 0).float().sum(-1).mean() < 16


REFINED = {
    "sae-topk": lambda m, x: sae(m, "f", x, 12, 2, steps=30, progress=False),
    "sae-relu": lambda m, x: sae(m, "f", x, 12, steps=30, progress=False),
    "transcoder": lambda m, x: transcoder(m, "f", x, 12, 3, steps=30, progress=False),
    "bilinear_ae": lambda m, x: bilinear_ae(m, "f", x, 12, 4, steps=30, progress=False),
}


@pytest.mark.parametrize("name", REFINED)
def test_every_dictionary_model_round_trips(name: str, tmp_path, capsys) -> None:
    """Saved and loaded (TopK is a box kind of the core vocabulary), the same outputs bit for bit; and the
    command line describes and draws it."""
    from compinterp.cli import main
    x, _ = sparse_data(8, 12, 2, 512)
    refined = REFINED[name](identity_model(8), x)
    again = load(save(refined, tmp_path / "m"))
    assert again.diagram == refined.diagram
    with torch.no_grad():
        assert torch.equal(again(x), refined(x))
    assert main(["info", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "features:12" in out and ("TopK" in out) == (name != "sae-relu")
    assert "note: the per-example code of the sparse layer(s) f_dec is not counted" in out
    assert main(["draw", str(tmp_path / "m"), "-o", str(tmp_path / "m.svg")]) == 0
    svg = (tmp_path / "m.svg").read_text()
    assert "features:12" in svg and "f_dec" in svg and ("TopK" in svg) == (name != "sae-relu")


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
    assert main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "r2"), "--data", "gaussian:256",
                 "--passes", "lowrank,sae", "--wire", "embed", "--widths", "8", "--ks", "2", "--steps", "20",
                 "--budget", "6", "--no-quantise", "--json"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "r2"), "--data", "gaussian:256",
                 "--passes", "lowrank", "--budget", "6", "--no-quantise", "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert both["evaluated"] == alone["evaluated"] + 1 and both["faithfulness"] >= 0.99    # one SAE setting tried
    assert main(["refine", str(tmp_path / "m"), "--out", str(tmp_path / "r3"), "--data", "gaussian:64",
                 "--passes", "lowrank", "--widths", "8"]) == 1
    assert "--wire, --widths, --ks, --steps, --kind and --l0 set the dictionary passes (sae, transcoder, bilinear_ae)" in \
        capsys.readouterr().err


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


def topk_l0(pre: torch.Tensor, k: int) -> float:
    """The mean number of features a TopK-``k`` layer keeps of ``pre`` (non-negative): those at or above
    each row's ``k``-th largest value that are not zero."""
    kth = pre.sort(-1, descending=True).values[:, k - 1:k]
    return ((pre >= kth) & (pre > 0)).sum(-1).double().mean().item()


def test_description_length_counts_the_code_of_a_dictionary_on_data() -> None:
    """``description_length(sae_model, reference, data)`` = structure + parameters + code + error, each term
    recomputed by hand; without data the code is left out, and a note says so."""
    x, _ = sparse_data(8, 12, 2, 512)
    model = identity_model(8)
    refined = sae(model, "f", x, 12, 2, steps=50, progress=False)
    plain = description_length(refined)
    assert plain.code == 0 and plain.notes == ("note: the per-example code of the sparse layer(s) f_dec is not "
                                               "counted: give data=... to measure it",)
    enc = refined.box_params("f_enc")
    with torch.no_grad():
        l0 = topk_l0(F.linear(x, enc["W"], enc["b"]).relu(), 2)          # f is the identity
        y, y_hat = model(x).double(), refined(x).double()
    code = 512 * l0 * (8 + math.log2(12))
    fvu = ((y - y_hat) ** 2).sum().item() / ((y - y.mean(0)) ** 2).sum().item()
    error = 512 * 4 * 0.5 * math.log2(2 * math.pi * math.e * fvu / 0.01 ** 2)
    full = description_length(refined, reference=model, data=x)
    assert [c.to_json() for c in full.codes] == [{"box": "f_dec", "width": 12, "l0": pytest.approx(l0), "examples": 512,
                                                  "value_bits": 8, "bits": pytest.approx(code)}]
    assert full.code == pytest.approx(code) and full.error == pytest.approx(error, rel=1e-4)
    assert full.total == pytest.approx(plain.structure + plain.parameters + code + error, rel=1e-6)
    assert full.notes == () and "code" in str(full) and full.to_json()["code"] == pytest.approx(code)
    assert description_length(refined, data=x).model == pytest.approx(plain.model + code)
    with pytest.raises(InputError, match="data='exact' has no examples to code its sparse layers"):
        description_length(refined, data="exact")


def test_the_search_scores_a_dictionary_with_its_code() -> None:
    """A model holding an SAE, refined with no passes: its one frontier point costs structure + parameters +
    examples * L0 * (b + log2 F), L0 measured by hand on the search's data."""
    x, _ = sparse_data(8, 12, 2, 512)
    refined = sae(identity_model(8), "f", x, 12, 2, steps=50, progress=False)
    result = refine(refined, 0.5, x, passes=[], quantise=False, progress=False)
    enc = refined.box_params("f_enc")
    with torch.no_grad():
        l0 = topk_l0(F.linear(x, enc["W"], enc["b"]).relu(), 2)
    expected = description_length(refined).model + 512 * l0 * (8 + math.log2(12))
    assert [p.bits for p in result.frontier] == [pytest.approx(expected, rel=1e-9)]
    assert result.original_bits == result.refined_bits == pytest.approx(expected, rel=1e-9)
    assert result.bits.model == pytest.approx(expected, rel=1e-9) and result.bits.codes[0].examples == 512


def test_a_transcoder_on_the_frontier_is_scored_with_its_code() -> None:
    """A transcoder that replaces a wide box is shorter than the original even with its code: the search
    takes it, and its point's bits are its structure and parameters plus the code, by hand."""
    g = torch.Generator().manual_seed(2)
    a, y = Space("a", 32), Space("y", 4)
    model = Model(Linear("f", a, a) >> Linear("out", a, y), seed=0)
    x = torch.randn(256, 32, generator=g)
    p = Transcoder(x, ["f"], widths=[8], ks=[2], steps=100, progress=False)
    result = refine(model, 0.0, x, passes=[p], quantise=False, progress=False)
    assert [r.pass_name for r in result.history] == ["transcoder"]
    enc = result.model.box_params("f_enc")
    with torch.no_grad():
        l0 = topk_l0(F.linear(x, enc["W"], enc["b"]).relu(), 2)
    expected = description_length(result.model).model + 256 * l0 * (8 + 3)
    chosen = result.frontier.best(0.0)
    assert chosen is not None and chosen.history == result.history
    assert chosen.bits == result.refined_bits == pytest.approx(expected, rel=1e-9)
    assert expected < result.original_bits == description_length(model).model


def test_dictionary_passes_by_name_in_the_search() -> None:
    x, _ = sparse_data(8, 12, 2, 512)
    model = identity_model(8)
    alone = refine(model, 0.5, x, passes=[], quantise=False, progress=False)
    named = refine(model, 0.5, x, passes=["sae"], budget=3, quantise=False, progress=False)
    assert (alone.evaluated, named.evaluated) == (1, 3)           # the original, then two SAEs of f
    with pytest.raises(InputError, match="the sae pass trains on activations: give data"):
        refine(model, 0.9, "exact", passes=["eigen", "sae"], progress=False)
    with pytest.raises(InputError, match="the passes are eigen, lowrank, cp, prune, fuse, odt, sae, transcoder, "
                                         "bilinear_ae"):
        refine(model, 0.9, x, passes=["sea"], progress=False)
