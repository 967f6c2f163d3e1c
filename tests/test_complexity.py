"""Description length: every term recomputed by hand, quantisation, the error term and min_bits.

Hand computations use their own Elias-gamma (from the binary string), ``math.comb`` and
torch FVUs written out here, never the library's helpers.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from compinterp.complexity import (Bits, description_length, error_bits_per_number, gamma_bits, grid_width,
                                   log2_binomial, min_bits, quantise, quantise_tensor)
from compinterp.errors import InputError
from compinterp.files import save
from compinterp.interpretation import Interpretation, maps
from compinterp.model import Model
from compinterp.syntax import Bilinear, Linear, Opaque, Space, Unembed, chain, residual

X, H, Y = Space("x", 3), Space("h", 4), Space("y", 2)
L_KINDS = math.log2(20)          # 19 compinterp kinds and Swap


def gamma(n: int) -> int:
    """Elias gamma, by building the code word: ``len(b) - 1`` zeros, then ``n`` in binary ``b``."""
    b = bin(n)[2:]
    return len("0" * (len(b) - 1) + b)


def small() -> Model:
    """Linear(bias) >> residual(Bilinear) >> Unembed(bias), with parameters chosen for each code."""
    gen = torch.Generator().manual_seed(0)
    L = torch.randn(2, 4, generator=gen)
    D = torch.tensor([[7.0, -3.0], [1.0, 0.0], [0.0, 2.0], [-5.0, 6.0]]) / 7 * 0.3
    params = {"up": {"W": torch.randn(4, 3, generator=gen), "b": torch.tensor([0.0, 0.0, 1.7, 0.0])},
              "mlp": {"L": L, "R": L.clone(), "D": D},
              "out": {"W": torch.randn(2, 4, generator=gen), "b": torch.zeros(2)}}
    diagram = chain(Linear("up", X, H, bias=True), residual(Bilinear("mlp", H, H, hidden=2)),
                    Unembed("out", H, Y, bias=True))
    return Model(diagram, params)


def fvu(reference: torch.Tensor, other: torch.Tensor) -> float:
    """``sum (y_ref - y)^2 / sum (y_ref - mean y_ref)^2`` in float64."""
    reference, other = reference.double(), other.double()
    return ((reference - other) ** 2).sum().item() / ((reference - reference.mean(0)) ** 2).sum().item()


def test_codes_match_their_definitions() -> None:
    assert [gamma_bits(n) for n in range(1, 300)] == [gamma(n) for n in range(1, 300)]
    for n, k in [(1, 0), (5, 2), (64, 7), (640, 80)]:
        assert log2_binomial(n, k) == pytest.approx(math.log2(math.comb(n, k)), abs=1e-9)
    with pytest.raises(InputError, match="Elias-gamma code takes a positive integer, got 0"):
        gamma_bits(0)


def test_structure_by_hand() -> None:
    bits = description_length(small())
    rows = {p.name: p.structure for p in bits.parts}
    # header: 1 input wire, its dim 3, 5 distinct boxes (up, copy, mlp, add, out), 5 layers
    assert rows["(diagram)"] == gamma(2) + gamma(3) + gamma(6) + gamma(6) == 16
    place = math.log2(5)                                   # which of the 5 boxes each layer holds
    up = L_KINDS + gamma(2) + gamma(2) + gamma(3) + gamma(4) + 1 + place                      # 1 wire free
    copy = L_KINDS + gamma(2) + gamma(3) + 3 * gamma(4) + place                               # n: 0 bits
    mlp = L_KINDS + gamma(2) + gamma(2) + 2 * gamma(4) + gamma(2) + 1 + place + math.log2(2)  # 2 wires, 2 spots
    add = L_KINDS + gamma(3) + gamma(2) + 3 * gamma(4) + place + math.log2(1)
    out = L_KINDS + gamma(2) + gamma(2) + gamma(4) + gamma(2) + 1 + place
    for name, expected in [("up", up), ("copy", copy), ("mlp", mlp), ("add", add), ("out", out)]:
        assert rows[name] == pytest.approx(expected, abs=1e-12), name
    assert bits.structure == pytest.approx(16 + up + copy + mlp + add + out, abs=1e-9)


def test_parameters_by_hand() -> None:
    model = small()
    assert grid_width(model.box_params("mlp")["D"]) == 4
    bits = description_length(model)
    rows = {p.name: p.parameters for p in bits.parts}
    header = 1 + math.log2(32)              # new tensor; dense/sparse and one of 15 widths or raw
    up_W = header + 12 * 32                  # dense raw
    up_b = header + gamma(2) + math.log2(math.comb(4, 1)) + 32     # sparse raw: one non-zero
    mlp_L = header + 8 * 32
    mlp_R = 1 + math.log2(3)                 # a copy of one of the 3 tensors sent before (L)
    mlp_D = header + 8 * 4 + 32              # dense, 4-bit grid, one scale
    out_W = header + 8 * 32
    out_b = header + gamma(1)                # sparse, no non-zeros
    assert rows["up"] == pytest.approx(up_W + up_b, abs=1e-9)
    assert rows["mlp"] == pytest.approx(mlp_L + mlp_R + mlp_D, abs=1e-9)
    assert rows["out"] == pytest.approx(out_W + out_b, abs=1e-9)
    assert rows["copy"] == rows["add"] == rows["(diagram)"] == 0
    assert bits.parameters == pytest.approx(up_W + up_b + mlp_L + mlp_R + mlp_D + out_W + out_b, abs=1e-9)
    assert bits.total == pytest.approx(bits.structure + bits.parameters) and bits.error == 0
    assert {p.name: p.numbers for p in bits.parts}["mlp"] == 8 + 8 + 8
    at16 = description_length(model, precision=16)
    assert at16.parameters == pytest.approx(
        (up_W - 12 * 16) + (up_b - 16) + (mlp_L - 8 * 16) + mlp_R + (mlp_D - 16) + (out_W - 8 * 16) + out_b, abs=1e-9)


def test_error_term_by_hand() -> None:
    model = small()
    other = Model(model.diagram, {name: {k: v.detach() + 0.05 * torch.ones_like(v) for k, v in
                                         model.box_params(name).items()} for name in ("up", "mlp", "out")})
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(1))
    bits = description_length(other, reference=model, data=x, resolution=0.02)
    with torch.no_grad():
        f = fvu(model(x), other(x))
    per_number = 0.5 * math.log2(2 * math.pi * math.e * f / 0.02 ** 2)
    assert per_number > 0 and bits.fvu == pytest.approx(f, rel=1e-6)
    assert bits.error == pytest.approx(500 * 2 * per_number, rel=1e-6)
    assert bits.examples == 500 and bits.error_per_example == pytest.approx(2 * per_number, rel=1e-6)
    assert bits.total == pytest.approx(bits.structure + bits.parameters + bits.error)
    assert description_length(model, reference=model, data=x).error == 0      # nothing to correct
    assert error_bits_per_number(1e-9) == 0.0                                  # below the resolution: free


def test_exact_error_term_matches_monte_carlo() -> None:
    reference = Model(Bilinear("mlp", X, Y, hidden=4), seed=0)
    other = Model(Bilinear("mlp", X, Y, hidden=4), {"mlp": {k: v.detach() * 1.1 for k, v in
                                                            reference.box_params("mlp").items()}})
    bits = description_length(other, reference=reference, data="exact", examples=10)
    x = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f = fvu(reference(x), other(x))
    assert bits.fvu == pytest.approx(f, rel=0.02)
    assert bits.examples == 10 and bits.error == pytest.approx(10 * 2 * error_bits_per_number(bits.fvu))


def test_zeros_sharing_and_quantisation_cost_less() -> None:
    x = Space("x", 32)
    dense = Model(Linear("f", x, x), seed=0)
    w = dense.box_params("f")["W"].detach()
    sparse = Model(Linear("f", x, x), {"f": {"W": w * (torch.rand_like(w) < 0.1)}})
    shared = Model(Bilinear("g", x, x, hidden=32), {"g": {"L": w, "R": w, "D": w}})
    unshared = Model(Bilinear("g", x, x, hidden=32), {"g": {"L": w, "R": w + 1, "D": w + 2}})
    assert description_length(sparse).parameters < description_length(dense).parameters / 5
    assert description_length(shared).parameters < description_length(unshared).parameters / 2.9
    for b in (2, 5, 8, 16):
        assert description_length(quantise(dense, b)).parameters == pytest.approx(6 + 32 * 32 * b + 32, abs=60)


@given(st.lists(st.floats(-100, 100, allow_nan=False, allow_subnormal=False, width=32), min_size=1, max_size=40),
       st.integers(2, 16))
def test_quantise_tensor_lies_on_its_grid(values: list[float], bits: int) -> None:
    t = torch.tensor(values)
    q = quantise_tensor(t, bits)
    top = t.abs().max().item()
    if top == 0:
        assert torch.equal(q, t) and grid_width(q) is None
        return
    scale = top / (2 ** (bits - 1) - 1)
    assert (q - t).abs().max().item() <= scale / 2 * (1 + 1e-5) + 1e-6 * top
    width = grid_width(q)
    assert width is not None and width <= bits
    assert torch.allclose(quantise_tensor(q, width), q, rtol=1e-6, atol=1e-6 * top)


def test_grid_width_is_the_quantised_width() -> None:
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        t = torch.randn(1000, generator=gen, dtype=dtype)
        assert grid_width(t) is None
        assert [grid_width(quantise_tensor(t, b)) for b in range(2, 17)] == list(range(2, 17))


def test_quantise_model_and_opaque_copy() -> None:
    module = nn.Linear(3, 3)
    original = module.weight.detach().clone()
    model = Model(Linear("f", X, X) >> Opaque("op", X, X, module=module), seed=0)
    q = quantise(model, 3)
    assert grid_width(q.box_params("f")["W"]) <= 3 and grid_width(q.params["op"].weight) <= 3
    assert torch.equal(module.weight, original)                # the model's own module is untouched
    assert q.diagram == model.diagram
    with pytest.raises(InputError, match="a quantisation width must be a whole number of bits from 2 to 16, got 1"):
        quantise(model, 1)


def test_min_bits_is_the_smallest_width_that_keeps_the_bar() -> None:
    model = Model(Bilinear("mlp", Space("x", 8), Space("y", 3), hidden=16), seed=0)
    x = torch.randn(4000, 8, generator=torch.Generator().manual_seed(4))
    b = min_bits(model, model, x, 0.999)
    with torch.no_grad():
        y = model(x)
        assert 1 - fvu(y, quantise(model, b)(x)) >= 0.999
        assert 1 - fvu(y, quantise(model, b - 1)(x)) < 0.999
    assert min_bits(model, model, x, 1.0) == 32                # nothing quantised is exact
    other = Model(model.diagram, seed=1)
    with pytest.raises(InputError, match=r"the model itself keeps faithfulness .* < 0.9 to the reference"):
        min_bits(other, model, x, 0.9)


def test_interpretation_counts_its_maps() -> None:
    model = Model(Linear("f", H, H) >> Linear("g", H, Y), seed=0)
    plain = Interpretation(model)
    mapped = Interpretation(model, wires={"h": maps.linear(torch.eye(4))})
    base, more = description_length(plain), description_length(mapped)
    rows = {p.name: p for p in more.parts}
    assert rows["(maps)"].structure == gamma(2) and {p.name: p for p in base.parts}["(maps)"].structure == gamma(1)
    # the map's structure: which of the 2 wires (h:4, y:2), which of the 4 map kinds; its 4 x 4 weight
    assert rows["sigma[h:4]"].structure == pytest.approx(math.log2(2) + math.log2(5))
    assert rows["sigma[h:4]"].numbers == 16 and rows["sigma[h:4]"].parameters > 16
    assert more.total > base.total


def test_saved_model_has_the_same_length(tmp_path) -> None:
    model = Model(chain(Linear("up", X, H, bias=True), Opaque("op", H, H, module=nn.Sequential(nn.Linear(4, 4))),
                        Unembed("out", H, Y)), seed=0)
    path = save(model, tmp_path / "m")
    from_disk, in_memory = description_length(path), description_length(model)
    assert from_disk.to_json() == in_memory.to_json()
    assert any("Opaque box's code is not counted" in note for note in from_disk.notes)


def test_report_and_errors() -> None:
    bits = description_length(small())
    text = str(bits)
    assert "structure" in text and "parameters" in text and "mlp" in text and "(no reference)" in text
    obj = bits.to_json()
    assert obj["total"] == pytest.approx(bits.total) and [p["name"] for p in obj["parts"]][:2] == ["(diagram)", "up"]
    assert isinstance(bits, Bits)
    with pytest.raises(InputError, match="precision must be a whole number of bits from 1 to 64, got 0"):
        description_length(small(), precision=0)
    with pytest.raises(InputError, match="a reference model was given without data"):
        description_length(small(), reference=small())
    with pytest.raises(InputError, match="data was given without a reference model"):
        description_length(small(), data="exact")
    with pytest.raises(InputError, match="takes a Model, an Interpretation or a saved model's directory, got int"):
        description_length(3)
