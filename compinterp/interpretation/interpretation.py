"""Interpretations: a syntactic functor ``S`` on boxes and wires, and semantic maps ``sigma``.

An interpretation of a model sends each box ``f : A -> B`` of its diagram to a
diagram ``S(f) : S(A) -> S(B)`` over the explanation's vocabulary, and each wire
``A`` to a map ``sigma_A`` from the model's activations to the explanation's. It
is faithful when every square commutes, ``[[S(f)]]_E . sigma_A = sigma_B . [[f]]_M``
(see :func:`compinterp.check`).

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear, Bilinear, residual
>>> from compinterp.interpretation import maps
>>> x, y = Space("x", 4), Space("y", 2)
>>> model = Model(residual(Bilinear("mlp", x, x, hidden=8)) >> Linear("out", x, y), seed=0)
>>> small = Bilinear("mlp_k2", x, x, hidden=2)
>>> params = {"mlp_k2": {k: v[:2] if k != "D" else v[:, :2] for k, v in model.box_params("mlp").items()}}
>>> interp = Interpretation(model, boxes={"mlp": small}, params=params)
>>> [box.name for box in interp.explanation.diagram.boxes]
['copy', 'mlp_k2', 'add', 'out']
>>> Interpretation(model, wires={"x": maps.linear(torch.eye(3, 4))})
Traceback (most recent call last):
...
compinterp.errors.BoxError: box 'mlp' (x:4 -> x:4) is left unmapped and its wires change (x:3 -> x:3): it cannot stand for itself, give boxes={'mlp': <a diagram x:3 -> x:3>}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from discopy.monoidal import Layer
from torch import nn

from compinterp.errors import BoxError, CompositionError, FormatError, ParameterError
from compinterp.interpretation import files
from compinterp.interpretation.maps import Identity, Map
from compinterp.model import Model, named_boxes
from compinterp.semantics import Plan, TorchFunctor
from compinterp.semantics.functor import Rule
from compinterp.syntax import Box, Copy, Diagram, Kind, Space, Swap, Wire, describe

WireSpec = Map | tuple[Space | Wire | str, Map]
"""How a wire is interpreted: a map (the explanation wire keeps the label), or ``(image wire, map)``."""


class Interpretation(nn.Module):
    """An explanation of ``model``: box images ``S(f)`` and wire maps ``sigma``, type-checked.

    Args:
        model: the model explained.
        boxes: ``{box name: S(f)}``, a diagram from ``S(dom f)`` to ``S(cod f)``. A box
            left out stands for itself when its wires keep their spaces; a spider
            (add, mul, elementwise) left out goes to the same spider on the image
            wires, and so do copies and swaps always (they take no image).
        wires: ``{wire: map or (image wire, map)}``, a wire named in full
            (``"resid:64"``) or by label (``"resid"``, every dimension). Wires left
            out keep their space, with the identity map.
        params: parameters of the explanation's boxes, ``{box name: {role: tensor}}``;
            a box of the model used in an image takes the model's parameters.
        modules: modules of the explanation's ``Opaque`` boxes.
        rules: torch semantics of user-defined box kinds, ``{kind: rule}`` (see
            :class:`~compinterp.semantics.TorchFunctor`).

    The explanation itself is a :class:`~compinterp.Model`, ``self.explanation``,
    whose diagram is ``S`` applied to the model's diagram.
    """

    def __init__(self, model: Model, boxes: Mapping[str, Diagram] | None = None,
                 wires: Mapping[str, WireSpec] | None = None, *,
                 params: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                 modules: Mapping[str, nn.Module] | None = None, rules: Mapping[str, Rule] | None = None) -> None:
        super().__init__()
        if not isinstance(model, Model):
            raise BoxError(f"an Interpretation explains a compinterp Model, got {type(model).__name__}")
        self.source = model.diagram
        self.rules = dict(rules or {})
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self._spaces, self.maps = _interpret_wires(self.source, dict(wires or {}), dtype)
        self.images = _check_images(self.source, dict(boxes or {}), self)
        self._image_of: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Diagram] = {}
        for _, box in self.source.walk():
            if _key(box) not in self._image_of:
                self._image_of[_key(box)] = self._image(box)
        diagram = self._rewrite(self.source)
        given, mods = _explanation_params(model, diagram, params, modules)
        self.explanation = Model(diagram, given, modules=mods, rules=self.rules)
        functor = TorchFunctor(self.rules)
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Plan] = {
            key: functor(image) for key, image in self._image_of.items()}

    def space(self, space: Space) -> Space:
        """``S`` on objects: the explanation's space for a space of the model.

        >>> from compinterp.model import Model
        >>> from compinterp.syntax import Linear
        >>> x = Space("x", 3)
        >>> Interpretation(Model(Linear("f", x, x))).space(x @ x)
        Space('x:3', 'x:3')
        """
        try:
            return Space(*(self._spaces[w.name] for w in space.wires))
        except KeyError as err:
            raise BoxError(f"wire {err.args[0]} is not a wire of the model this interpretation explains") from None

    def map_of(self, wire: Wire) -> Map:
        """``sigma`` on one wire of the model."""
        if wire.name not in self.maps:
            raise BoxError(f"wire {wire.name} is not a wire of the model this interpretation explains")
        return self.maps[wire.name]

    def image(self, box: Box) -> Diagram:
        """``S(f)``: the explanation's diagram for a box of the model."""
        key = _key(box)
        if key not in self._image_of:
            raise BoxError(f"box {describe(box)} is not a box of the model this interpretation explains")
        return self._image_of[key]

    def plan(self, box: Box) -> Plan:
        """The compiled semantics ``[[S(f)]]_E``, run with ``self.explanation.params``."""
        self.image(box)
        return self._plans[_key(box)]

    @property
    def diagram(self) -> Diagram:
        """``S`` applied to the model's diagram: the explanation's syntax."""
        return self.explanation.diagram

    def save(self, path: str | Path) -> Path:
        """Write the interpretation to directory ``path`` (see :mod:`compinterp.interpretation.files`)."""
        return files.save(self, path)

    @classmethod
    def load(cls, path: str | Path, model: Model, **kwargs: Any) -> Interpretation:
        """Read an interpretation of ``model`` from directory ``path`` (see
        :func:`compinterp.interpretation.interpretation.load` for ``functions``, ``modules``, ``rules``,
        ``trust_code``)."""
        return load(path, model, **kwargs)

    def extra_repr(self) -> str:
        mapped = sum(not isinstance(m, Identity) for m in self.maps.values())
        given = len(self.images)
        return f"{self.source.dom} -> {self.source.cod}: {given} box image{'s' * (given != 1)} given, " \
               f"{mapped} wire{'s' * (mapped != 1)} mapped"

    def _image(self, box: Box) -> Diagram:
        """The image of one box: the one given, a spider or pointwise map (any polymorphic box) on the
        image wires, or the box itself."""
        if isinstance(box, Swap):
            return Swap(self.space(box.left), self.space(box.right))
        if box.name in self.images:
            return self.images[box.name]
        if box.polymorphic:
            return type(box).from_json(box.name, self.space(box.dom), self.space(box.cod), dict(box.data))
        dom, cod = self.space(box.dom), self.space(box.cod)
        if dom != box.dom or cod != box.cod:
            raise BoxError(f"box '{box.name}' ({box.dom} -> {box.cod}) is left unmapped and its wires change "
                           f"({dom} -> {cod}): it cannot stand for itself, "
                           f"give boxes={{'{box.name}': <a diagram {dom} -> {cod}>}}")
        return box

    def _rewrite(self, diagram: Diagram) -> Diagram:
        """``S`` on a diagram: layer ``left @ f @ right`` becomes the layers of ``S(left) @ S(f) @ S(right)``,
        built directly (no ``@`` or ``>>`` per layer)."""
        spaces: dict[tuple[Wire, ...], Space] = {}

        def space(wires: tuple[Wire, ...]) -> Space:
            if wires not in spaces:
                spaces[wires] = Space(*wires)
            return spaces[wires]

        inside = []
        for layer in diagram.inside:
            left, box, right = layer
            s_left = tuple(self._spaces[w.name] for w in left.wires)
            s_right = tuple(self._spaces[w.name] for w in right.wires)
            for inner in self._image_of[_key(box)].inside:
                l, b, r = inner
                inside.append(Layer(space(s_left + l.wires), b, space(r.wires + s_right)))
        return Diagram(tuple(inside), self.space(diagram.dom), self.space(diagram.cod), _scan=False)


