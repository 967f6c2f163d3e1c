"""Recognising the layers of vision networks: convolutions, batch norm in eval mode and per-channel scales,
pooling, flattening, and learned position tables added to a sequence (ViT).

Feature maps are channels-first ``(N, C, *spatial)``; as everywhere in ``from_torch``, a wire's
dimension is the value's last axis (the width), so these boxes carry their channels as data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from compinterp.frontend.matching import GraphReader, Unit, base_name, is_plain
from compinterp.syntax import ChannelAffine, Conv, Flatten, Kind, Pool, PosEmbed, Space

_CONV_MODULES = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_CONV_FUNCTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOLS = {**{cls: ("max", n) for cls, n in ((nn.MaxPool1d, 1), (nn.MaxPool2d, 2), (nn.MaxPool3d, 3))},
          **{cls: ("avg", n) for cls, n in ((nn.AvgPool1d, 1), (nn.AvgPool2d, 2), (nn.AvgPool3d, 3))},
          **{cls: ("adaptive_max", n) for cls, n in ((nn.AdaptiveMaxPool1d, 1), (nn.AdaptiveMaxPool2d, 2),
                                                     (nn.AdaptiveMaxPool3d, 3))},
          **{cls: ("adaptive_avg", n) for cls, n in ((nn.AdaptiveAvgPool1d, 1), (nn.AdaptiveAvgPool2d, 2),
                                                     (nn.AdaptiveAvgPool3d, 3))}}


def _per_axis(value: int | tuple[int, ...] | list[int], axes: int) -> list[int]:
    """A torch layer's size setting as one integer per axis."""
    return [value] * axes if isinstance(value, int) else list(value)


