"""Interpretations: S on boxes and wires, semantic maps, type errors at construction, save and load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from support import Quadratic, quadratic_rule

from compinterp.errors import BoxError, CompositionError, FormatError, ParameterError
from compinterp.interpretation import Interpretation, maps
from compinterp.interpretation.files import is_interpretation
from compinterp.interpretation.interpretation import load
from compinterp.model import Model
from compinterp.syntax import Add, Bilinear, Copy, Elementwise, Linear, Opaque, Space, Unembed, chain, residual

F64 = torch.float64
X, X2, LOGITS = Space("x", 4), Space("x", 3), Space("logits", 5)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def model() -> Model:
    """x:4 -> residual bilinear -> relu -> unembed to logits:5, in float64."""
    diagram = chain(residual(Bilinear("mlp", X, X, hidden=6)), Elementwise("relu", X), Unembed("out", X, LOGITS))
    return Model(diagram, seed=0, dtype=F64)


def bilinear(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.linear(x, p["L"]) * F.linear(x, p["R"]), p["D"])


def rotated(m: Model, q: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """The parameters of ``m`` in the basis ``q`` (orthogonal) of the residual wire."""
    p = m.box_params("mlp")
    return {"mlp_q": {"L": p["L"] @ q.T, "R": p["R"] @ q.T, "D": q @ p["D"]},
            "out_q": {"W": m.box_params("out")["W"] @ q.T}}


def test_identity_interpretation_is_the_model_itself() -> None:
    m = model()
    interp = Interpretation(m)
    assert interp.diagram == m.diagram
    assert all(isinstance(sigma, maps.Identity) for sigma in interp.maps.values())
    x = randn(7, 4)
    assert torch.equal(interp.explanation(x), m(x))


def test_box_images_and_wire_maps_build_the_explanation_diagram() -> None:
    m = model()
    q = torch.linalg.qr(randn(4, 4, seed=1))[0]
    S = {"mlp": Bilinear("mlp_q", X, X, hidden=6), "out": Unembed("out_q", X, LOGITS)}
    interp = Interpretation(m, boxes=S, wires={"x": maps.linear(q)}, params=rotated(m, q))
    assert [box.name for box in interp.diagram.boxes] == ["copy", "mlp_q", "add", "relu", "out_q"]
    assert interp.space(X @ LOGITS) == X @ LOGITS
    assert interp.image(m.boxes["mlp"]) is S["mlp"]
    assert interp.image(m.boxes["relu"]) == Elementwise("relu", X)
    # the explanation computes the model in the rotated basis: E(q x) = M(x) up to the relu,
    # which does not commute with q; check the first block alone by hand
    x = randn(9, 4, seed=2)
    p = rotated(m, q)["mlp_q"]
    h = x @ q.T + bilinear(p, x @ q.T)
    want = F.linear(torch.relu(h), rotated(m, q)["out_q"]["W"])
    assert torch.allclose(interp.explanation(x @ q.T), want, atol=1e-12)


def test_sigma_changes_the_dimension_of_the_image_wires() -> None:
    m = model()
    proj = randn(3, 4, seed=3)
    S = {"mlp": Bilinear("small", X2, X2, hidden=2), "out": Unembed("out3", X2, LOGITS)}
    params = {"small": {"L": randn(2, 3), "R": randn(2, 3), "D": randn(3, 2)}, "out3": {"W": randn(5, 3)}}
    interp = Interpretation(m, boxes=S, wires={"x:4": (Space("x", 3), maps.linear(proj))}, params=params)
    assert interp.space(X) == X2
    assert interp.image(m.boxes["copy"]).cod == X2 @ X2
    assert interp.image(m.boxes["relu"]) == Elementwise("relu", X2)
    assert interp.explanation.dom == X2 and interp.explanation.cod == LOGITS


def test_the_explanation_diagram_equals_the_composite_of_the_images() -> None:
    m = model()
    proj, feat = randn(3, 4, seed=3), Space("feat", 3)
    image = Linear("a", feat, X2) >> Bilinear("b", X2, X2, hidden=2) >> Linear("c", X2, feat)
    params = {"a": {"W": randn(3, 3)}, "b": {"L": randn(2, 3), "R": randn(2, 3), "D": randn(3, 2)},
              "c": {"W": randn(3, 3)}, "o": {"W": randn(5, 3)}}
    interp = Interpretation(m, boxes={"mlp": image, "out": Unembed("o", feat, LOGITS)},
                            wires={"x": (feat, maps.linear(proj))}, params=params)
    want = Copy(feat) >> image @ feat >> Add(feat) >> Elementwise("relu", feat) >> Unembed("o", feat, LOGITS)
    assert interp.diagram == want
    x = randn(6, 3, seed=4)
    h = x + F.linear(bilinear(params["b"], F.linear(x, params["a"]["W"])), params["c"]["W"])
    assert torch.allclose(interp.explanation(x), F.linear(torch.relu(h), params["o"]["W"]), atol=1e-12)


def test_user_defined_kind_with_its_own_rule() -> None:
    m = model()
    L, D = randn(6, 4, seed=4), randn(4, 6, seed=5)
    interp = Interpretation(m, boxes={"mlp": Quadratic("quad", X, X, hidden=6)},
                            params={"quad": {"L": L, "D": D}}, rules={"Quadratic": quadratic_rule})
    x = randn(5, 4, seed=6)
    h = torch.relu(x + F.linear(F.linear(x, L).square(), D))
    want = F.linear(h, m.box_params("out")["W"])
    assert torch.allclose(interp.explanation(x), want, atol=1e-12)


def test_kept_boxes_take_the_models_parameters_and_opaque_modules() -> None:
    net = torch.nn.Linear(4, 4).double()
    m = Model(Opaque("net", X, X, module=net) >> Linear("f", X, X), dtype=F64)
    interp = Interpretation(m)
    assert interp.explanation.params["net"] is net
    assert torch.equal(interp.explanation.box_params("f")["W"], m.box_params("f")["W"])


def test_maps_compute_what_they_say() -> None:
    w, b = randn(3, 4), randn(3, seed=1)
    x = randn(2, 5, 4, seed=2)
    assert torch.allclose(maps.linear(w, b)(x), x @ w.T + b)
    enc, dec, be, bd = randn(6, 4, seed=3), randn(4, 6, seed=4), randn(6, seed=5), randn(4, seed=6)
    sae = maps.encoder_decoder(enc, dec, be, bd)
    z = torch.relu((x - bd) @ enc.T + be)
    assert torch.allclose(sae(x), z)
    assert torch.allclose(sae.decode(z), z @ dec.T + bd)
    assert sae.out_dim(4, "x:4") == 6
    assert maps.function(torch.tanh).out_dim(4, "x:4") == 4
    assert maps.function(lambda v: v[..., :2]).out_dim(4, "x:4") == 2


def test_map_construction_errors() -> None:
    with pytest.raises(ParameterError, match=r"2-D floating weight \(out x in\), got \(3,\)"):
        maps.linear(torch.ones(3))
    with pytest.raises(ParameterError, match=r"needs a bias of shape \(2,\), got \(3,\)"):
        maps.linear(torch.ones(2, 3), torch.ones(3))
    with pytest.raises(ParameterError, match=r"needs a decoder of shape \(4, 6\), got \(6, 4\)"):
        maps.encoder_decoder(torch.ones(6, 4), torch.ones(6, 4))
    with pytest.raises(ParameterError, match="unknown activation 'swish'"):
        maps.encoder_decoder(torch.ones(6, 4), torch.ones(4, 6), activation="swish")
    with pytest.raises(ParameterError, match="needs a callable, got int"):
        maps.function(3)


def test_construction_errors_name_the_box_or_wire() -> None:
    m = model()
    with pytest.raises(BoxError, match=r"box 'mlp' \(x:4 -> x:4\) is left unmapped and its wires change "
                                       r"\(x:3 -> x:3\): it cannot stand for itself, give boxes=\{'mlp': "):
        Interpretation(m, wires={"x": maps.linear(randn(3, 4))})
    with pytest.raises(CompositionError, match=r"the image of box 'mlp' \(x:4 -> x:4\) must go x:4 -> x:4, "
                                               r"but the image given is f \(x:4 -> x:3\)"):
        Interpretation(m, boxes={"mlp": Linear("f", X, X2)}, params={"f": {"W": randn(3, 4)}})
    with pytest.raises(CompositionError, match=r"the image of box 'out' \(x:4 -> logits:5\) must go "
                                               r"x:4 -> logits:5, but the image given is g \(x:3 -> logits:5\)"):
        Interpretation(m, boxes={"out": Linear("g", X2, LOGITS)})
    with pytest.raises(CompositionError, match="the linear map on wire x:4 takes vectors of dimension 3, "
                                               "but the wire has dimension 4"):
        Interpretation(m, wires={"x": maps.linear(randn(4, 3))})
    with pytest.raises(CompositionError, match=r"the linear map on wire x:4 gives vectors of dimension 3, "
                                               r"but its image wire x:2 has dimension 2"):
        Interpretation(m, wires={"x": ("x:2", maps.linear(randn(3, 4)))})
    with pytest.raises(CompositionError, match=r"function map 'boom' on wire x:4 fails on a vector of dimension 4: "
                                               r"RuntimeError: no"):
        Interpretation(m, wires={"x": maps.function(_boom, name="boom")})
    with pytest.raises(BoxError, match=r"boxes=\{'nope': ...\}: the model has no box named 'nope'; "
                                       r"its boxes are copy, mlp, add, relu, out"):
        Interpretation(m, boxes={"nope": Linear("f", X, X)})
    with pytest.raises(BoxError, match=r"wires=\{'y': ...\}: the model has no wire 'y'; its wires are x:4, logits:5"):
        Interpretation(m, wires={"y": maps.identity()})
    with pytest.raises(BoxError, match="box 'copy' is a copy spider: it is always sent to the copy of its image wire"):
        Interpretation(m, boxes={"copy": Copy(X)})
    with pytest.raises(BoxError, match="the image of box 'mlp' must be a compinterp Diagram, got str"):
        Interpretation(m, boxes={"mlp": "mlp"})
    with pytest.raises(BoxError, match=r"wire x:4 is interpreted by 'id': give a map from compinterp.maps"):
        Interpretation(m, wires={"x": "id"})
    with pytest.raises(BoxError, match=r"wire x:4 must be sent to one wire .* got 3"):
        Interpretation(m, wires={"x": (3, maps.identity())})
    with pytest.raises(ParameterError, match=r"explanation box small \(x:4 -> x:4\) has no parameters: pass "
                                             r"params=\{'small': \{...\}\} with shapes \{'L': \(2, 4\)"):
        Interpretation(m, boxes={"mlp": Bilinear("small", X, X, hidden=2)})
    with pytest.raises(BoxError, match="an Interpretation explains a compinterp Model, got Linear"):
        Interpretation(Linear("f", X, X))


def _boom(x: torch.Tensor) -> torch.Tensor:
    raise RuntimeError("no")


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    m = model()
    q = torch.linalg.qr(randn(4, 4, seed=1))[0]
    sae = maps.encoder_decoder(randn(6, 5, seed=7), randn(5, 6, seed=8), randn(6, seed=9), None, "identity")
    feat = Space("feat", 6)
    images = {"mlp": Bilinear("mlp_q", X, X, hidden=6), "out": Unembed("out_q", X, LOGITS) >> Linear("enc", LOGITS, feat)}
    interp = Interpretation(m, boxes=images, wires={"x": maps.linear(q), "logits": (feat, sae)},
                            params=rotated(m, q) | {"enc": {"W": randn(6, 5, seed=10)}})
    path = interp.save(tmp_path / "interp")
    assert is_interpretation(path) and sorted(p.name for p in path.iterdir()) == \
        ["explanation", "interpretation.json", "maps.safetensors"]
    back = Interpretation.load(path, m)
    assert back.diagram == interp.diagram
    assert back.space(LOGITS) == feat
    for name, sigma in interp.maps.items():
        for key, value in sigma.state_dict().items():
            assert torch.equal(back.maps[name].state_dict()[key], value)
    x = randn(8, 4, seed=3)
    assert torch.equal(back.explanation(x), interp.explanation(x))
    assert torch.equal(back.maps["logits:5"](m(x)), sae(m(x)))
    interp.save(path)  # overwriting an interpretation is allowed
    assert is_interpretation(path)


def test_function_maps_are_given_again_on_load(tmp_path: Path) -> None:
    m = model()
    interp = Interpretation(m, wires={"logits": maps.function(torch.tanh, name="tanh")})
    path = interp.save(tmp_path / "interp")
    with pytest.raises(FormatError, match=r"wire logits:5 was mapped by the function 'tanh', which a file cannot "
                                          r"hold: pass functions=\{'logits:5': ...\} to load it"):
        load(path, m)
    back = load(path, m, functions={"logits:5": torch.tanh})
    assert back.maps["logits:5"].fn is torch.tanh


def test_load_and_save_errors(tmp_path: Path) -> None:
    m = model()
    path = Interpretation(m).save(tmp_path / "interp")
    other = Model(Linear("f", X, X))
    with pytest.raises(FormatError, match="explains another diagram than the model given"):
        load(path, other)
    with pytest.raises(FormatError, match=r"no interpretation at .*nothing: .*interpretation.json is missing"):
        load(tmp_path / "nothing", m)
    (path / "maps.safetensors").write_bytes(b"garbage")
    with pytest.raises(FormatError, match="maps.safetensors: checksum mismatch"):
        load(path, m)
    manifest = json.loads((path / "interpretation.json").read_text())
    (path / "interpretation.json").write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(FormatError, match="format_version 99; this compinterp reads 1 to 1"):
        load(path, m)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="refusing to write an interpretation to .*taken: it is a file or a "
                                          "non-empty directory that is not an interpretation"):
        Interpretation(m).save(taken)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