def _key(box: Box) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A box's identity for look-ups: name and spaces (hashing a discopy box is slow)."""
    return box.name, tuple(w.name for w in box.dom.wires), tuple(w.name for w in box.cod.wires)


def _model_wires(diagram: Diagram) -> dict[str, Wire]:
    """Every wire the diagram uses, by name, in order of first appearance."""
    wires = {w.name: w for w in diagram.dom.wires}
    for _, box in diagram.walk():
        for w in (*box.dom.wires, *box.cod.wires):
            wires.setdefault(w.name, w)
    return wires


def load(path: str | os.PathLike[str], model: Model, *,
         functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
         modules: Mapping[str, nn.Module] | None = None, rules: Mapping[str, Rule] | None = None,
         trust_code: bool = False) -> Interpretation:
    """Read an interpretation of ``model`` written by :meth:`Interpretation.save`
    (:func:`compinterp.interpretation.files.save`).

    ``functions`` gives the callables of function maps by wire name; ``modules`` are the
    explanation model's Opaque modules, ``trust_code`` whether its ``opaque.pt`` may be
    unpickled, and ``rules`` its extra torch semantics, as for :func:`compinterp.load`.
    """
    parts = files.read_interpretation(path, model.diagram, functions=functions, modules=modules,
                                      trust_code=trust_code)
    explanation = parts.explanation
    interp = Interpretation(model, boxes=parts.images, wires=parts.wires, params=explanation.params,
                            modules=explanation.modules, rules=rules)
    if interp.diagram != explanation.diagram:
        raise FormatError(f"{Path(path)}: the saved explanation model does not match the interpretation's box images")
    return interp


