"""Syntax: spaces (wires with a dimension), boxes, and the string diagrams built from them."""

from compinterp.syntax.attention import KEEP, PATTERNS, Attention
from compinterp.syntax.boxes import (
    ELEMENTWISE,
    KINDS,
    Add,
    Bilinear,
    Copy,
    Elementwise,
    Embed,
    Gated,
    JumpReLU,
    Linear,
    Mul,
    Norm,
    Opaque,
    PosEmbed,
    TopK,
    Unembed,
    box_from_json,
    box_to_json,
    chain,
    residual,
)
from compinterp.syntax.diagram import Box, Diagram, Id, Swap, describe
from compinterp.syntax.kind import Kind
from compinterp.syntax.serialize import diagram_from_json, diagram_to_json
from compinterp.syntax.spaces import Space, Wire
from compinterp.syntax.vision import ChannelAffine, Conv, Flatten, Pool

__all__ = [
    "ELEMENTWISE", "KEEP", "KINDS", "PATTERNS", "Add", "Attention", "Bilinear", "Box", "ChannelAffine", "Conv",
    "Copy", "Diagram", "Elementwise", "Embed", "Flatten", "Gated", "Id", "JumpReLU", "Kind", "Linear", "Mul", "Norm",
    "Opaque", "Pool", "PosEmbed", "Space", "Swap", "TopK", "Unembed",
    "Wire", "box_from_json", "box_to_json", "chain", "describe", "residual",
    "diagram_from_json", "diagram_to_json",
]
