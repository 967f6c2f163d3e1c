"""``from_torch``: imported models compute what the torch modules compute, with the boxes we expect.

Every comparison runs the torch module itself (the independent hand-written
forward) on fresh inputs, of other batch and sequence sizes than the example.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compinterp as ci
from compinterp.errors import ImportTraceError, InputError


def kinds(model: ci.Model) -> list[str]:
    """The kinds of the model's boxes, in diagram order, without the wiring (copies, swaps)."""
    return [box.kind for _, box in model.diagram.walk() if box.kind not in ("Copy", "Swap")]


def boxes_of(model: ci.Model, kind: str) -> list[ci.Box]:
    """The model's boxes of one kind, in diagram order."""
    return [box for _, box in model.diagram.walk() if box.kind == kind]


def assert_matches(model: ci.Model, module: nn.Module, *inputs: torch.Tensor, atol: float = 1e-5) -> None:
    """The model's outputs equal the module's, output by output, within ``atol``."""
    with torch.no_grad():
        want, got = module(*inputs), model(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert (g - w).abs().max().item() <= atol


# -- the modules ----------------------------------------------------------------------------

class BilinearMLP(nn.Module):
    def __init__(self, d: int, h: int, bias: bool = False) -> None:
        super().__init__()
        self.l, self.r = nn.Linear(d, h, bias=bias), nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.l(x) * self.r(x))


class ResidualBilinear(nn.Module):
    def __init__(self, d: int = 6, h: int = 10, classes: int = 3, layers: int = 2) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(BilinearMLP(d, h, bias=i == 1) for i in range(layers))
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


class SwiGLU(nn.Module):
    def __init__(self, d: int = 8, h: int = 12) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d, eps=1e-6)
        self.gate, self.up, self.down = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False), nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class GeGLU(nn.Module):
    """Factors the other way round, the activation a module, the up projection biased, no down."""

    def __init__(self, d: int = 5, h: int = 7) -> None:
        super().__init__()
        self.act = nn.GELU(approximate="tanh")
        self.gate, self.up = nn.Linear(d, h, bias=False), nn.Linear(d, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x) * self.act(self.gate(x))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, h: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.RMSNorm(d, eps=1e-6)
        self.mlp = BilinearMLP(d, h, bias=True)
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0])
        return x + self.drop(self.mlp(self.ln2(x)))


class Transformer(nn.Module):
    def __init__(self, vocab: int = 11, d: int = 16, heads: int = 2, h: int = 24, ctx: int = 12,
                 layers: int = 2) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads, h) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        i = torch.arange(tokens.shape[1], device=tokens.device)
        mask = i[None, :] > i[:, None]
        x = self.tok(tokens) + self.pos(i)
        for block in self.blocks:
            x = block(x, mask)
        return self.unembed(self.ln_f(x))


class Cumsum(nn.Module):
    def __init__(self, d: int = 5) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.cumsum(self.a(x), dim=-1).flip(-1))


