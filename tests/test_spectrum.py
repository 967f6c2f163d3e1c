"""ci.spectrum: per-output eigenvalues and eigenvectors equal an eigendecomposition written here; the
three selection orders differ where they should; a selection truncates into the eigen-layer."""

from __future__ import annotations

import pytest
import torch

import compinterp as ci
from compinterp.errors import BoxError, InputError
from compinterp.refinement.passes import eigen

F64 = torch.float64


def hand_sym(model: ci.Model, box: str) -> torch.Tensor:
    """``B_sym[c]`` on the padded input (``(1, x)`` when the box has biases), built by hand."""
    p = {k: v.detach() for k, v in model.box_params(box).items()}
    L, R = p["L"], p["R"]
    if "l" in p:
        L, R = torch.cat([p["l"][:, None], L], 1), torch.cat([p["r"][:, None], R], 1)
    B = torch.einsum("ch,hi,hj->cij", p["D"], L, R)
    return (B + B.mT) / 2


@pytest.mark.parametrize("bias", [False, True])
def test_spectrum_is_the_eigendecomposition_of_each_output(bias: bool) -> None:
    model = ci.Model(ci.Bilinear("mlp", ci.Space("x", 5), ci.Space("y", 3), hidden=7, bias=bias), seed=0, dtype=F64)
    spec = ci.spectrum(model, "mlp")
    B = hand_sym(model, "mlp")
    lam, V = torch.linalg.eigh(B)
    order = lam.abs().argsort(dim=1, descending=True)
    assert torch.allclose(spec.values, lam.gather(1, order), atol=1e-12)
    padded = torch.cat([spec.offsets[..., None], spec.vectors], 2) if bias else spec.vectors
    rebuilt = torch.einsum("cm,cmi,cmj->cij", spec.values, padded, padded)
    assert torch.allclose(rebuilt, B, atol=1e-10)
    assert torch.allclose(padded @ padded.mT, torch.eye(padded.shape[1], dtype=F64).expand_as(rebuilt), atol=1e-10)
    x = torch.randn(11, 5, dtype=F64)
    bias_out = model.box_params("mlp")["d"].detach() if bias else 0
    assert torch.allclose(spec.activations(x).sum(2) + bias_out, model(x), atol=1e-10)


def diagonal() -> ci.Model:
    """One output ``3 x0^2 - 2 x1^2 + x2^2 - 0.5 x3^2`` (eigenvalues known by construction)."""
    eye = torch.eye(4, dtype=F64)
    return ci.Model(ci.Bilinear("q", ci.Space("x", 4), ci.Space("y", 1), hidden=4),
                    {"q": {"L": eye, "R": eye, "D": torch.tensor([[3.0, -2.0, 1.0, -0.5]], dtype=F64)}})


def test_the_selection_orders_differ_where_they_should() -> None:
    spec = ci.spectrum(diagonal(), "q")
    assert spec.values.tolist() == [[3.0, -2.0, 1.0, -0.5]]
    data = torch.randn(4000, 4, dtype=F64, generator=torch.Generator().manual_seed(0)) \
        * torch.tensor([0.1, 0.1, 10.0, 1.0], dtype=F64)                  # x2 varies most on the data

    def chosen(mask: torch.Tensor) -> list[float]:
        return sorted(spec.values[mask].tolist())

    assert chosen(spec.select(1)) == [3.0]
    assert chosen(spec.select(1, by="activation", data=data)) == [1.0]
    assert chosen(spec.select(2, by="activation", data=data)) == [-0.5, 1.0]
    assert chosen(spec.select(1, by="paired")) == [-2.0, 3.0]
    assert chosen(spec.select(2, by="paired")) == [-2.0, -0.5, 1.0, 3.0]
    assert chosen(spec.select(2)) == [-2.0, 3.0]


def test_a_selection_truncates_like_the_eigen_pass() -> None:
    model = ci.Model(ci.Bilinear("mlp", ci.Space("x", 6), ci.Space("y", 3), hidden=8, bias=True), seed=1, dtype=F64)
    spec = ci.spectrum(model, "mlp")
    small, pass_ = spec.truncate(spec.select(3)), eigen(model, "mlp", k=3)
    x = torch.randn(9, 6, dtype=F64)
    assert torch.allclose(small(x), pass_(x), atol=1e-10)


def test_folded_spectrum_lives_in_the_input_space() -> None:
    pixels, resid, digits = ci.Space("pixels", 6), ci.Space("resid", 5), ci.Space("digits", 3)
    model = ci.Model(ci.chain(ci.Linear("embed", pixels, resid),
                              ci.residual(ci.Bilinear("mlp", resid, resid, hidden=4)),
                              ci.Unembed("unembed", resid, digits)), seed=0, dtype=F64)
    spec = ci.spectrum(model, "mlp", fold=("embed", "unembed"))
    assert spec.vectors.shape == (3, 6, 6)
    x = torch.randn(7, 6, dtype=F64)
    W = model.box_params("unembed")["W"].detach() @ model.box_params("embed")["W"].detach()
    assert torch.allclose(spec.activations(x).sum(2) + x @ W.T, model(x), atol=1e-10)


def test_bad_requests_name_the_box() -> None:
    spec = ci.spectrum(diagonal(), "q")
    with pytest.raises(InputError, match="spectrum of box 'q': k=9 must be an integer from 1 to 4"):
        spec.select(9)
    with pytest.raises(InputError, match="by='activation' needs data"):
        spec.select(1, by="activation")
    with pytest.raises(InputError, match="by='size' is not one of magnitude, activation, paired"):
        spec.select(1, by="size")
    with pytest.raises(BoxError, match="spectrum: the model has no box named 'nope'"):
        ci.spectrum(diagonal(), "nope")


def test_top_components_follow_each_order_and_draw_as_images(tmp_path) -> None:
    model = ci.Model(ci.Bilinear("mlp", ci.Space("x", 16), ci.Space("y", 3), hidden=12), seed=0, dtype=F64)
    spec = ci.spectrum(model, "mlp")
    data = torch.randn(64, 16, dtype=F64, generator=torch.Generator().manual_seed(1))
    for by in ("magnitude", "activation"):
        values, vectors = spec.top(3, by, data)
        score = spec.values.abs() if by == "magnitude" else spec.activations(data).mean(0).abs()
        for c in range(3):                                  # the chosen ones, by hand: best score first
            order = sorted(range(spec.values.shape[1]), key=lambda m: -score[c, m].item())[:3]
            assert values[c].tolist() == spec.values[c, order].tolist()
            assert torch.equal(vectors[c], spec.vectors[c, order])
            assert set(order) == set(spec.select(3, by, data)[c].nonzero().flatten().tolist())
    values, _ = spec.top(2, "paired")
    assert (values[:, :2] >= values[:, 2:].max(1, keepdim=True).values).all()   # positives first, then negatives
    path = spec.draw(tmp_path / "eig.png", k=2, names=["a", "b", "c"])
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError, match="spectrum of box 'mlp': its eigenvectors have 16 coordinates, which are not 3x3"):
        spec.draw(tmp_path / "bad.png", side=3)
    assert not (tmp_path / "bad.png").exists()
