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

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compinterp.errors import BoxError, ParameterError
from compinterp.semantics import Plan, TorchFunctor, init_params
from compinterp.semantics.functor import Rule
from compinterp.syntax import Box, Diagram, Kind, Space, Swap, describe


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


def named_boxes(diagram: Diagram) -> dict[str, Box]:
    """The diagram's boxes by name; a name used twice must denote the same box (shared weights)."""
    boxes: dict[str, Box] = {}
    for _, box in diagram.walk():
        if isinstance(box, Swap):
            continue
        seen = boxes.setdefault(box.name, box)
        if seen != box and (box.kind not in ("Copy", "Add", "Mul", "Elementwise") or seen.kind != box.kind):
            raise BoxError(f"box name '{box.name}' is used for two different boxes: {seen!r} and {box!r}; "
                           "a repeated name means shared parameters, so the boxes must be equal")
    return boxes


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
    """

    def __init__(self, diagram: Diagram, params: Mapping[str, Mapping[str, torch.Tensor]] | None = None, *,
                 modules: Mapping[str, nn.Module] | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32, rules: Mapping[str, Rule] | None = None) -> None:
        super().__init__()
        if not isinstance(diagram, Diagram):
            raise BoxError(f"a Model needs a compinterp Diagram, got {type(diagram).__name__}")
        params, modules = dict(params or {}), dict(modules or {})
        boxes = named_boxes(diagram)
        for name in params:
            if name not in boxes:
                raise ParameterError(f"parameters given for box '{name}', which is not in the diagram")
        generator = torch.Generator().manual_seed(seed)
        store = Store()
        for name, box in boxes.items():
            if box.kind == "Opaque":
                module = modules.get(name, getattr(box, "module", None))
                if not isinstance(module, nn.Module):
                    raise ParameterError(f"Opaque box '{name}' has no module: pass modules={{'{name}': ...}}")
                store.put(name, module)
            elif isinstance(box, Kind) and box.param_shapes():
                given = params.get(name)
                values = _checked(box, given) if given is not None else init_params(box, generator, dtype)
                store.put(name, nn.ParameterDict({k: nn.Parameter(v) for k, v in values.items()}))
            if name in params and (box.kind == "Opaque" or name not in store):
                given = sorted(params[name]) if isinstance(params[name], Mapping) else type(params[name]).__name__
                raise ParameterError(f"parameters {given} given for box '{name}' ({describe(box)}), which takes none"
                                     + (": an Opaque box's module holds its own" if box.kind == "Opaque" else ""))
        self.params = store
        self._diagram = diagram
        self._rules = dict(rules or {})
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
    def plan(self) -> Plan:
        """The compiled semantics."""
        return self._plan

    @property
    def boxes(self) -> dict[str, Box]:
        """The boxes by name."""
        return named_boxes(self._diagram)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the diagram on batched inputs, one tensor per input wire."""
        return self._plan(self.plan_params(), *xs)

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
        from compinterp.files import save
        return save(self, path)

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
        self._plan = TorchFunctor(self._rules)(self._diagram)


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
