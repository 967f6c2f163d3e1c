"""Vision networks through ``from_torch``: convolutions, batch norm, pooling and flattening as boxes, a
torchvision-style ResNet-18 built here, and timm's ViT and ConvNeXt.

torchvision itself does not import beside this CPU torch (the registry's wheel is a CUDA build:
``operator torchvision::nms does not exist``), so the ResNet-18 is written out below, layer for layer
as torchvision's. timm imports torchvision at import time only for its data transforms and
``FrozenBatchNorm2d``, which these models do not use: where torchvision does not import, the timm
tests give it a stand-in (:func:`stand_in_torchvision`) for the moment of ``import timm``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compinterp as ci
from compinterp.frontend.hf import recognised_fraction
from compinterp.semantics.tensor import why_not_polynomial
from compinterp.syntax import ChannelAffine, Conv, Flatten, Pool, Space, box_from_json
from compinterp.errors import BoxError


def counts(model: ci.Model) -> Counter[str]:
    return Counter(box.kind for _, box in model.diagram.walk() if box.kind not in ("Copy", "Swap"))


def max_diff(model: ci.Model, module: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - module(x)).abs().max())


@pytest.fixture(autouse=True)
def seeded() -> None:
    torch.manual_seed(0)


# -- the box kinds -----------------------------------------------------------------------------

def test_vision_boxes_json_shapes_and_reasons() -> None:
    x = Space("x", 8)
    boxes = [Conv("conv", x, Space("y", 4), in_channels=4, out_channels=6, kernel=[3, 3], stride=2, padding=1,
                  groups=2, bias=True),
             Conv("same", x, x, in_channels=2, out_channels=2, kernel=[3], padding="same", padding_mode="reflect"),
             ChannelAffine("bn", x, channels=6, spatial=2),
             ChannelAffine("scale", x, channels=6, spatial=1, bias=False),
             Pool("max", x, Space("y", 4), mode="max", kernel=3, stride=2, padding=1),
             Pool("avg", x, Space("y", 3), mode="avg", kernel=[2, 2], stride=[2, 3], ceil_mode=True),
             Pool("gap", x, Space("y", 1), mode="adaptive_avg", output=[1, 1]),
             Flatten("flat", Space("y", 1), Space("flat", 6), shape=[6, 1, 1])]
    for box in boxes:
        assert box_from_json(box.to_json()) == box
        assert "is not polynomial" in why_not_polynomial(box)
    assert boxes[0].param_shapes() == {"W": (6, 2, 3, 3), "b": (6,)}
    assert boxes[1].data["padding"] == "same" and boxes[1].data["padding_mode"] == "reflect"
    assert boxes[3].param_shapes() == {"weight": (6,)}
    assert why_not_polynomial(boxes[0]).endswith("a convolution mixes channels and positions, axes the tensor "
                                                 "semantics keeps apart (a wire is the last axis)")
    with pytest.raises(BoxError, match=r"Conv box 'c': input width 8 \(x:8\) gives output width 6, but the output "
                                       r"is y:8"):
        Conv("c", x, Space("y", 8), in_channels=1, out_channels=1, kernel=[3, 3])
    with pytest.raises(BoxError, match=r"groups \(4\) must divide in_channels \(6\)"):
        Conv("c", x, x, in_channels=6, out_channels=8, kernel=1, groups=4)
    with pytest.raises(BoxError, match=r"Flatten box 'f': axes \[2, 3\] go from a wire of 3 to one of 6, but the "
                                       r"box is x:8 -> y:6"):
        Flatten("f", x, Space("y", 6), shape=[2, 3])
    # fresh parameters and the kernels' shapes
    model = ci.Model(boxes[0] >> ChannelAffine("bn", Space("y", 4), channels=6, spatial=2), seed=0)
    assert model(torch.randn(5, 4, 8, 8)).shape == (5, 6, 4, 4)
    assert model(torch.randn(2, 5, 4, 8, 8)).shape == (2, 5, 6, 4, 4)  # any leading axes
    assert torch.equal(model.box_params("bn")["weight"], torch.ones(6))


class Layers(nn.Module):
    """Every layer the vision matchers know, with settings off their defaults."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, dilation=1, bias=True, padding_mode="reflect")
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=4, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(2, stride=1, count_include_pad=False, padding=1)
        self.c1d = nn.Conv1d(8, 4, 2)
        self.bn1d = nn.BatchNorm1d(4)
        self.gap = nn.AdaptiveMaxPool1d(2)
        self.gamma = nn.Parameter(torch.randn(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.c1(x)))
        x = self.avg(self.pool(self.c2(x))) * self.gamma.reshape(1, -1, 1, 1)
        y = F.conv2d(x, self.c2.weight, None, 1, 2, 2, 4)
        y = torch.flatten(y, 2)  # (N, 8, H * W)
        y = self.gap(self.bn1d(self.c1d(y)))
        return self.fc(y.flatten(1))


def test_every_vision_layer_imports_exactly() -> None:
    net = Layers()
    for bn in (net.bn, net.bn1d):  # statistics off their defaults, so that folding them is tested
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    net.eval()
    model = ci.from_torch(net, torch.randn(2, 3, 16, 16))
    assert counts(model) == Counter({"Conv": 4, "ChannelAffine": 3, "Pool": 3, "Flatten": 2, "Elementwise": 1,
                                     "Linear": 1})
    # c2's weight, read again by F.conv2d, is copied into both boxes (ties hold only between calls of one module)
    total = sum(p.numel() for p in net.parameters())
    assert recognised_fraction(model) == 1.0 and model.num_params() == total + net.c2.weight.numel()
    boxes = {box.name: box for _, box in model.diagram.walk()}
    assert boxes["c1"].data["padding_mode"] == "reflect" and boxes["c2"].data["padding"] == "same"
    assert boxes["pool"].data == {"mode": "max", "kernel": [3, 3], "stride": [2, 2], "padding": [1, 1],
                                  "ceil_mode": True, "dilation": [1, 1]}
    assert boxes["gap"].data == {"mode": "adaptive_max", "output": [2]}
    assert boxes["bn1d"].data == {"channels": 4, "spatial": 1, "bias": True}
    assert max_diff(model, net, torch.randn(3, 3, 16, 16)) <= 1e-5