class Gate(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace this."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return -x


class WithGate(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(d, d), Gate(), nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.gate(self.a(x)))


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Each test draws the same weights and inputs whatever runs before it."""
    torch.manual_seed(0)


# -- the four required networks ---------------------------------------------------------------

def test_residual_bilinear_mlp_imports_as_bilinear_add_copy_and_matches() -> None:
    net = ResidualBilinear()
    model = ci.from_torch(net, torch.randn(4, 6))
    assert kinds(model) == ["Bilinear", "Add", "Bilinear", "Add", "Linear"]
    assert boxes_of(model, "Copy") and not boxes_of(model, "Opaque")
    first, second = boxes_of(model, "Bilinear")
    assert first.name == "blocks_0" and first.data == {"hidden": 10, "bias": False}
    assert second.data["bias"] is True
    params = model.box_params("blocks_0")
    block = net.blocks[0]
    assert torch.equal(params["L"], block.l.weight) and torch.equal(params["D"], block.down.weight)
    # missing biases are filled with zeros
    assert torch.equal(model.box_params("blocks_1")["r"], torch.zeros(10))
    assert model.dom == ci.Space("x", 6) and model.cod == ci.Space("head", 3)
    assert_matches(model, net, torch.randn(7, 6))
    assert_matches(model, net, torch.randn(2, 3, 6))


def test_bilinear_without_down_uses_the_identity() -> None:
    class Product(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l, self.r = nn.Linear(3, 5), nn.Linear(3, 5, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.l(x) * self.r(x))

    net = Product()
    model = ci.from_torch(net, torch.randn(2, 3))
    assert kinds(model) == ["Bilinear", "Elementwise"]
    (box,) = boxes_of(model, "Bilinear")
    assert torch.equal(model.box_params(box.name)["D"], torch.eye(5))
    assert_matches(model, net, torch.randn(6, 3))


def test_swiglu_imports_as_gated_silu() -> None:
    net = SwiGLU()
    model = ci.from_torch(net, torch.randn(3, 8))
    assert kinds(model) == ["Norm", "Gated", "Add"]
    (gated,) = boxes_of(model, "Gated")
    assert gated.data == {"hidden": 12, "bias": False, "activation": "silu"}
    assert torch.equal(model.box_params(gated.name)["L"], net.gate.weight)
    assert torch.equal(model.box_params(gated.name)["R"], net.up.weight)
    (norm,) = boxes_of(model, "Norm")
    assert norm.data["norm"] == "rms" and norm.data["eps"] == 1e-6
    assert_matches(model, net, torch.randn(2, 5, 8))


def test_gated_either_order_module_activation_and_bias() -> None:
    net = GeGLU()
    model = ci.from_torch(net, torch.randn(4, 5))
    (gated,) = boxes_of(model, "Gated")
    assert gated.data == {"hidden": 7, "bias": True, "activation": "gelu_tanh"}
    params = model.box_params(gated.name)
    assert torch.equal(params["L"], net.gate.weight) and torch.equal(params["l"], torch.zeros(7))
    assert torch.equal(params["r"], net.up.bias) and torch.equal(params["D"], torch.eye(7))
    assert_matches(model, net, torch.randn(9, 5))


def test_transformer_recognises_attention_norms_and_bilinear_mlps() -> None:
    net = Transformer().eval()
    model = ci.from_torch(net, torch.randint(0, 11, (3, 7)))
    found = kinds(model)
    assert found.count("Attention") == 2 and found.count("Bilinear") == 2
    assert found.count("Norm") == 5 and found.count("Embed") == 2 and found[-1] == "Unembed"
    assert all(box.data["causal"] and box.data["heads"] == 2 for box in boxes_of(model, "Attention"))
    assert model.dom == ci.Space("tokens", 11) and model.cod == ci.Space("unembed", 11)
    # the positional embedding's arange and broadcast sum are Opaque, nothing else is
    assert [box.data["description"] for box in boxes_of(model, "Opaque")] == [
        "getattr, getitem, arange", "add"]
    attn = net.blocks[1].attn
    params = model.box_params("blocks_1_attn")
    assert torch.equal(params["Wk"], attn.in_proj_weight[16:32]) and torch.equal(params["Wo"], attn.out_proj.weight)
    assert torch.equal(params["bv"], attn.in_proj_bias[32:])
    assert_matches(model, net, torch.randint(0, 11, (2, 10)))
    assert_matches(model, net, torch.randint(0, 11, (1, 3)))


def test_unknown_ops_become_one_opaque_box() -> None:
    net = Cumsum()
    model = ci.from_torch(net, torch.randn(2, 5))
    assert kinds(model) == ["Linear", "Opaque", "Linear"]
    (box,) = boxes_of(model, "Opaque")
    assert box.data["description"] == "cumsum, .flip()"
    assert_matches(model, net, torch.randn(3, 4, 5))


# -- attention variants ----------------------------------------------------------------------

class SelfAttention(nn.Module):
    def __init__(self, mask: torch.Tensor | None = None, batch_first: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 4, batch_first=batch_first, bias=bias)
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x, attn_mask=self.mask, need_weights=False)
        return out


def test_attention_masks() -> None:
    x = torch.randn(2, 5, 8)
    causal = torch.full((5, 5), float("-inf")).triu(1)
    for mask, expected in ((None, False), (causal, True), (causal.isinf(), True)):
        net = SelfAttention(mask).eval()
        model = ci.from_torch(net, x)
        (box,) = boxes_of(model, "Attention")
        assert box.data["causal"] is expected
        assert_matches(model, net, torch.randn(3, 5, 8))
    other = SelfAttention(torch.zeros(5, 5).masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))).eval()
    model = ci.from_torch(other, x)
    assert kinds(model) == ["Opaque"]
    assert_matches(model, other, torch.randn(3, 5, 8))


def test_attention_bias_and_what_stays_opaque() -> None:
    net = SelfAttention(bias=False).eval()
    (box,) = boxes_of(ci.from_torch(net, torch.randn(1, 4, 8)), "Attention")
    assert box.data["bias"] is False
    sequence_first = SelfAttention(batch_first=False).eval()
    model = ci.from_torch(sequence_first, torch.randn(4, 2, 8))
    assert kinds(model) == ["Opaque"]
    assert_matches(model, sequence_first, torch.randn(6, 3, 8))

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=3, vdim=3)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.attn(x, y, y, need_weights=False)[0]

    cross = Cross().eval()
    model = ci.from_torch(cross, torch.randn(1, 4, 8), torch.randn(1, 5, 3))
    assert kinds(model) == ["Opaque"]
    assert_matches(model, cross, torch.randn(2, 3, 8), torch.randn(2, 6, 3))


# -- inputs, outputs, elementwise functions, norms --------------------------------------------

def test_multiple_inputs_and_tuple_outputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.g = nn.Linear(3, 4), nn.Linear(2, 4)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
            a, b = self.f(x), self.g(y)
            return a + b, (a * b, x), a

    net = Two()
    model = ci.from_torch(net, torch.randn(5, 3), torch.randn(5, 2))
    assert kinds(model) == ["Linear", "Linear", "Add", "Mul"]
    assert model.dom == ci.Space("x", 3) @ ci.Space("y", 2)
    assert len(model.cod) == 4 and model.cod.wires[2].name == "x:3"
    x, y = torch.randn(2, 3), torch.randn(2, 2)
    got = model(x, y)
    a, b = net.f(x), net.g(y)
    for g, w in zip(got, (a + b, a * b, x, a)):
        assert torch.allclose(g, w, atol=1e-6)


def test_elementwise_functions() -> None:
    class Pointwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mods = nn.ModuleList([nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.Softplus()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for m in self.mods:
                x = m(x)
            x = F.gelu(x, approximate="tanh") ** 2
            x = torch.square(torch.exp(-x))
            x = x * x
            return torch.neg(x.tanh())

    net = Pointwise()
    model = ci.from_torch(net, torch.randn(3, 4))
    fns = [box.data["fn"] for box in boxes_of(model, "Elementwise")]
    assert fns == ["relu", "gelu", "silu", "sigmoid", "tanh", "softplus", "gelu_tanh", "square", "neg", "exp",
                   "square", "square", "tanh", "neg"]
    assert kinds(model) == ["Elementwise"] * len(fns)
    assert_matches(model, net, torch.randn(5, 2, 4))


def test_functional_norms_carry_eps_and_params() -> None:
    class Norms(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(6))
            self.ln = nn.LayerNorm(6, eps=1e-3, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.layer_norm(x, x.shape[-1:], self.w, self.b, eps=1e-4)
            x = F.rms_norm(x, (6,), self.w, eps=2e-5)
            return self.ln(F.rms_norm(x, (6,)))

    net = Norms()
    model = ci.from_torch(net, torch.randn(2, 6))
    norms = [(b.data["norm"], b.data["eps"], b.data["affine"], b.data["bias"]) for b in boxes_of(model, "Norm")]
    assert norms == [("layer", 1e-4, True, True), ("rms", 2e-5, True, False), ("rms", None, False, False),
                     ("layer", 1e-3, True, False)]
    assert kinds(model) == ["Norm"] * 4
    assert_matches(model, net, torch.randn(4, 3, 6))


def test_sequential_identities_and_functional_linear() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Dropout(0.2), nn.Identity(), nn.Linear(4, 2)).eval()
    model = ci.from_torch(net, torch.randn(2, 3))
    assert [(box.kind, box.name) for box in model.diagram.boxes] == [
        ("Linear", "layer_0"), ("Elementwise", "layer_1"), ("Linear", "layer_4")]
    assert model.dom == ci.Space("input", 3)
    assert_matches(model, net, torch.randn(5, 3))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w, self.b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x, self.w, self.b).contiguous()

    net = Functional()
    model = ci.from_torch(net, torch.randn(2, 3))
    (box,) = model.diagram.boxes
    assert box.kind == "Linear" and box.name == "w" and torch.equal(model.box_params("w")["b"], net.b)
    assert_matches(model, net, torch.randn(5, 3))


def test_a_module_called_twice_shares_its_parameters() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.f(x)
            return x + self.f(x)

    net = Twice()
    model = ci.from_torch(net, torch.randn(2, 4))
    assert [b.name for b in boxes_of(model, "Linear")] == ["f", "f"]
    assert list(model.params) == ["f"]
    assert_matches(model, net, torch.randn(3, 4))


# -- Opaque regions ---------------------------------------------------------------------------

def test_opaque_regions_never_close_a_cycle() -> None:
    class Tangle(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = x.flip(-1)
            return torch.cat([self.lin(a), torch.cumsum(a, -1)], dim=-1)

    net = Tangle()
    model = ci.from_torch(net, torch.randn(2, 4))
    assert kinds(model) == ["Opaque", "Linear", "Opaque"]
    first, last = boxes_of(model, "Opaque")
    assert first.data["description"] == ".flip(), cumsum" and len(first.cod) == 2
    assert last.data["description"] == "cat" and model.cod.dims == (8,)
    assert_matches(model, net, torch.randn(3, 4))


def test_tuples_scalars_parameters_and_shapes_stay_inside_regions() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.g = nn.Linear(3, 5), nn.Linear(3, 5)
            self.scale = nn.Parameter(torch.randn(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, b = x.chunk(2, dim=-1)
            y = self.f(a) * self.scale + self.g(b) / x.norm()
            return y.reshape(x.shape[0], -1, 5).sum(1)

    net = Mixed()
    model = ci.from_torch(net, torch.randn(4, 6))
    # the sum of same-shaped tensors is recognised; the chunk's tuple, the scalar norm, the
    # parameter and the shape arithmetic each stay inside one region
    assert kinds(model) == ["Opaque", "Linear", "Opaque", "Linear", "Opaque", "Add", "Opaque"]
    descriptions = [box.data["description"] for box in boxes_of(model, "Opaque")]
    assert descriptions == [".chunk(), getitem", "scale, mul", ".norm(), truediv", "getattr, getitem, .reshape(), .sum()"]
    assert_matches(model, net, torch.randn(7, 6))


def test_untraceable_submodule_is_one_opaque_box() -> None:
    net = WithGate()
    model = ci.from_torch(net, torch.randn(2, 4))
    assert kinds(model) == ["Linear", "Opaque", "Linear"]
    (box,) = boxes_of(model, "Opaque")
    assert box.name == "gate" and "gate (Gate, not traceable: TraceError" in box.data["description"]
    x = torch.randn(3, 4)
    assert_matches(model, net, x)
    assert_matches(model, net, -x)


def test_leaves_are_kept_whole() -> None:
    net = ResidualBilinear()
    model = ci.from_torch(net, torch.randn(2, 6), leaves=(BilinearMLP,))
    assert kinds(model) == ["Opaque", "Add", "Opaque", "Add", "Linear"]
    assert [box.name for box in boxes_of(model, "Opaque")] == ["blocks_0", "blocks_1"]
    assert_matches(model, net, torch.randn(3, 6))


# -- training, dropout, errors ----------------------------------------------------------------

def test_gradients_flow_and_training_leaves_the_module_alone() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = BilinearMLP(4, 6, bias=True)
            self.scale = nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mlp(x) * self.scale

    net = Scaled()
    before = copy.deepcopy(net.state_dict())
    model = ci.from_torch(net, torch.randn(2, 4))
    assert kinds(model) == ["Bilinear", "Opaque"]
    x = torch.randn(8, 4)
    for _ in range(3):  # plain gradient descent (torch.optim would import torch._dynamo: seconds)
        model.zero_grad()
        model(x).pow(2).sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    assert len(list(model.parameters())) == 7  # L R D l r d and the Opaque box's scale
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])
    assert not torch.equal(model.box_params("mlp")["L"], net.mlp.l.weight)


def test_dropout_is_dropped_in_eval_mode_and_checked_in_training() -> None:
    net = Transformer()
    tokens = torch.randint(0, 11, (2, 6))
    with pytest.raises(ImportTraceError, match=r"does not reproduce it .* call module.eval\(\) first"):
        ci.from_torch(net.train(), tokens)
    model = ci.from_torch(net.eval(), tokens)
    assert not model.training and kinds(model).count("Opaque") == 2
    raw = ci.from_torch(net.train(), tokens, check=False)
    assert raw.training and kinds(raw).count("Opaque") == 6


def test_untraceable_root_names_the_module() -> None:
    with pytest.raises(ImportTraceError, match=r"cannot trace Gate\.forward with torch\.fx .*TraceError"):
        ci.from_torch(Gate(), torch.randn(3))


def test_bad_example_inputs() -> None:
    net = ResidualBilinear()
    with pytest.raises(InputError, match=r"ResidualBilinear does not run on the example inputs \(shapes \(2, 5\)\)"):
        ci.from_torch(net, torch.randn(2, 5))
    with pytest.raises(InputError, match=r"ResidualBilinear does not run on the example inputs \(shapes none\)"):
        ci.from_torch(net)
    with pytest.raises(InputError, match=r"example input 0 for ResidualBilinear must be a torch.Tensor, got list"):
        ci.from_torch(net, [1.0] * 6)
    with pytest.raises(InputError, match=r"example input 0 for ResidualBilinear is a scalar tensor"):
        ci.from_torch(net, torch.tensor(1.0))
    with pytest.raises(ImportTraceError, match=r"from_torch needs a torch.nn.Module, got function"):
        ci.from_torch(lambda x: x, torch.randn(3))


def test_star_arguments_are_refused() -> None:
    class Star(nn.Module):
        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return xs[0] + xs[1]

    with pytest.raises(ImportTraceError, match=r"Star.forward takes \*xs: from_torch needs named positional"):
        ci.from_torch(Star(), torch.randn(3), torch.randn(3))


def test_the_module_is_not_modified() -> None:
    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("b", torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.b * 2  # torch.fx stores the constant self.b * 2 on the traced root

    net = Constant()
    names = set(vars(net))
    model = ci.from_torch(net, torch.randn(2, 4))
    assert set(vars(net)) == names
    assert_matches(model, net, torch.randn(3, 4))


def test_scalar_outputs_are_refused() -> None:
    class Loss(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x * x).sum()

    with pytest.raises(ImportTraceError, match=r"output 0 of Loss is a 0-axis tensor"):
        ci.from_torch(Loss(), torch.randn(3))


def test_defaulted_arguments_keep_their_defaults() -> None:
    class Optional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, scale: float = 2.0) -> torch.Tensor:
            y = self.f(x)
            if bias is not None:
                y = y + bias
            return y * scale

    net = Optional()
    model = ci.from_torch(net, torch.randn(2, 3))
    assert model.dom == ci.Space("x", 3) and kinds(model) == ["Linear", "Opaque"]
    assert_matches(model, net, torch.randn(4, 3))
