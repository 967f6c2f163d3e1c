"""Syntax: spaces (wires with a dimension), boxes, and the string diagrams built from them."""

from compinterp.syntax.boxes import (
    ELEMENTWISE,
    KEEP,
    PATTERNS,
    KINDS,
    Add,
    Attention,
    Bilinear,
    ChannelAffine,
    Conv,
    Copy,
    Elementwise,
    Embed,
    Flatten,
    Gated,
    Kind,
    Linear,
    Mul,
    Norm,
    Opaque,
    Pool,
    PosEmbed,
    TopK,
    Unembed,
    box_from_json,
    box_to_json,
    chain,
    residual,
)
from compinterp.syntax.diagram import Box, Diagram, Id, Swap, describe
from compinterp.syntax.serialize import diagram_from_json, diagram_to_json
from compinterp.syntax.spaces import Space, Wire

__all__ = [
    "ELEMENTWISE", "KEEP", "KINDS", "PATTERNS", "Add", "Attention", "Bilinear", "Box", "ChannelAffine", "Conv",
    "Copy", "Diagram", "Elementwise", "Embed", "Flatten", "Gated", "Id", "Kind", "Linear", "Mul", "Norm", "Opaque",
    "Pool", "PosEmbed", "Space", "Swap", "TopK", "Unembed",
    "Wire", "box_from_json", "box_to_json", "chain", "describe", "residual",
    "diagram_from_json", "diagram_to_json",
]
