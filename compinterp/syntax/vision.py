"""Vision kinds: convolutions (linear maps over patches), per-channel affine maps (batch norm in
eval mode), pooling and flattening, on images laid out with their width as the wire.
"""

from __future__ import annotations

from typing import Any

from compinterp.errors import BoxError
from compinterp.syntax.kind import Kind, check_name, one_wire, positive
from compinterp.syntax.spaces import Space

def _sizes(kind: str, name: str, what: str, value: Any, axes: int, least: int = 1) -> list[int]:
    """``value`` (one integer or one per axis) as a list of ``axes`` integers, each at least ``least``."""
    sizes = [value] * axes if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(sizes, (list, tuple)) or len(sizes) != axes
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in sizes)):
        raise BoxError(f"{kind} box '{name}': {what} must be an integer at least {least}, or {axes} of them, "
                       f"got {value!r:.60}")
    return list(sizes)


def _check_width(kind: str, name: str, dom: Space, cod: Space, width: int) -> None:
    """Raise unless ``cod`` has the output width that ``dom``'s width gives."""
    if width != cod.dim:
        raise BoxError(f"{kind} box '{name}': input width {dom.dim} ({dom}) gives output width {width}, "
                       f"but the output is {cod}")


CONV_PADDING = ("zeros", "reflect", "replicate", "circular")
"""How a :class:`Conv` box pads its input (torch's ``padding_mode``)."""


