"""``from_torch``: import a torch module as a diagram of our boxes, with its parameters copied.

The module is traced with torch.fx, run once on the example inputs to learn every
value's shape, and its graph read for the box kinds we know; what is left becomes
``Opaque`` boxes, one per connected region. The result is checked against the
module on the example inputs.

>>> import torch
>>> from torch import nn
>>> class MLP(nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.l, self.r, self.down = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 4)
...     def forward(self, x):
...         return x + self.down(self.l(x) * self.r(x))
>>> model = from_torch(MLP(), torch.randn(2, 4))
>>> [box.kind for box in model.diagram.boxes], model.dom
(['Copy', 'Bilinear', 'Add'], Space('x:4'))
"""

from __future__ import annotations

from collections import Counter
import inspect
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import fx, nn

from compinterp.errors import ImportTraceError, InputError
from compinterp.frontend.hf import from_hf, is_hf
from compinterp.frontend.tl import from_transformer_lens, is_transformer_lens
from compinterp.frontend.layout import Application, wire_up
from compinterp.frontend.matching import Unit, base_name, label
from compinterp.frontend.patterns import Recognizer
from compinterp.frontend.regions import Grouper, Region, flatten, summarize
from compinterp.frontend.trace import first_line, trace
from compinterp.model import Model
from compinterp.syntax import Box, Kind, Opaque, Space, Unembed

Piece = Unit | Region


def from_torch(module: nn.Module, *example_inputs: torch.Tensor | Mapping[str, torch.Tensor], check: bool = True,
               leaves: tuple[type[nn.Module], ...] = (), output: str | None = None) -> Model:
    """The :class:`~compinterp.Model` computing what ``module`` computes, as a diagram of our boxes.

    Args:
        module: the network; put it in eval mode first (dropout is dropped only when it does nothing).
        example_inputs: one batched tensor per positional argument of ``module.forward``
            (later arguments keep their defaults), or one mapping of argument names to tensors
            (keyword inputs such as ``{"input_ids": ids, "attention_mask": mask}``; the model's
            inputs are then these, in the forward's order). Their shapes name the wires' dimensions.
        check: compare the imported model with ``module`` on the example inputs and raise
            :class:`~compinterp.errors.ImportTraceError` if they differ.
        leaves: module types not to trace inside: they become ``Opaque`` boxes (torch's own
            layers are never traced inside; those we know are recognised as usual).
        output: for a module returning a mapping (a dict, a HuggingFace ``ModelOutput``), the
            entry to import (default ``logits``); its wire is named after it.

    Recognised: ``nn.Linear``/``F.linear`` (``Linear``; a last one to the output of a model
    with an ``Embed`` is ``Unembed``), ``nn.Embedding`` (``Embed``; the ids' wire has the
    vocabulary's size), ``l(x) * r(x)`` (``Bilinear``) and ``act(l(x)) * r(x)`` (``Gated``),
    each absorbing a ``down`` linear that is the product's only reader, layer and RMS norms
    over the last axis (``Norm``), ``nn.MultiheadAttention`` and ``F.scaled_dot_product_attention``
    between linear projections of one input (timm's) as full or causal self-attention
    (``Attention``), a constant table added to a sequence (``PosEmbed``), convolutions
    (``Conv``), batch norm in eval mode and per-channel scales (``ChannelAffine``), pooling
    (``Pool``), flattening (``Flatten``), pointwise functions (``Elementwise``), sums and
    products of same-shaped tensors (``Add``, ``Mul``); a value read twice goes through
    ``Copy``. Everything else becomes ``Opaque`` boxes wrapping ``torch.fx.GraphModule``
    pieces of the traced graph. A submodule whose own code cannot be traced keeps the
    children it calls on its own inputs recognised, and becomes an ``Opaque`` glue box around
    them (see :mod:`compinterp.frontend.trace`), or, with no such child, one ``Opaque`` box.

    A HuggingFace ``transformers`` model or a TransformerLens ``HookedTransformer`` is not traced: it
    goes to :func:`~compinterp.frontend.hf.from_hf` or
    :func:`~compinterp.frontend.tl.from_transformer_lens`, checked on the first example input (token
    ids) when ``check``.

    Wires: a space's dimension is the value's last axis at the examples' sizes (so a value
    whose last axis is the sequence, such as a mask passed as input, fixes its length).
    Inputs are named after the forward's arguments; the inputs and output of a spider or of
    a box from a space to itself (``Add``, ``Mul``, ``Elementwise``, ``Norm``, ``Attention``)
    are one wire, named after an input it contains, else ``resid`` if it contains a sum, else
    after the box that first makes it (module path with ``_``). Box names are module paths
    (``blocks_0_mlp``), or the torch.fx node's name prefixed with its module's path.

    The model shares no tensor with ``module``: recognised parameters are copied, ``Opaque``
    modules deep-copied, and ``module`` itself is left as it was. Weights tied in ``module``
    stay tied only between calls of one module that give equal boxes. A causal mask is
    recognised by its values at the examples' length. In-place updates (``x.add_(y)``) are
    not followed: the check reports them.
    """
    example = _first(example_inputs) if check else None
    if is_hf(module):
        return from_hf(module, example)
    if is_transformer_lens(module):
        return from_transformer_lens(module, example)
    name = _validate(module, example_inputs, leaves)
    examples = _named(module, example_inputs, name)
    reference = list(flatten(_select(_reference(module, example_inputs, name), output, name)[0]))
    traced = trace(module, examples, tuple(leaves))
    rec = Recognizer(traced)
    units = rec.run()
    result, key = _select(next(n for n in reversed(traced.graph.nodes) if n.op == "output").args[0], output, name)
    outputs = [rec.resolve(o) for o in _outputs(result, rec, name)]
    pieces = Grouper(rec, units, outputs).run()
    inputs = [n for n in traced.graph.nodes if n.op == "placeholder"]
    wires = _wires(rec, inputs, pieces, {outputs[0]: key} if key else {})
    steps, params = _boxes(rec, pieces, wires, outputs)
    model = Model(wire_up([(v, wires[v]) for v in inputs], steps, outputs), params)
    model.train(module.training)
    if check:
        _check(model, list(examples.values()), reference, name)
    return model