def _interpret_wires(diagram: Diagram, specs: dict[str, WireSpec],
                     dtype: torch.dtype) -> tuple[dict[str, Wire], nn.ModuleDict]:
    """``S`` and ``sigma`` on every wire of the diagram, from the user's specs (by name, then label)."""
    wires = _model_wires(diagram)
    labels = {w.label for w in wires.values()}
    for key in specs:
        if key not in wires and key not in labels:
            raise BoxError(f"wires={{{key!r}: ...}}: the model has no wire {key!r}; "
                           f"its wires are {', '.join(wires)}")
    spaces, maps = {}, nn.ModuleDict()
    for name, wire in wires.items():
        spec = specs.get(name, specs.get(wire.label, Identity()))
        target, sigma = spec if isinstance(spec, tuple) and len(spec) == 2 else (None, spec)
        if not isinstance(sigma, Map):
            raise BoxError(f"wire {name} is interpreted by {sigma!r}: give a map from compinterp.maps "
                           "(identity, linear, encoder_decoder, function), or (image wire, map)")
        out = sigma.out_dim(wire.dim, name, dtype)
        image = _image_wire(name, target) if target is not None else Wire(wire.label, out)
        if image.dim != out:
            raise CompositionError(f"the {sigma.describe()} on wire {name} gives vectors of dimension {out}, "
                                   f"but its image wire {image.name} has dimension {image.dim}")
        spaces[name] = image
        maps[name] = sigma
    return spaces, maps


def _image_wire(name: str, target: Space | Wire | str) -> Wire:
    """The one explanation wire a model wire is sent to."""
    if isinstance(target, Wire):
        return target
    space = target if isinstance(target, Space) else Space(target) if isinstance(target, str) else None
    if space is None or len(space) != 1:
        raise BoxError(f"wire {name} must be sent to one wire (a one-wire Space or 'label:dim'), got {target!r}")
    return space.wires[0]


def _check_images(diagram: Diagram, images: dict[str, Diagram], interp: Interpretation) -> dict[str, Diagram]:
    """The user's box images, each checked to go ``S(dom f) -> S(cod f)`` for every box of that name."""
    boxes = named_boxes(diagram)
    for name, image in images.items():
        if name not in boxes:
            raise BoxError(f"boxes={{{name!r}: ...}}: the model has no box named {name!r}; "
                           f"its boxes are {', '.join(boxes)}")
        if isinstance(boxes[name], Copy):
            raise BoxError(f"box '{name}' is a copy spider: it is always sent to the copy of its image wire, "
                           "so it takes no image")
        if not isinstance(image, Diagram):
            raise BoxError(f"the image of box '{name}' must be a compinterp Diagram, got {type(image).__name__}")
    for _, box in diagram.walk():
        image = images.get(box.name)
        if image is None or isinstance(box, Swap):
            continue
        dom, cod = interp.space(box.dom), interp.space(box.cod)
        if image.dom != dom or image.cod != cod:
            raise CompositionError(f"the image of box '{box.name}' ({box.dom} -> {box.cod}) must go "
                                   f"{dom} -> {cod}, but the image given is {describe(image)}")
    return images


def _explanation_params(model: Model, diagram: Diagram, params: Mapping[str, Any] | None,
                        modules: Mapping[str, nn.Module] | None) -> tuple[dict[str, Any], dict[str, nn.Module]]:
    """Parameters and modules for every box of the explanation: given ones, else the model's own box."""
    given, mods = dict(params or {}), dict(modules or {})
    own = named_boxes(model.diagram)
    for name, box in named_boxes(diagram).items():
        same = name in own and own[name] == box
        if box.opaque:
            if name not in mods and getattr(box, "module", None) is None:
                if not same:
                    raise ParameterError(f"explanation box {describe(box)} is Opaque and has no module: "
                                         f"pass modules={{'{name}': ...}}")
                mods[name] = model.params[name]
        elif name not in given and isinstance(box, Kind) and box.param_shapes():
            if not same:
                raise ParameterError(f"explanation box {describe(box)} has no parameters: pass "
                                     f"params={{'{name}': {{...}}}} with shapes {box.param_shapes()}")
            given[name] = model.box_params(name)
    return given, mods