class Conv(Kind):
    """A convolution over the last ``len(kernel)`` axes of channels-first tensors ``(..., C, *spatial)``,
    as torch's ``Conv1d``/``Conv2d``/``Conv3d``: a linear map applied to every patch, with
    ``W : out_channels x (in_channels / groups) x *kernel`` and ``stride``, ``padding`` (numbers, or
    ``"same"``), ``padding_mode`` (written when not ``"zeros"``), ``dilation`` and ``groups`` as data.
    The wires are the last axis (the width), so the output width is fixed by the input's.

    >>> c = Conv("conv", Space("x", 32), Space("y", 16), in_channels=3, out_channels=8, kernel=[3, 3],
    ...          stride=2, padding=1, bias=True)
    >>> c.param_shapes()
    {'W': (8, 3, 3, 3), 'b': (8,)}
    >>> Conv("conv", Space("x", 32), Space("y", 32), in_channels=3, out_channels=8, kernel=[3, 3])
    Traceback (most recent call last):
    ...
    compinterp.errors.BoxError: Conv box 'conv': input width 32 (x:32) gives output width 30, but the output is y:32
    """

    kind = "Conv"

    def __init__(self, name: str, dom: Space, cod: Space, in_channels: int, out_channels: int,
                 kernel: int | list[int], stride: int | list[int] = 1, padding: int | list[int] | str = 0,
                 dilation: int | list[int] = 1, groups: int = 1, bias: bool = False,
                 padding_mode: str = "zeros") -> None:
        check_name(self.kind, name)
        one_wire(self.kind, name, "input", dom)
        one_wire(self.kind, name, "output", cod)
        axes = 1 if isinstance(kernel, int) else len(kernel) if isinstance(kernel, (list, tuple)) else 0
        if not 1 <= axes <= 3:
            raise BoxError(f"Conv box '{name}': kernel must be an integer or 1 to 3 of them, got {kernel!r:.60}")
        kernel = _sizes(self.kind, name, "kernel", kernel, axes)
        stride = _sizes(self.kind, name, "stride", stride, axes)
        dilation = _sizes(self.kind, name, "dilation", dilation, axes)
        if padding not in ("same", "valid"):
            padding = _sizes(self.kind, name, "padding", padding, axes, least=0)
        elif padding == "valid":
            padding = [0] * axes
        elif stride != [1] * axes:
            raise BoxError(f"Conv box '{name}': padding 'same' needs stride 1, got {stride}")
        for what, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            positive(self.kind, name, what, value)
        if in_channels % groups or out_channels % groups:
            raise BoxError(f"Conv box '{name}': groups ({groups}) must divide in_channels ({in_channels}) "
                           f"and out_channels ({out_channels})")
        if padding_mode not in CONV_PADDING:
            raise BoxError(f"Conv box '{name}': padding_mode must be one of {', '.join(CONV_PADDING)}, "
                           f"got {padding_mode!r:.40}")
        span = dilation[-1] * (kernel[-1] - 1) + 1
        pad = 0 if padding == "same" else padding[-1]
        width = dom.dim if padding == "same" else (dom.dim + 2 * pad - span) // stride[-1] + 1
        _check_width(self.kind, name, dom, cod, width)
        data: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels, "kernel": kernel,
                                "stride": stride, "padding": padding, "dilation": dilation, "groups": groups,
                                "bias": bool(bias)}
        super().__init__(name, dom, cod, data | ({"padding_mode": padding_mode} if padding_mode != "zeros" else {}))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        d = self.data
        shapes = {"W": (d["out_channels"], d["in_channels"] // d["groups"], *d["kernel"])}
        return shapes | ({"b": (d["out_channels"],)} if d["bias"] else {})


class ChannelAffine(Kind):
    """``y = weight[c] * x + bias[c]`` on the channel axis of channels-first tensors ``(..., C, *spatial)``
    (``spatial`` axes after it): batch norm in eval mode, its running statistics folded into the two,
    or a learned per-channel scale (``bias=False``).

    >>> ChannelAffine("bn", Space("x", 8), channels=4, spatial=2).param_shapes()
    {'weight': (4,), 'bias': (4,)}
    """

    kind = "ChannelAffine"

    def __init__(self, name: str, space: Space, channels: int, spatial: int = 0, bias: bool = True) -> None:
        check_name(self.kind, name)
        one_wire(self.kind, name, "space", space)
        if isinstance(spatial, bool) or not isinstance(spatial, int) or not 0 <= spatial <= 3:
            raise BoxError(f"ChannelAffine box '{name}': spatial must be 0 to 3 axes, got {spatial!r:.40}")
        if spatial == 0 and channels != space.dim:
            raise BoxError(f"ChannelAffine box '{name}': with no spatial axes the channels are the wire {space}, "
                           f"got {channels} channels")
        super().__init__(name, space, space, {"channels": positive(self.kind, name, "channels", channels),
                                              "spatial": spatial, "bias": bool(bias)})

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, dom, **data)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.data["channels"]
        return {"weight": (c,)} | ({"bias": (c,)} if self.data["bias"] else {})


POOLS = ("max", "avg", "adaptive_max", "adaptive_avg")
"""What a :class:`Pool` box takes over each window: its maximum or its mean, over fixed windows or
over ``output`` equal parts (adaptive)."""


class Pool(Kind):
    """Max or average pooling over the last ``len(kernel)`` (or ``len(output)``) axes, as torch's
    ``MaxPool2d``, ``AvgPool2d`` (``kernel``, ``stride``, ``padding``, ``ceil_mode``; ``dilation`` for
    max, ``count_include_pad`` for avg) and ``AdaptiveAvgPool2d``, ``AdaptiveMaxPool2d`` (``output``
    sizes). No parameters; the wires are the last axis (the width).

    >>> Pool("pool", Space("x", 8), Space("y", 1), mode="adaptive_avg", output=[1, 1]).data
    {'mode': 'adaptive_avg', 'output': [1, 1]}
    >>> Pool("pool", Space("x", 8), Space("y", 4), mode="max", kernel=3, stride=2, padding=1).data["kernel"]
    [3, 3]
    """

    kind = "Pool"

    def __init__(self, name: str, dom: Space, cod: Space, mode: str, kernel: int | list[int] | None = None,
                 stride: int | list[int] | None = None, padding: int | list[int] = 0,
                 dilation: int | list[int] = 1, ceil_mode: bool = False, count_include_pad: bool = True,
                 output: list[int] | None = None, axes: int = 2) -> None:
        check_name(self.kind, name)
        one_wire(self.kind, name, "input", dom)
        one_wire(self.kind, name, "output", cod)
        if mode not in POOLS:
            raise BoxError(f"Pool box '{name}': mode must be one of {', '.join(POOLS)}, got {mode!r:.40}")
        if mode.startswith("adaptive"):
            if not isinstance(output, (list, tuple)) or not 1 <= len(output) <= 3:
                raise BoxError(f"Pool box '{name}': adaptive pooling needs output sizes (1 to 3), got {output!r:.60}")
            output = _sizes(self.kind, name, "output", output, len(output))
            _check_width(self.kind, name, dom, cod, output[-1])
            super().__init__(name, dom, cod, {"mode": mode, "output": output})
            return
        n = len(kernel) if isinstance(kernel, (list, tuple)) else axes
        kernel = _sizes(self.kind, name, "kernel", kernel, n)
        stride = kernel if stride is None else _sizes(self.kind, name, "stride", stride, n)
        padding = _sizes(self.kind, name, "padding", padding, n, least=0)
        data: dict[str, Any] = {"mode": mode, "kernel": kernel, "stride": stride, "padding": padding,
                                "ceil_mode": bool(ceil_mode)}
        span = kernel[-1]
        if mode == "max":
            data["dilation"] = _sizes(self.kind, name, "dilation", dilation, n)
            span = data["dilation"][-1] * (kernel[-1] - 1) + 1
        else:
            data["count_include_pad"] = bool(count_include_pad)
        if any(2 * p > k for p, k in zip(padding, kernel)):
            raise BoxError(f"Pool box '{name}': padding {padding} must be at most half the kernel {kernel}")
        room = dom.dim + 2 * padding[-1] - span
        width = (room + (stride[-1] - 1 if ceil_mode else 0)) // stride[-1] + 1
        if ceil_mode and (width - 1) * stride[-1] >= dom.dim + padding[-1]:
            width -= 1
        _check_width(self.kind, name, dom, cod, width)
        super().__init__(name, dom, cod, data)


class Flatten(Kind):
    """Merges the last ``len(shape)`` axes of ``(..., *shape)`` into one axis of ``prod(shape)`` (as
    ``torch.flatten(x, 1)`` on a batch of feature maps): from the wire ``shape[-1]`` to the wire
    ``prod(shape)``. No parameters.

    >>> Flatten("flat", Space("pool", 1), Space("flat", 512), shape=[512, 1, 1]).data
    {'shape': [512, 1, 1]}
    """

    kind = "Flatten"

    def __init__(self, name: str, dom: Space, cod: Space, shape: list[int]) -> None:
        check_name(self.kind, name)
        one_wire(self.kind, name, "input", dom)
        one_wire(self.kind, name, "output", cod)
        if not isinstance(shape, (list, tuple)) or not 2 <= len(shape) <= 8:
            raise BoxError(f"Flatten box '{name}': shape must list 2 to 8 axes, got {shape!r:.60}")
        shape = _sizes(self.kind, name, "shape", shape, len(shape))
        size = 1
        for n in shape:
            size *= n
        if shape[-1] != dom.dim or size != cod.dim:
            raise BoxError(f"Flatten box '{name}': axes {shape} go from a wire of {shape[-1]} to one of {size}, "
                           f"but the box is {dom} -> {cod}")
        super().__init__(name, dom, cod, {"shape": shape})