def _first(examples: Sequence[Any]) -> Any:
    """The first example input (token ids for a transformer): the first tensor, or a mapping's ``input_ids``."""
    if len(examples) == 1 and isinstance(examples[0], Mapping):
        return examples[0].get("input_ids", next(iter(examples[0].values()), None))
    return examples[0] if examples else None


def _named(module: nn.Module, examples: Sequence[Any], name: str) -> dict[str, torch.Tensor]:
    """The example inputs by the forward's argument names, in the forward's order."""
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)]
    if len(examples) == 1 and isinstance(examples[0], Mapping):
        given = dict(examples[0])
        unknown = [k for k in given if k not in {p.name for p in params}]
        if unknown:
            raise InputError(f"example inputs {', '.join(map(repr, unknown))} are not arguments of {name}.forward "
                             f"({', '.join(p.name for p in params)})")
        return {p.name: given[p.name] for p in params if p.name in given}
    return {p.name: x for p, x in zip(params, examples)}


def _select(result: Any, output: str | None, name: str) -> tuple[Any, str | None]:
    """The entry ``output`` (default ``logits``) of a mapping result, with its key; any other result as it is."""
    if isinstance(result, Mapping):
        key = output or "logits"
        if key not in result:
            raise ImportTraceError(f"{name} returns a mapping without {key!r} (its entries: "
                                   f"{', '.join(map(str, result)) or 'none'}); pass output= one of them")
        return result[key], key
    if output is not None:
        raise ImportTraceError(f"output={output!r} picks an entry of a mapping, but {name} returns "
                               f"{type(result).__name__}")
    return result, None