class VisionPatterns(GraphReader):
    """The matchers for convolutions, per-channel affine maps, pooling, flattening and position tables."""

    def conv_unit(self, node: fx.Node) -> bool:
        """``nn.Conv1d/2d/3d`` or ``F.conv1d/2d/3d`` with constant weights -> Conv."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            axes = next((n for cls, n in _CONV_MODULES.items() if is_plain(m, cls)), 0)
            if not axes:
                return False
            w, b, key = m.weight, m.bias, m
            stride, padding, dilation, groups, mode = m.stride, m.padding, m.dilation, m.groups, m.padding_mode
        else:
            op = self.op(node)
            axes = _CONV_FUNCTIONS.get(node.target, 0) if op is not None and op[0] == "conv" else 0
            if not axes:
                return False
            args = op[1]
            w, b, x = args["weight"], args["bias"], self.resolve(args["input"])
            if not (isinstance(w, fx.Node) and self.const[w]
                    and (b is None or isinstance(b, fx.Node) and self.const[b])):
                return False
            w, b, key = self.values[w], None if b is None else self.values[b], args["weight"]
            stride, padding, dilation, groups, mode = (args["stride"], args["padding"], args["dilation"],
                                                       args["groups"], "zeros")
        if x is None or not self.wire(x) or self.values[x].dim() < axes + 1 or not isinstance(w, torch.Tensor):
            return False
        settings = {"in_channels": w.shape[1] * groups, "out_channels": w.shape[0], "kernel": list(w.shape[2:]),
                    "stride": _per_axis(stride, axes), "dilation": _per_axis(dilation, axes), "groups": groups,
                    "padding": padding if isinstance(padding, str) else _per_axis(padding, axes),
                    "bias": b is not None, "padding_mode": mode}
        params = {"W": w} | ({"b": b} if b is not None else {})

        def build(n: str, dom: Space, cod: Space) -> Kind:
            return Conv(n, dom, cod, **settings)

        return self.add(Unit("Conv", base_name(node), [node], [x], node, build, params, key))

    def batch_norm_unit(self, node: fx.Node) -> bool:
        """``nn.BatchNorm1d/2d/3d`` in eval mode, or ``F.batch_norm`` with ``training=False`` and constant statistics
        (timm's ``BatchNormAct2d``) -> ChannelAffine, the running statistics folded into the scale and shift."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if not any(is_plain(m, cls) for cls in _NORMS) or m.training or m.running_mean is None:
                return False
            mean, var, weight, bias, eps, key = m.running_mean, m.running_var, m.weight, m.bias, m.eps, m
        else:
            op = self.op(node)
            if op is None or op[0] != "batch_norm" or op[1]["training"] is not False:
                return False
            args = op[1]
            stats = [args[k] for k in ("running_mean", "running_var", "weight", "bias")]
            if (not isinstance(args["input"], fx.Node) or isinstance(args["eps"], fx.Node)
                    or any(not (v is None or isinstance(v, fx.Node) and self.const[v]) for v in stats)):
                return False
            mean, var, weight, bias = (None if v is None else self.values[v] for v in stats)
            x, eps, key = self.resolve(args["input"]), args["eps"], node
        if (x is None or mean is None or var is None or not self.wire(x) or self.values[x].dim() < 2
                or mean.shape != (self.values[x].shape[1],)):
            return False
        spatial = self.values[x].dim() - 2
        scale = (var.double() + eps).rsqrt()
        if weight is not None:
            scale = scale * weight.double()
        shift = -mean.double() * scale + (0.0 if bias is None else bias.double())
        dtype = self.values[x].dtype
        params = {"weight": scale.to(dtype), "bias": shift.to(dtype)}
        channels = mean.shape[0]

        def build(n: str, dom: Space, cod: Space) -> Kind:
            return ChannelAffine(n, cod, channels=channels, spatial=spatial)

        return self.add(Unit("ChannelAffine", base_name(node), [node], [x], node, build, params, key))

    def channel_scale_unit(self, node: fx.Node) -> bool:
        """``x * c`` with a constant ``c`` of shape ``(C, 1, ..., 1)`` against a channel axis of ``x`` before its last
        (ConvNeXt's layer scale) -> ChannelAffine without a shift."""
        op = self.op(node)
        if op is None or op[0] != "mul":
            return False
        a, b = self.resolve(op[1]["input"]), self.resolve(op[1]["other"])
        x, c = (a, b) if isinstance(b, fx.Node) and self.const[b] else (b, a)
        if not (isinstance(c, fx.Node) and self.const[c] and self.wire(x)):
            return False
        value, shape = self.values[c], tuple(self.values[x].shape)
        if not isinstance(value, torch.Tensor) or value.dtype != self.values[x].dtype or value.dim() > len(shape):
            return False
        sizes = list(value.shape)
        while sizes and sizes[0] == 1 and len(sizes) > 1:
            sizes.pop(0)
        spatial = len(sizes) - 1
        if spatial < 1 or any(s != 1 for s in sizes[1:]) or sizes[0] != shape[-(spatial + 1)] or sizes[0] == 1:
            return False
        weight, channels = value.reshape(-1), sizes[0]

        def build(n: str, dom: Space, cod: Space) -> Kind:
            return ChannelAffine(n, cod, channels=channels, spatial=spatial, bias=False)

        return self.add(Unit("ChannelAffine", base_name(node), [node], [x], node, build, {"weight": weight}, c))

    def pool_unit(self, node: fx.Node) -> bool:
        """``nn.MaxPool``, ``nn.AvgPool``, ``nn.AdaptiveMaxPool``, ``nn.AdaptiveAvgPool`` (1 to 3 axes) -> Pool."""
        if node.op != "call_module":
            return False
        m, x = self.module(node), self.single_input(node)
        mode, axes = next((found for cls, found in _POOLS.items() if is_plain(m, cls)), ("", 0))
        if not mode or x is None or not self.wire(x) or self.values[x].dim() < axes + 1:
            return False
        if mode.startswith("adaptive"):
            size = _per_axis(m.output_size, axes)
            if None in size or getattr(m, "return_indices", False):
                return False
            settings: dict[str, object] = {"output": size}
        elif getattr(m, "return_indices", False) or getattr(m, "divisor_override", None) is not None:
            return False
        else:
            settings = {"kernel": _per_axis(m.kernel_size, axes), "stride": _per_axis(m.stride or m.kernel_size, axes),
                        "padding": _per_axis(m.padding, axes), "ceil_mode": m.ceil_mode}
            settings |= ({"dilation": _per_axis(m.dilation, axes)} if mode == "max"
                         else {"count_include_pad": m.count_include_pad})

        def build(n: str, dom: Space, cod: Space) -> Kind:
            return Pool(n, dom, cod, mode=mode, **settings)

        return self.add(Unit("Pool", base_name(node), [node], [x], node, build, key=m))

    def flatten_unit(self, node: fx.Node) -> bool:
        """``torch.flatten(x, s)``, ``x.flatten(s)``, ``nn.Flatten`` merging the axes from ``s >= 1`` to the last
        -> Flatten."""
        if node.op == "call_module":
            m, x = self.module(node), self.single_input(node)
            if not is_plain(m, nn.Flatten) or x is None:
                return False
            start, end = m.start_dim, m.end_dim
        else:
            op = self.op(node)
            if op is None or op[0] != "flatten" or not isinstance(op[1]["input"], fx.Node):
                return False
            x, start, end = self.resolve(op[1]["input"]), op[1]["start_dim"], op[1]["end_dim"]
        if not self.wire(x) or not isinstance(start, int) or not isinstance(end, int):
            return False
        rank = self.values[x].dim()
        start, end = start % rank, end % rank
        if start < 1 or end != rank - 1 or rank - start < 2:
            return False
        shape = list(self.values[x].shape[start:])

        def build(n: str, dom: Space, cod: Space) -> Kind:
            return Flatten(n, dom, cod, shape=shape)

        return self.add(Unit("Flatten", base_name(node), [node], [x], node, build, key=node))

    def pos_table_unit(self, node: fx.Node) -> bool:
        """``x + table`` with a constant ``table`` of shape ``(1, T, d)`` or ``(T, d)`` for ``x : (..., T, d)``
        -> PosEmbed."""
        op = self.op(node)
        if op is None or op[0] != "add" or op[1].get("alpha", 1) != 1:
            return False
        a, b = self.resolve(op[1]["input"]), self.resolve(op[1]["other"])
        x, c = (a, b) if isinstance(b, fx.Node) and self.const[b] else (b, a)
        if not (isinstance(c, fx.Node) and self.const[c] and self.wire(x) and self.values[x].dim() >= 2):
            return False
        table, shape = self.values[c], tuple(self.values[x].shape[-2:])
        if (not isinstance(table, torch.Tensor) or table.dtype != self.values[x].dtype
                or tuple(table.shape[-2:]) != shape or any(s != 1 for s in table.shape[:-2])):
            return False
        positions = shape[0]
        return self.add(Unit("PosEmbed", base_name(c), [node], [x], node,
                             lambda n, dom, cod: PosEmbed(n, cod, positions=positions),
                             {"W": table.reshape(shape)}, c))