# -- a torchvision-style ResNet-18 ------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet18(nn.Module):
    """torchvision's ``resnet18`` layer for layer (``models/resnet.py``: BasicBlock, [2, 2, 2, 2])."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(cin, width, 1 if i == 0 else 2), BasicBlock(width, width)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnet18_is_all_recognised_and_exact() -> None:
    net = ResNet18()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    net.eval()
    model = ci.from_torch(net, torch.randn(2, 3, 32, 32))
    assert counts(model) == Counter({"Conv": 20, "ChannelAffine": 20, "Elementwise": 17, "Add": 8, "Pool": 2,
                                     "Flatten": 1, "Linear": 1})
    assert recognised_fraction(model) == 1.0
    assert model.num_params() == sum(p.numel() for p in net.parameters()) == 11_689_512
    assert model.dom == Space("x", 32) and model.cod == Space("fc", 1000)
    assert max_diff(model, net, torch.randn(3, 3, 32, 32)) <= 1e-4


# -- timm ---------------------------------------------------------------------------------------

class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds every ``torchvision`` module as an empty package whose attributes are placeholder classes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _placeholder  # type: ignore[method-assign]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run."""


class _Placeholder(type):
    """A class whose every attribute is another placeholder class (``InterpolationMode.NEAREST``)."""

    def __getattr__(cls, attr: str) -> type:
        return _placeholder(attr)


def _placeholder(attr: str) -> type:
    if attr.startswith("__"):
        raise AttributeError(attr)
    return _Placeholder(attr, (nn.Module,), {})


@pytest.fixture(scope="module")
def timm() -> Iterator[types.ModuleType]:
    """timm, imported with a stand-in torchvision where the real one does not import (removed afterwards)."""
    try:
        import torchvision  # noqa: F401
        finder = None
    except Exception:
        finder = _StandIn()
        sys.meta_path.insert(0, finder)
    try:
        module = pytest.importorskip("timm")
    finally:
        if finder is not None:
            sys.meta_path.remove(finder)
            for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
                del sys.modules[name]
    yield module


def test_timm_vit_attention_is_an_attention_box(timm: types.ModuleType) -> None:
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            num_classes=10).eval()
    model = ci.from_torch(net, torch.randn(2, 3, 32, 32))
    assert counts(model) == Counter({"Norm": 5, "Linear": 5, "Add": 4, "Opaque": 2, "Attention": 2,
                                     "Elementwise": 2, "Conv": 1, "Flatten": 1, "PosEmbed": 1})
    attention = [box for _, box in model.diagram.walk() if box.kind == "Attention"]
    assert [box.name for box in attention] == ["blocks_0_attn", "blocks_1_attn"]
    assert attention[0].data == {"heads": 3, "head_dim": 64, "causal": False, "bias": True}
    qkv = net.blocks[0].attn.qkv
    params = model.box_params("blocks_0_attn")
    assert torch.equal(params["Wk"], qkv.weight[192:384]) and torch.equal(params["bv"], qkv.bias[384:])
    # only the class token (192 numbers, concatenated in front) stays in an Opaque box
    total = sum(p.numel() for p in net.parameters())
    assert model.num_params() == total and recognised_fraction(model) == pytest.approx(1 - 192 / total)
    assert max_diff(model, net, torch.randn(3, 3, 32, 32)) <= 1e-4


def test_timm_convnext_is_all_recognised(timm: types.ModuleType) -> None:
    net = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    for block in net.modules():
        if getattr(block, "gamma", None) is not None:
            block.gamma.data.normal_()  # layer scales off their 1e-6 start
    model = ci.from_torch(net, torch.randn(1, 3, 32, 32))
    found = counts(model)
    assert found["Conv"] == 40 and found["ChannelAffine"] == 12 and found["Norm"] == 17 and found["Pool"] == 1
    # the Opaque boxes are the permutes around timm's LayerNorm2d, without parameters
    assert all(box.data["description"] == ".permute()" for _, box in model.diagram.walk() if box.kind == "Opaque")
    assert recognised_fraction(model) == 1.0
    assert max_diff(model, net, torch.randn(3, 3, 32, 32)) <= 1e-4


def test_timm_regnet_functional_batch_norm(timm: types.ModuleType) -> None:
    net = timm.create_model("regnetx_002", pretrained=False, num_classes=10).eval()
    for m in net.modules():  # timm's BatchNormAct2d, which calls F.batch_norm
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model = ci.from_torch(net, torch.randn(1, 3, 32, 32))
    assert counts(model) == Counter({"Conv": 44, "ChannelAffine": 44, "Elementwise": 40, "Add": 13, "Pool": 1,
                                     "Flatten": 1, "Linear": 1})
    assert recognised_fraction(model) == 1.0
    assert max_diff(model, net, torch.randn(2, 3, 32, 32)) <= 1e-4


def test_a_vision_model_saves_and_loads(tmp_path: Any) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    model = ci.from_torch(net, torch.randn(2, 3, 8, 8))
    assert "Opaque" not in counts(model)
    loaded = ci.load(model.save(tmp_path / "vision"))
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
