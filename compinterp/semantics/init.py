"""Default initial values for each box kind's parameters (as torch's own layers do)."""

from __future__ import annotations

import math

import torch

from compinterp.syntax import Attention, ChannelAffine, Conv, Embed, JumpReLU, Kind, Norm, PosEmbed


def init_params(box: Kind, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Fresh parameters for ``box``: uniform in ``±1/sqrt(fan_in)`` for maps, N(0, 1) for
    embeddings (of tokens and of positions), ones and zeros for norms and per-channel affine maps,
    zeros for attention biases (ones for its query and key norms) and for JumpReLU thresholds (a ReLU to
    start); a convolution's fan-in is a patch."""
    out: dict[str, torch.Tensor] = {}
    for role, shape in box.param_shapes().items():
        if isinstance(box, (Embed, PosEmbed)):
            out[role] = torch.randn(shape, generator=generator, dtype=dtype)
        elif isinstance(box, Norm):
            out[role] = torch.full(shape, 1.0 - box.data.get("offset", 0.0) if role == "weight" else 0.0, dtype=dtype)
        elif isinstance(box, JumpReLU):
            out[role] = torch.zeros(shape, dtype=dtype)
        elif isinstance(box, ChannelAffine):
            out[role] = (torch.ones if role == "weight" else torch.zeros)(shape, dtype=dtype)
        elif isinstance(box, Attention) and len(shape) == 1:
            out[role] = (torch.ones if role in ("q_norm", "k_norm") else torch.zeros)(shape, dtype=dtype)
        else:
            fan_in = _fan_in(box, role, shape)
            bound = 1.0 / math.sqrt(fan_in)
            out[role] = (torch.rand(shape, generator=generator, dtype=dtype) * 2 - 1) * bound
    return out


def _fan_in(box: Kind, role: str, shape: tuple[int, ...]) -> int:
    """The number of inputs feeding the units a parameter belongs to."""
    if isinstance(box, Conv):
        return math.prod(box.param_shapes()["W"][1:])
    if len(shape) == 2:
        return shape[1]
    if box.gated:
        return box.data["hidden"] if role == "d" else box.dom.dim
    return box.dom.dim
