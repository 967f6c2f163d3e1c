"""A model: a diagram (syntax) paired with its parameters, run by the torch functor.

>>> import torch
>>> from compinterp.syntax import Space, Bilinear, Linear, residual
>>> x, y = Space("x", 4), Space("y", 2)
>>> model = Model(residual(Bilinear("mlp", x, x, hidden=8)) >> Linear("out", x, y), seed=0)
>>> model(torch.randn(5, 4)).shape
torch.Size([5, 2])
>>> sorted(model.state_dict())
['params.mlp.D', 'params.mlp.L', 'params.mlp.R', 'params.out.W']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compinterp import files, interventions
from compinterp.errors import BoxError, InputError, ParameterError
from compinterp.semantics import Plan, TorchFunctor, init_params
from compinterp.semantics.functor import Rule
from compinterp.syntax import Box, Diagram, Kind, Space, describe
from compinterp.syntax.diagram import named_boxes

__all__ = ["Model", "Store", "load", "named_boxes"]


class Store(nn.Module):
    """Parameters keyed by box name: a ``ParameterDict`` per box, or an ``Opaque`` box's module.

    Boxes are registered straight into ``_modules`` so that any valid box name
    works, even one that is also a method of ``nn.Module`` (``to``, ``train``).
    """

    def __getitem__(self, name: str) -> nn.Module:
        return self._modules[name]

    def __contains__(self, name: object) -> bool:
        return name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def put(self, name: str, module: nn.Module) -> None:
        """Register the parameters (or module) of box ``name``."""
        self._modules[name] = module


class Model(nn.Module):
    """A diagram with its parameters; an ``nn.Module`` that trains, moves and saves like any other.

    Args:
        diagram: the syntax, a :class:`~compinterp.syntax.Diagram`.
        params: initial values, ``{box name: {role: tensor}}``; missing boxes get
            fresh values from ``seed``.
        modules: the modules of ``Opaque`` boxes by name (else the box's own ``module``).
        seed: seed of the default initialisation.
        dtype: dtype of freshly initialised parameters.
        rules: extra torch semantics by box kind, see :class:`~compinterp.semantics.TorchFunctor`.
        ties: parameters that are one tensor, ``{"box.role": "other_box.role"}`` (an Unembed's ``W``
            tied to an Embed's): the key's box uses the value's parameter, so it is counted, saved
            and trained once; the key's value need not be given.
    """

    def __init__(self, diagram: Diagram, params: Mapping[str, Mapping[str, torch.Tensor]] | None = None, *,
                 modules: Mapping[str, nn.Module] | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, rules: Mapping[str, Rule] | None = None,
                 ties: Mapping[str, str] | None = None) -> None:
        super().__init__()
        if not isinstance(diagram, Diagram):
            raise BoxError(f"a Model needs a compinterp Diagram, got {type(diagram).__name__}")
        params, modules = dict(params or {}), dict(modules or {})
        boxes = named_boxes(diagram)
        for name in params:
            if name not in boxes:
                raise ParameterError(f"parameters given for box '{name}', which is not in the diagram")
        ties = _checked_ties(boxes, ties or {})
        for target, source in ties.items():
            (box, role), (other, other_role) = target.split("."), source.split(".")
            if box in params and role not in params[box] and other in params and other_role in params[other]:
                params[box] = {**params[box], role: params[other][other_role]}
        generator = torch.Generator().manual_seed(seed)
        store = Store()
        for name, box in boxes.items():
            if box.opaque:
                module = modules.get(name, getattr(box, "module", None))
                if not isinstance(module, nn.Module):
                    raise ParameterError(f"Opaque box '{name}' has no module: pass modules={{'{name}': ...}}")
                store.put(name, module)
            elif isinstance(box, Kind) and box.param_shapes():
                given = params.get(name)
                values = _checked(box, given) if given is not None else init_params(box, generator, dtype)
                store.put(name, nn.ParameterDict({k: nn.Parameter(v) for k, v in values.items()}))
            if name in params and (box.opaque or name not in store):
                given = sorted(params[name]) if isinstance(params[name], Mapping) else type(params[name]).__name__
                raise ParameterError(f"parameters {given} given for box '{name}' ({describe(box)}), which takes none"
                                     + (": an Opaque box's module holds its own" if box.opaque else ""))
        for target, source in ties.items():
            (box, role), (other, other_role) = target.split("."), source.split(".")
            store[box][role] = store[other][other_role]
        self.params = store
        self._ties = ties
        self._diagram = diagram
        self._rules = dict(rules or {})
        self._hooks: tuple[dict[int, list[Any]], dict[int, list[Any]]] | None = None
        self._plan = TorchFunctor(self._rules)(diagram)

    @property
    def diagram(self) -> Diagram:
        """The model's syntax (immutable)."""
        return self._diagram

    @property
    def dom(self) -> Space:
        """The input spaces."""
        return self._diagram.dom

    @property
    def cod(self) -> Space:
        """The output spaces."""
        return self._diagram.cod

    @property
    def rules(self) -> dict[str, Rule]:
        """The extra torch semantics by box kind this model was built with."""
        return dict(self._rules)

    @property
    def ties(self) -> dict[str, str]:
        """The tied parameters, ``{"box.role": "other_box.role"}``: each key uses its value's tensor."""
        return dict(self._ties)

    @property
    def plan(self) -> Plan:
        """The compiled semantics."""
        return self._plan

    @property
    def boxes(self) -> dict[str, Box]:
        """The boxes by name."""
        return named_boxes(self._diagram)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the diagram on batched inputs, one tensor per input wire (with the hooks in place)."""
        if not self._hooks:
            return self._plan(self.plan_params(), *xs)
        edits, head_edits = self._hooks
        out, _, _ = interventions.run_edited(self._plan, self.plan_params(), xs, edits=edits, head_edits=head_edits)
        return out[0] if len(out) == 1 else out

    def run_with_cache(self, *xs: torch.Tensor, names: Iterable[str] | None = None,
                       grad: bool = False) -> interventions.Cache:
        """Every wire's value by name (or the ``names``), from one run on ``xs``; see
        :func:`compinterp.interventions.run_with_cache`."""
        return interventions.run_with_cache(self, *xs, names=names, grad=grad)

    @contextmanager
    def hooks(self, functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor | None]]) -> Iterator[Model]:
        """Run the model with ``functions`` applied to the named values (``"resid_2"``, ``"attn1.heads"``):
        each returns a new value, or ``None`` to leave it (a reading hook); gradients flow through.
        The hooks are removed when the block ends, even on an error."""
        if not isinstance(functions, Mapping):
            raise InputError(f"hooks() takes a mapping {{name: function}}, got {type(functions).__name__}")
        wires, heads = interventions.cache.resolve(self._plan, list(functions))
        for name, fn in functions.items():
            if not callable(fn):
                raise InputError(f"the hook on {name!r} is a {type(fn).__name__}, not a function")
        edits = {wires[n]: [_hook(fn)] for n, fn in functions.items() if n in wires}
        head_edits = {heads[n]: [_hook(fn)] for n, fn in functions.items() if n in heads}
        before, self._hooks = self._hooks, (edits, head_edits)
        try:
            yield self
        finally:
            self._hooks = before

    def plan_params(self) -> dict[str, Any]:
        """The parameters as the plan reads them: box name -> its tensors by role, or an Opaque box's module."""
        return {name: m._parameters if type(m) is nn.ParameterDict else m for name, m in self.params._modules.items()}

    def box_params(self, name: str) -> dict[str, torch.Tensor]:
        """The named parameters of box ``name``."""
        if name not in self.params:
            raise ParameterError(f"no box named '{name}' with parameters; boxes with parameters: "
                                 f"{', '.join(self.params) or 'none'}")
        return dict(self.params[name].named_parameters())

    def num_params(self) -> int:
        """How many numbers the parameters hold."""
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path) -> Path:
        """Write the model to directory ``path`` (see :mod:`compinterp.files`)."""
        return files.save(self, path)

    def draw(self, path: str | Path, **kwargs: Any) -> Path:
        """Draw the diagram to a PNG or SVG file (see :mod:`compinterp.drawing`)."""
        from compinterp.drawing import draw
        return draw(self._diagram, path, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.dom} -> {self.cod}, {len(self._diagram.inside)} boxes, {self.num_params()} parameters"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_plan", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_hooks", None)
        self._plan = TorchFunctor(self._rules)(self._diagram)


def load(path: str | os.PathLike[str], *, modules: Mapping[str, nn.Module] | None = None,
         rules: Mapping[str, Rule] | None = None, trust_code: bool = False) -> Model:
    """Read a model written by :meth:`Model.save` (:func:`compinterp.files.save`), checking versions,
    checksums, shapes and parameter counts; this is ``compinterp.load``.

    Opaque boxes' modules come from ``modules`` (``{box name: module}``; only
    their weights are then read from ``weights.safetensors``), else from
    ``opaque.pt``. Reading ``opaque.pt`` unpickles it (``torch.load`` with
    ``weights_only=False``), which executes code stored in the file, so it is
    refused unless ``trust_code=True``: pass that only for directories you
    trust (see ``docs/security.md``). ``rules`` are extra torch semantics, as
    for :class:`Model`.

    >>> import tempfile
    >>> from compinterp.syntax import Space, Linear
    >>> model = Model(Linear("f", Space("x", 3), Space("y", 2)))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     back = load(model.save(f"{tmp}/model"))
    ...     print(back.diagram == model.diagram, torch.equal(back.box_params("f")["W"], model.box_params("f")["W"]))
    True True
    """
    parts = files.read_model(path, modules=modules, trust_code=trust_code)
    return Model(parts.diagram, parts.params, modules=parts.modules, rules=rules, ties=parts.ties)


def _checked_ties(boxes: Mapping[str, Box], ties: Mapping[str, str]) -> dict[str, str]:
    """``ties`` checked: each side names a parameter ``box.role`` of the diagram, both of one shape,
    and no tied parameter is itself tied to another."""
    if not isinstance(ties, Mapping):
        raise ParameterError(f"ties must map 'box.role' to 'box.role', got {type(ties).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    for key in (*ties, *ties.values()):
        box, _, role = key.partition(".") if isinstance(key, str) else ("", "", "")
        found = boxes.get(box)
        if not isinstance(found, Kind) or found.opaque or role not in found.param_shapes():
            raise ParameterError(f"tie {key!r} names no parameter of the diagram: write 'box.role', "
                                 f"a box with parameters and one of its roles")
        shapes[key] = found.param_shapes()[role]
    for target, source in ties.items():
        if source in ties or target == source:
            raise ParameterError(f"tie {target!r} -> {source!r}: tie every parameter to one that is not tied itself")
        if shapes[target] != shapes[source]:
            raise ParameterError(f"tie {target!r} -> {source!r}: shapes {shapes[target]} and {shapes[source]} differ")
    return dict(ties)


def _checked(box: Kind, given: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Given parameters for ``box``, checked against its shapes and copied."""
    if not isinstance(given, Mapping):
        raise ParameterError(f"parameters of box '{box.name}' must be a mapping {{role: tensor}}, "
                             f"got {type(given).__name__}")
    shapes = box.param_shapes()
    missing, extra = set(shapes) - set(given), set(given) - set(shapes)
    if missing or extra:
        raise ParameterError(f"box '{box.name}' ({describe(box)}) needs parameters {sorted(shapes)}; "
                             + (f"missing {sorted(missing)}" if missing else "")
                             + ("; " if missing and extra else "")
                             + (f"unexpected {sorted(extra)}" if extra else ""))
    out = {}
    for role, shape in shapes.items():
        value = given[role]
        if not isinstance(value, torch.Tensor):
            raise ParameterError(f"box '{box.name}' parameter '{role}' must be a tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ParameterError(f"box '{box.name}' parameter '{role}' must be floating point, got {value.dtype}")
        if tuple(value.shape) != shape:
            raise ParameterError(f"box '{box.name}' ({describe(box)}) parameter '{role}' has shape "
                                 f"{tuple(value.shape)}; expected {shape}")
        out[role] = value.detach().clone()
    return out


def _hook(fn: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A hook as an edit: its result, or the value itself where it returns ``None``."""
    def edit(value: torch.Tensor) -> torch.Tensor:
        out = fn(value)
        return value if out is None else out
    return edit