def _validate(module: Any, examples: Sequence[Any], leaves: Any) -> str:
    """The module's type name, after checking the arguments' types."""
    if not isinstance(module, nn.Module):
        raise ImportTraceError(f"from_torch needs a torch.nn.Module, got {type(module).__name__}")
    name = type(module).__name__
    if any(isinstance(x, Mapping) for x in examples):
        if len(examples) != 1 or not all(isinstance(k, str) for k in examples[0]):
            raise InputError(f"example inputs for {name}: give tensors, one per positional argument, or one "
                             "mapping of argument names to tensors, not both")
        examples = list(examples[0].values())
    for i, x in enumerate(examples):
        if not isinstance(x, torch.Tensor):
            raise InputError(f"example input {i} for {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0:
            raise InputError(f"example input {i} for {name} is a scalar tensor: inputs need at least one axis "
                             "(the last one is the wire's dimension)")
    if not isinstance(leaves, tuple) or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in leaves):
        raise ImportTraceError(f"leaves must be a tuple of nn.Module subclasses, got {leaves!r}")
    return name


def _reference(module: nn.Module, examples: Sequence[Any], name: str) -> Any:
    """The module's output on the examples (positional, or one mapping of keyword inputs); a clear error if it
    does not run on them."""
    keyword = len(examples) == 1 and isinstance(examples[0], Mapping)
    try:
        with torch.no_grad():
            return module(**examples[0]) if keyword else module(*examples)
    except Exception as err:
        shown = examples[0].items() if keyword else enumerate(examples)
        shapes = ", ".join(f"{k}: {tuple(x.shape)}" if keyword else str(tuple(x.shape)) for k, x in shown) or "none"
        raise InputError(f"{name} does not run on the example inputs (shapes {shapes}): {first_line(err)}") from err


def _outputs(result: Any, rec: Recognizer, name: str) -> list[fx.Node]:
    """The graph's output values, which must be tensors with at least one axis."""
    leaves = list(flatten(result))
    for i, leaf in enumerate(leaves):
        value = rec.values.get(leaf) if isinstance(leaf, fx.Node) else leaf
        if not (isinstance(value, torch.Tensor) and value.dim() >= 1):
            shown = f"a {value.dim()}-axis tensor" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ImportTraceError(f"output {i} of {name} is {shown}; from_torch needs tensors with at least "
                                   "one axis, returned alone or in (nested) tuples or lists")
    return leaves


def _wires(rec: Recognizer, inputs: list[fx.Node], pieces: list[Piece],
           named: Mapping[fx.Node, str]) -> dict[fx.Node, Space]:
    """The one-wire space of every value: tied values share a label (see :func:`from_torch`); a value in
    ``named`` (an entry picked from a mapping output) is labelled by its key unless an input is in its class."""
    made: dict[fx.Node, str] = {v: label(str(v.target)) for v in inputs}
    parent: dict[fx.Node, fx.Node] = {v: v for v in inputs}
    sums: set[fx.Node] = set()

    def find(v: fx.Node) -> fx.Node:
        while parent[v] is not v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for piece in pieces:
        if isinstance(piece, Region):
            for v in piece.outs:
                made[v], parent[v] = base_name(v), v
            continue
        made[piece.out] = piece.name
        parent[piece.out] = piece.out
        if piece.kind == "Add":
            sums.add(piece.out)
        if piece.ties:
            for v in piece.ins:
                parent[find(v)] = find(piece.out)
    classes: dict[fx.Node, list[fx.Node]] = {}
    for v in sorted(made, key=rec.traced.order.__getitem__):
        classes.setdefault(find(v), []).append(v)
    labels: dict[fx.Node, str] = {}
    used: set[str] = set()
    for root, members in classes.items():
        given = next((made[v] for v in members if v.op == "placeholder"), None) or next(
            (label(named[v]) for v in members if v in named), None)
        text = given or ("resid" if sums.intersection(members) else made[members[0]])
        unique, k = text, 1
        while unique in used:
            k += 1
            unique = f"{text}_{k}"
        used.add(unique)
        labels[root] = unique
    return {v: Space(labels[find(v)], rec.int_dims.get(v) or int(rec.values[v].shape[-1])) for v in made}


