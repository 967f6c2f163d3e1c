"""``from_torch``'s torch.fx front end around what it cannot trace: untraceable wrappers are descended
into, mapping outputs (dicts, HuggingFace ``ModelOutput``) give one entry, keyword inputs come in by
name, and tracing errors name their real cause."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import compinterp as ci
from compinterp.errors import ImportTraceError, InputError
from compinterp.frontend.hf import recognised_fraction
from compinterp.frontend.trace import cause


def kinds(model: ci.Model) -> list[str]:
    return [box.kind for _, box in model.diagram.walk() if box.kind not in ("Copy", "Swap")]


def max_diff(model: ci.Model, module: nn.Module, *inputs: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(*inputs) - module(*inputs)).abs().max())


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


class SelfAttention(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


class Guarded(nn.Module):
    """Data-dependent control flow around its body: torch.fx cannot trace this forward."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.limit = nn.Parameter(torch.tensor([100.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max() > self.limit:
            x = x / x.abs().max()
        y = self.body(x)
        if torch.isnan(y).any():
            raise ValueError("NaN")
        return y


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.backbone = Guarded(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), SelfAttention(),
                                              nn.LayerNorm(16)))
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.backbone(self.inp(x)))


def test_an_untraceable_wrapper_keeps_its_children_recognised() -> None:
    net = Backbone().eval()
    model = ci.from_torch(net, torch.randn(2, 5, 8))
    assert kinds(model) == ["Linear", "Linear", "Elementwise", "Linear", "Attention", "Norm", "Opaque", "Linear"]
    (glue,) = [box for _, box in model.diagram.walk() if box.kind == "Opaque"]
    assert glue.name == "backbone_glue" and glue.dom.dims == (16, 16)
    assert "not traceable: TraceError" in glue.data["description"]
    assert "its children body are imported apart" in glue.data["description"]
    total = sum(p.numel() for p in net.parameters())
    assert model.num_params() == total
    assert recognised_fraction(model) == pytest.approx(1 - 1 / total)  # only the wrapper's own `limit`
    for x in (torch.randn(3, 7, 8), torch.randn(1, 2, 8)):
        assert max_diff(model, net, x) <= 1e-5
    # on an input where the wrapper calls its child on another value, the import says so instead of guessing
    with pytest.raises(Exception, match=r"backbone\.body was imported as called on its parent's input"):
        model(torch.full((1, 2, 8), 1e4))


def test_a_wrapper_without_children_on_its_input_stays_one_box() -> None:
    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2 if x.sum() > 0 else -x

    net = nn.Sequential(nn.Linear(4, 4), Gate(), nn.Linear(4, 4))
    model = ci.from_torch(net, torch.randn(2, 4))
    assert kinds(model) == ["Linear", "Opaque", "Linear"]
    assert recognised_fraction(model) == 1.0


class Dicty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(11, 16), nn.Linear(16, 11)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask[..., None]
        return {"hidden": h, "logits": self.head(h)}


def test_mapping_outputs_give_logits_or_the_named_entry() -> None:
    net = Dicty()
    ids = torch.randint(0, 11, (2, 6))
    model = ci.from_torch(net, ids)
    assert model.cod == ci.Space("logits", 11) and kinds(model) == ["Embed", "Unembed"]
    assert recognised_fraction(model) == 1.0
    other = torch.randint(0, 11, (3, 6))
    assert torch.equal(model(other), net(other)["logits"])
    hidden = ci.from_torch(net, ids, output="hidden")
    assert hidden.cod == ci.Space("hidden", 16) and torch.equal(hidden(other), net(other)["hidden"])
    with pytest.raises(ImportTraceError, match=r"Dicty returns a mapping without 'loss' \(its entries: hidden, "
                                               r"logits\); pass output= one of them"):
        ci.from_torch(net, ids, output="loss")
    with pytest.raises(ImportTraceError, match=r"output='logits' picks an entry of a mapping, but Linear returns"):
        ci.from_torch(nn.Linear(2, 2), torch.randn(1, 2), output="logits")


def test_model_output_returns() -> None:
    outputs = pytest.importorskip("transformers.modeling_outputs")

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> object:
            h = torch.relu(self.body(x))
            return outputs.SequenceClassifierOutput(logits=self.head(h), hidden_states=(h,))

    net = Classifier()
    model = ci.from_torch(net, torch.randn(4, 6))
    assert kinds(model) == ["Linear", "Elementwise", "Linear"] and model.cod == ci.Space("logits", 3)
    x = torch.randn(5, 6)
    assert torch.equal(model(x), net(x).logits) and recognised_fraction(model) == 1.0


def test_keyword_inputs() -> None:
    net = Dicty()
    ids, mask = torch.randint(0, 11, (2, 6)), (torch.rand(2, 6) > 0.3).float()
    model = ci.from_torch(net, {"attention_mask": mask, "input_ids": ids})  # any order: the forward's is kept
    assert model.dom == ci.Space("input_ids", 11) @ ci.Space("attention_mask", 6)
    assert kinds(model) == ["Embed", "Opaque", "Unembed"]
    ids2, mask2 = torch.randint(0, 11, (3, 6)), (torch.rand(3, 6) > 0.3).float()
    assert torch.equal(model(ids2, mask2), net(input_ids=ids2, attention_mask=mask2)["logits"])
    # the parameters all sit in recognised boxes; the mask's product is the one Opaque box
    assert recognised_fraction(model) == 1.0
    alone = ci.from_torch(net, {"input_ids": ids})
    assert alone.dom == ci.Space("input_ids", 11) and kinds(alone) == ["Embed", "Unembed"]
    with pytest.raises(InputError, match=r"example inputs 'ids' are not arguments of Dicty.forward "
                                         r"\(input_ids, attention_mask\)"):
        ci.from_torch(net, {"ids": ids})
    with pytest.raises(InputError, match=r"give tensors, one per positional argument, or one mapping"):
        ci.from_torch(net, ids, {"attention_mask": mask})


def test_errors_name_the_real_cause() -> None:
    class Loop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([row * 2 for row in x])

    with pytest.raises(ImportTraceError, match=r"cannot trace Loop.forward with torch.fx \(TraceError: Proxy object "
                                               r"cannot be iterated.*\): it needs a traced value's length or elements"):
        ci.from_torch(Loop(), torch.randn(3, 2))

    class Kwargs(nn.Module):
        def forward(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
            return x

    # torch.fx's own message for a **kwargs forward it cannot read (seen with HuggingFace models)
    text = cause(Kwargs(), ValueError("code: co_varnames is too small"))
    assert text.startswith("cannot trace Kwargs.forward with torch.fx (ValueError: code: co_varnames is too small): "
                           "it takes **kwargs")
    assert "ci.from_hf" in text and "data-dependent" not in text


def test_contiguous_stays_where_a_later_view_needs_it() -> None:
    class Windows(nn.Module):
        """Swin's window partition: ``.permute(...).contiguous().view(...)`` inside an Opaque region."""

        def __init__(self) -> None:
            super().__init__()
            self.lin, self.out = nn.Linear(6, 6), nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, c = x.shape
            x = self.lin(x).view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, 4, c)
            return self.out(x)

    net = Windows()
    model = ci.from_torch(net, torch.randn(2, 4, 4, 6))
    assert kinds(model) == ["Linear", "Opaque", "Linear"] and recognised_fraction(model) == 1.0
    assert max_diff(model, net, torch.randn(3, 6, 4, 6)) <= 1e-6
