"""``Model``: a diagram with its parameters, behaving as an ordinary ``nn.Module``."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from support import assert_error

from compinterp.errors import BoxError, CompinterpError, InputError, ParameterError
from compinterp.model import Model, Store, named_boxes
from compinterp.syntax import (
    Attention,
    Bilinear,
    Copy,
    Elementwise,
    Embed,
    Id,
    Linear,
    Norm,
    Opaque,
    Space,
    Unembed,
    chain,
    residual,
)

X, Y, R = Space("x", 3), Space("y", 2), Space("r", 8)
TOKENS = Space("tok", 11)


def transformer() -> Model:
    """A one-layer transformer with every kind of parametrised box."""
    return Model(chain(Embed("emb", TOKENS, R),
                       residual(Norm("ln0", R, norm="layer") >> Attention("attn", R, heads=2, bias=True)),
                       residual(Norm("ln1", R) >> Bilinear("mlp", R, R, hidden=16, bias=True)),
                       Unembed("head", R, TOKENS)), seed=0)


def tokens(seed: int = 0) -> torch.Tensor:
    """A batch of 4 sequences of 6 token ids."""
    return torch.randint(0, 11, (4, 6), generator=torch.Generator().manual_seed(seed))


def test_forward_matches_a_hand_written_transformer() -> None:
    model, ids = transformer(), tokens()
    p = {name: model.box_params(name) for name in model.params}
    with torch.no_grad():
        h = p["emb"]["W"][ids]
        a = F.layer_norm(h, (8,), p["ln0"]["weight"], p["ln0"]["bias"], 1e-5)
        mha = nn.MultiheadAttention(8, 2, batch_first=True)
        mha.in_proj_weight.copy_(torch.cat([p["attn"]["Wq"], p["attn"]["Wk"], p["attn"]["Wv"]]))
        mha.in_proj_bias.copy_(torch.cat([p["attn"]["bq"], p["attn"]["bk"], p["attn"]["bv"]]))
        mha.out_proj.weight.copy_(p["attn"]["Wo"])
        mha.out_proj.bias.copy_(p["attn"]["bo"])
        h = h + mha(a, a, a, attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1), need_weights=False)[0]
        b = F.rms_norm(h, (8,), p["ln1"]["weight"], 1e-5)
        m = p["mlp"]
        h = h + F.linear(F.linear(b, m["L"], m["l"]) * F.linear(b, m["R"], m["r"]), m["D"], m["d"])
        expected = F.linear(h, p["head"]["W"])
        torch.testing.assert_close(model(ids), expected, atol=1e-5, rtol=1e-5)


def test_model_is_a_module_with_one_parameter_per_role() -> None:
    model = transformer()
    assert isinstance(model, nn.Module) and isinstance(model.params, Store)
    expected = {f"params.{name}.{role}": shape for name, box in model.boxes.items()
                if hasattr(box, "param_shapes") for role, shape in box.param_shapes().items()}
    assert {name: tuple(p.shape) for name, p in model.named_parameters()} == expected
    assert model.num_params() == sum(torch.Size(s).numel() for s in expected.values())
    assert all(p.requires_grad for p in model.parameters())
    assert set(model.params) == {"emb", "ln0", "attn", "ln1", "mlp", "head"}
    assert (model.dom, model.cod) == (TOKENS, TOKENS)


def test_state_dict_round_trip() -> None:
    source, target, ids = transformer(), Model(transformer().diagram, seed=1), tokens()
    assert not torch.allclose(source(ids), target(ids))
    target.load_state_dict(source.state_dict())
    torch.testing.assert_close(target(ids), source(ids), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="params.mlp.D"):
        target.load_state_dict({k: v for k, v in source.state_dict().items() if k != "params.mlp.D"})


def test_to_float64() -> None:
    model, ids = transformer(), tokens()
    single = model(ids)
    assert model.to(torch.float64) is model
    assert all(p.dtype == torch.float64 for p in model.parameters())
    double = model(ids)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=1e-5, rtol=1e-5)


def test_dtype_argument_initialises_in_that_dtype() -> None:
    model = Model(Linear("f", X, Y) >> Norm("n", Y), dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(3, dtype=torch.float64)).dtype == torch.float64


def test_adam_training_reduces_the_loss() -> None:
    diagram = residual(Bilinear("mlp", X, X, hidden=8)) >> Linear("out", X, Y, bias=True)
    teacher, student = Model(diagram, seed=1), Model(diagram, seed=2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=generator)
    with torch.no_grad():
        y = teacher(x)
    optimiser = torch.optim.Adam(student.parameters(), lr=3e-2)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = F.mse_loss(student(x), y)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.02 * losses[0]
    assert student.box_params("mlp")["L"].grad is not None


def test_init_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    a, b, c = (Model(transformer().diagram, seed=s) for s in (0, 0, 1))
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=0, atol=0)
    assert any(not torch.equal(c.state_dict()[k], v) for k, v in a.state_dict().items() if k.endswith(".W"))


def test_default_init_scales() -> None:
    model = Model(Linear("f", Space("a", 400), X) >> Norm("n", X, norm="layer"), seed=0)
    w = model.box_params("f")["W"]
    assert w.abs().max() <= 1 / 20 and w.std() > 1 / 80
    assert torch.equal(model.box_params("n")["weight"], torch.ones(3))
    assert torch.equal(model.box_params("n")["bias"], torch.zeros(3))


def test_given_params_are_used_and_copied() -> None:
    W = torch.arange(6.0).reshape(2, 3)
    model = Model(Linear("f", X, Y), params={"f": {"W": W}})
    torch.testing.assert_close(model(torch.ones(3)), W.sum(1))
    W.zero_()
    assert model.box_params("f")["W"].sum() == 15


def test_given_params_for_some_boxes_others_from_the_seed() -> None:
    diagram = Linear("f", X, X) >> Linear("g", X, Y)
    W = torch.eye(3)
    model, fresh = Model(diagram, params={"f": {"W": W}}, seed=3), Model(diagram, seed=3)
    assert torch.equal(model.box_params("f")["W"], W)
    assert model.box_params("g")["W"].shape == (2, 3)
    assert not torch.equal(fresh.box_params("f")["W"], W)


@pytest.mark.parametrize(("params", "fragments"), [
    ({"f": {}}, ("box 'f'", "missing ['W', 'b']")),
    ({"f": {"W": torch.zeros(2, 3)}}, ("box 'f'", "missing ['b']")),
    ({"f": {"W": torch.zeros(2, 3), "b": torch.zeros(2), "c": torch.zeros(2)}}, ("box 'f'", "unexpected ['c']")),
    ({"f": {"W": torch.zeros(3, 2), "b": torch.zeros(2)}}, ("box 'f'", "'W'", "(3, 2)", "(2, 3)")),
    ({"f": {"W": torch.zeros(2, 3), "b": torch.zeros(3)}}, ("box 'f'", "'b'", "(3,)", "(2,)")),
    ({"f": {"W": [[0.0] * 3] * 2, "b": torch.zeros(2)}}, ("box 'f'", "'W'", "tensor", "list")),
    ({"g": {"W": torch.zeros(2, 3)}}, ("'g'", "not in the diagram")),
])
def test_bad_given_params_name_box_and_role(params: dict, fragments: tuple[str, ...]) -> None:
    assert_error(ParameterError, lambda: Model(Linear("f", X, Y, bias=True), params=params), *fragments)


def test_params_for_a_box_without_parameters_are_an_error() -> None:
    assert_error(ParameterError, lambda: Model(Elementwise("relu", X), params={"relu": {"W": torch.zeros(3)}}),
          "'relu'", "'W'")


@pytest.mark.parametrize("given", [torch.zeros(2, 3), {"W": torch.zeros(2, 3, dtype=torch.long)}])
def test_malformed_given_params_are_parameter_errors(given: object) -> None:
    assert_error(ParameterError, lambda: Model(Linear("f", X, Y), params={"f": given}), "box 'f'")


@pytest.mark.parametrize("name", ["to", "train", "forward", "parameters", "state_dict", "params", "cuda", "float"])
def test_box_named_like_a_module_method(name: str) -> None:
    model = Model(Linear(name, X, X) >> Linear("out", X, Y))
    assert f"params.{name}.W" in model.state_dict()
    x = torch.randn(4, 3)
    expected = F.linear(F.linear(x, model.box_params(name)["W"]), model.box_params("out")["W"])
    torch.testing.assert_close(model(x), expected)
    model.to(torch.float64).train().eval()
    assert model.box_params(name)["W"].dtype == torch.float64
    assert len(list(model.parameters())) == 2


def test_a_box_used_twice_shares_its_parameters() -> None:
    f = Linear("f", X, X)
    model = Model(f >> Elementwise("tanh", X) >> f)
    assert len(list(model.parameters())) == 1
    W = model.box_params("f")["W"]
    x = torch.randn(5, 3)
    y = model(x)
    torch.testing.assert_close(y, torch.tanh(x @ W.T) @ W.T)
    y.sum().backward()
    leaf = W.detach().clone().requires_grad_()
    (torch.tanh(x @ leaf.T) @ leaf.T).sum().backward()
    torch.testing.assert_close(W.grad, leaf.grad)


def test_spiders_with_the_default_name_on_different_wires_coexist() -> None:
    diagram = residual(Linear("f", X, X)) >> Linear("g", X, Y) >> residual(Linear("h", Y, Y))
    model = Model(diagram)
    assert set(model.params) == {"f", "g", "h"}
    assert {"copy", "add", "f", "g", "h"} <= set(named_boxes(diagram))


def test_two_different_boxes_with_one_name_are_an_error() -> None:
    assert_error(BoxError, lambda: Model(Linear("f", X, X) >> Linear("f", X, Y)),
          "'f'", "Linear('f', x:3 -> x:3)", "Linear('f', x:3 -> y:2)")
    assert_error(BoxError, lambda: Model(Bilinear("m", X, X, hidden=2) >> Bilinear("m", X, X, hidden=3)), "'m'")
    assert_error(BoxError, lambda: Model(Linear("copy", X, X) >> Copy(X) >> Id(X) @ Copy(X, 0)), "'copy'")


def test_opaque_box_needs_a_module() -> None:
    assert_error(ParameterError, lambda: Model(Opaque("blob", X, Y)), "Opaque box 'blob'", "modules=")
    assert_error(ParameterError, lambda: Model(Opaque("blob", X, Y), modules={"blob": lambda x: x}), "'blob'")


def test_opaque_module_from_the_box_or_from_modules() -> None:
    inner = nn.Linear(3, 2)
    for model in (Model(Opaque("blob", X, Y, module=inner) >> Linear("g", Y, Y)),
                  Model(Opaque("blob", X, Y) >> Linear("g", Y, Y), modules={"blob": inner})):
        assert model.params["blob"] is inner
        assert {name for name, _ in model.named_parameters()} == {"params.blob.weight", "params.blob.bias",
                                                                   "params.g.W"}
        x = torch.randn(4, 3)
        torch.testing.assert_close(model(x), inner(x) @ model.box_params("g")["W"].T)


def test_pickle_and_deepcopy_give_the_same_outputs() -> None:
    model, ids = transformer(), tokens()
    expected = model(ids)
    for twin in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert twin is not model
        torch.testing.assert_close(twin(ids), expected, rtol=0, atol=0)
        assert twin.diagram == model.diagram
        with torch.no_grad():
            twin.box_params("head")["W"].zero_()
        assert torch.equal(twin(ids), torch.zeros(4, 6, 11))
        torch.testing.assert_close(model(ids), expected, rtol=0, atol=0)


def test_box_params_and_repr() -> None:
    model = Model(Linear("f", X, Y, bias=True) >> Elementwise("relu", Y))
    assert set(model.box_params("f")) == {"W", "b"}
    assert_error(ParameterError, lambda: model.box_params("relu"), "'relu'", "f")
    assert "x:3 -> y:2" in repr(model) and "8 parameters" in repr(model)


def test_model_input_errors() -> None:
    model = transformer()
    assert_error(InputError, lambda: model(tokens(), tokens()), "expected 1 inputs", "got 2")
    assert_error(InputError, lambda: model(torch.randn(4, 6, 10)), "tok:11", "(4, 6, 10)")
    assert_error(InputError, lambda: model(torch.full((2, 3), 11)), "box 'emb'")
    assert_error(BoxError, lambda: Model("Linear('f', x, y)"), "Diagram", "str")  # type: ignore[arg-type]
    assert issubclass(ParameterError, CompinterpError)


def test_gradients_flow_to_every_parameter_but_the_key_bias() -> None:
    model, ids = transformer(), tokens()
    F.cross_entropy(model(ids).flatten(0, 1), tokens(1).flatten()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        if name == "params.attn.bk":
            torch.testing.assert_close(parameter.grad, torch.zeros(8), atol=1e-6, rtol=0)
        else:
            assert parameter.grad.abs().max() > 1e-4, name