def _boxes(rec: Recognizer, pieces: list[Piece], wires: dict[fx.Node, Space],
           outputs: list[fx.Node]) -> tuple[list[Application], dict[str, dict[str, torch.Tensor]]]:
    """The boxes, with unique names (a module called twice with equal boxes shares its name), and their parameters."""
    taken: dict[str, tuple[object, Box]] = {}
    params: dict[str, dict[str, torch.Tensor]] = {}
    steps: list[Application] = []
    readers = Counter(v for p in pieces for v in p.ins)
    has_embed = any(isinstance(p, Unit) and p.kind == "Embed" for p in pieces)

    def space(values: Sequence[fx.Node]) -> Space:
        return Space(*(wires[v].inside[0] for v in values))

    def claim(base: str, key: object, build: Any, dom: Space, cod: Space) -> Box:
        name, k = base, 1
        while True:
            box = build(name, dom, cod)
            if name not in taken:
                taken[name] = (key, box)
                return box
            if taken[name][0] == key and taken[name][1] == box:
                return box
            k += 1
            name = f"{base}_{k}"

    for piece in pieces:
        if isinstance(piece, Region):
            region, text = piece, summarize(piece, rec)

            def opaque(n: str, dom: Space, cod: Space, region: Region = region, text: str = text) -> Kind:
                return Opaque(n, dom, cod, module=region.module, description=text)

            box = claim(piece.name, piece, opaque, space(piece.ins), space(piece.outs))
            steps.append(Application(box, tuple(piece.ins), tuple(piece.outs)))
            continue
        build = piece.build
        if piece.kind == "Linear" and has_embed and outputs.count(piece.out) == 1 and not readers[piece.out]:
            build = partial(Unembed, bias="b" in piece.params)

        box = claim(piece.name, piece.key, build, space(piece.ins), wires[piece.out])
        if piece.params:
            params.setdefault(box.name, piece.params)
        steps.append(Application(box, tuple(piece.ins), (piece.out,)))
    return steps, params


def _check(model: Model, examples: Sequence[torch.Tensor], reference: list[Any], name: str) -> None:
    """Raise if the model's outputs on the examples differ from the module's."""
    try:
        with torch.no_grad():
            got = model(*examples)
    except Exception as err:
        raise ImportTraceError(f"the diagram imported from {name} fails on the example inputs: {first_line(err)}") from err
    got = got if isinstance(got, tuple) else (got,)
    hint = ("if the module is random (dropout in training mode, sampling), call module.eval() first; if it "
            "updates tensors in place, rewrite that out of place; else pass check=False")
    for i, (g, r) in enumerate(zip(got, reference)):
        if g.shape != r.shape or g.dtype != r.dtype:
            raise ImportTraceError(f"output {i} of the diagram imported from {name} has shape {tuple(g.shape)} "
                                   f"and dtype {g.dtype}, but the module's has {tuple(r.shape)}, {r.dtype}; {hint}")
        if r.is_floating_point():
            tol = torch.finfo(r.dtype).eps ** 0.5
            scale = max(1.0, float(r.nan_to_num(0.0, 0.0, 0.0).abs().max())) if r.numel() else 1.0
            same = torch.allclose(g, r, rtol=tol, atol=tol * scale, equal_nan=True)
        else:
            same = torch.equal(g, r)
        if not same:
            diff = float((g.double() - r.double()).abs().nan_to_num(float("inf")).max())
            raise ImportTraceError(f"the diagram imported from {name} does not reproduce it on the example inputs: "
                                   f"output {i} differs by up to {diff:.3g}; {hint}")
