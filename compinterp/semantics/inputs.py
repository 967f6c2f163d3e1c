"""What each input wire of a compiled diagram takes: vectors, token ids, positions, a padding mask
or images, and whether the model reads sequences (a sequence axis before the wire's).

A wire read by an ``Embed`` box takes token ids below its dimension (position ids when it is
labelled ``pos...`` beside a token wire); the second wire of a padded ``Attention``
box is its mask. The model reads sequences when it holds an ``Attention`` or ``PosEmbed`` box or
a position wire: then every input has a sequence axis, of the model's context by default
(the position wire's dimension, the rows of a ``PosEmbed`` table, the size of a fixed attention
pattern), else :data:`~compinterp.data.DEFAULT_SEQ`. A vision box (``Conv``, ``Pool``, ``Flatten``,
``ChannelAffine``) makes the vector wires images, whose other axes the wire does not tell.

>>> from compinterp.semantics import TorchFunctor
>>> from compinterp.syntax import Space, Embed, Add, Attention
>>> r = Space("resid", 8)
>>> plan = TorchFunctor()((Embed("embed", Space("tokens", 5), r) @ Embed("pos", Space("positions", 4), r))
...                       >> Add(r) >> Attention("attn", r, heads=2))
>>> [(i.kind, i.seq) for i in inputs(plan)]
[('tokens', 4), ('positions', 4)]
"""

from __future__ import annotations

from compinterp.data import DEFAULT_SEQ, Input
from compinterp.semantics.functor import Plan

SEQUENCE_KINDS = ("Attention", "PosEmbed")
"""Box kinds that mix or index positions: a model holding one reads sequences."""

VISION_KINDS = ("Conv", "Pool", "Flatten", "ChannelAffine")
"""Box kinds that read images (channels-first maps with the wire as their last axis)."""


def inputs(plan: Plan) -> tuple[Input, ...]:
    """What each input wire of ``plan`` takes (see the module's docstring)."""
    n = len(plan.dom)
    embeds: dict[int, str] = {}
    masks: dict[int, str] = {}
    lengths: list[int] = []
    sequence = vision = ""
    for step in plan.steps:
        box, what = step.box, f"{step.box.kind} box '{step.box.name}'"
        if box.kind == "Embed" and step.ins[0] < n:
            embeds.setdefault(step.ins[0], what)
        if box.kind == "Attention" and len(step.ins) > 1 and step.ins[1] < n:
            masks.setdefault(step.ins[1], what)
        if box.kind in SEQUENCE_KINDS:
            sequence = sequence or what
        if box.kind == "PosEmbed":
            lengths.append(box.data["positions"] - box.data.get("offset", 0))
        if box.kind == "Attention":
            lengths += [len(p) for p in box.data.get("patterns", {}).values() if isinstance(p, list)]
        if box.kind in VISION_KINDS:
            vision = vision or what
    positions = {r for r, wire in enumerate(plan.dom.wires) if r in embeds and wire.label.lower().startswith("pos")}
    positions = positions if len(embeds) > len(positions) else set()
    if positions:
        lengths += [plan.dom.wires[r].dim for r in positions]
        sequence = sequence or f"position wire {plan.dom.wires[min(positions)].name}"
    seq = (min(lengths) if lengths else DEFAULT_SEQ) if sequence else None
    out = []
    for r, wire in enumerate(plan.dom.wires):
        kind, box = ("positions" if r in positions else "tokens", embeds[r]) if r in embeds else \
            ("mask", masks[r]) if r in masks else ("images", vision) if vision else ("vectors", "")
        out.append(Input(wire.name, wire.dim, kind, seq, box, sequence))
    return tuple(out)
