"""The semantic functor ``[[-]] : Syntax -> Torch``, compiled once into a flat plan.

Following torch.fx's split between a graph and the interpreters that walk it,
:class:`TorchFunctor` walks a diagram's layers once and emits a :class:`Plan`:
a straight-line program over numbered registers. Swaps, copies, discards and
identities cost nothing at run time (they only rename registers); each other
box is one kernel call.

>>> import torch
>>> from compinterp.syntax import Space, Linear, Copy, Add, Id
>>> x = Space("x", 3)
>>> f = Linear("f", x, x)
>>> plan = TorchFunctor()(Copy(x) >> f @ Id(x) >> Add(x))
>>> params = {"f": {"W": 2 * torch.eye(3)}}
>>> plan(params, torch.ones(3))
tensor([3., 3., 3.])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from compinterp.errors import BoxError, InputError
from compinterp.semantics import kernels
from compinterp.syntax import Box, Diagram, Space, Swap, describe

Rule = Callable[[Box], kernels.Kernel]


@dataclass(frozen=True)
class Step:
    """One kernel call: read registers ``ins``, write ``outs``, then forget ``free``."""

    box: Box
    fn: kernels.Kernel
    key: str | None
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    free: tuple[int, ...]


class Plan:
    """A compiled diagram: ``plan(params, *inputs)`` runs it on batched tensors.

    ``params`` maps a box name to that box's parameters (a mapping of tensors or a
    module). The plan returns one tensor for a one-wire codomain, else a tuple.
    """

    def __init__(self, dom: Space, cod: Space, steps: tuple[Step, ...], outputs: tuple[int, ...],
                 registers: int) -> None:
        self.dom, self.cod, self.steps, self.outputs, self.registers = dom, cod, steps, outputs, registers
        self._dims = tuple(w.dim for w in dom.wires)

    def __repr__(self) -> str:
        return f"<Plan {self.dom} -> {self.cod}: {len(self.steps)} kernel calls>"

    def __call__(self, params: Mapping[str, Any], *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(xs) != len(self._dims):
            raise InputError(f"expected {len(self._dims)} inputs ({self.dom}), got {len(xs)}")
        for i, (x, dim) in enumerate(zip(xs, self._dims)):
            if not isinstance(x, torch.Tensor):
                raise InputError(f"input {i} ({self.dom.wires[i].name}) must be a torch.Tensor, got {type(x).__name__}")
            if x.is_floating_point() and (x.dim() == 0 or x.shape[-1] != dim):
                raise InputError(f"input {i} is wire {self.dom.wires[i].name} but has shape {tuple(x.shape)}: "
                                 f"its last dimension must be {dim}")
        regs: list[Any] = [*xs, *([None] * (self.registers - len(xs)))]
        step = None
        try:
            for step in self.steps:
                outs = step.fn(params[step.key] if step.key is not None else None, *[regs[i] for i in step.ins])
                for r, y in zip(step.outs, outs):
                    regs[r] = y
                for r in step.free:
                    regs[r] = None
        except KeyError as err:
            if step is not None and step.key is not None and step.key not in params:
                raise InputError(f"no parameters for box '{step.key}' ({describe(step.box)})") from None
            raise err
        except (RuntimeError, IndexError, ValueError, TypeError) as err:
            if step is None:
                raise
            shapes = ", ".join(str(tuple(regs[i].shape)) if isinstance(regs[i], torch.Tensor) else "?"
                               for i in step.ins)
            raise InputError(f"box '{step.box.name}' ({step.box.kind} {step.box.dom} -> {step.box.cod}) "
                             f"failed on inputs of shape {shapes}: {err}") from err
        out = tuple(regs[r] for r in self.outputs)
        return out[0] if len(out) == 1 else out

    def trace(self, params: Mapping[str, Any], *xs: torch.Tensor) -> Iterator[tuple[Step, tuple[Any, ...]]]:
        """Run the plan one step at a time, yielding each step with its inputs just before it runs
        (stop iterating to run only part of it). No checks: for probes, not for users.

        >>> from compinterp.syntax import Space, Linear
        >>> x = Space("x", 2)
        >>> plan = TorchFunctor()(Linear("f", x, x) >> Linear("g", x, x))
        >>> params = {"f": {"W": 2 * torch.eye(2)}, "g": {"W": torch.eye(2)}}
        >>> [(step.box.name, ins[0].tolist()) for step, ins in plan.trace(params, torch.ones(2))]
        [('f', [1.0, 1.0]), ('g', [2.0, 2.0])]
        """
        regs: list[Any] = [*xs, *([None] * (self.registers - len(xs)))]
        for step in self.steps:
            ins = tuple(regs[i] for i in step.ins)
            yield step, ins
            for r, y in zip(step.outs, step.fn(params[step.key] if step.key is not None else None, *ins)):
                regs[r] = y
            for r in step.free:
                regs[r] = None


class TorchFunctor:
    """Sends a diagram to a :class:`Plan`; ``rules`` adds or overrides kernels by box kind."""

    def __init__(self, rules: Mapping[str, Rule] | None = None) -> None:
        self.rules = dict(rules or {})

    def kernel(self, box: Box) -> kernels.Kernel:
        """The kernel of one box: a user rule for its kind, else the built-in one."""
        rule = self.rules.get(box.kind)
        return rule(box) if rule is not None else kernels.kernel(box)

    def __call__(self, diagram: Diagram) -> Plan:
        if not isinstance(diagram, Diagram):
            raise BoxError(f"the torch functor takes a compinterp Diagram, got {type(diagram).__name__}")
        wires = list(range(len(diagram.dom)))
        registers = len(wires)
        steps: list[tuple[Box, kernels.Kernel, tuple[int, ...], tuple[int, ...]]] = []
        for offset, box in diagram.walk():
            n = len(box.dom)
            ins = wires[offset:offset + n]
            if isinstance(box, Swap):
                outs = ins[1:] + ins[:1]
            elif box.kind == "Copy":
                outs = ins * box.data["n"]
            elif box.kind == "Add" and n == 1:
                outs = ins
            elif box.kind == "Add" and n == 0:
                raise BoxError(f"box '{box.name}' adds no wires: a zero has no batch shape to take")
            else:
                outs = list(range(registers, registers + len(box.cod)))
                registers += len(box.cod)
                key = box.name if box.kind == "Opaque" or getattr(box, "param_shapes", dict)() else None
                steps.append((box, self.kernel(box), tuple(ins), tuple(outs), key))
            wires = wires[:offset] + outs + wires[offset + n:]
        return Plan(diagram.dom, diagram.cod, _with_frees(steps, wires), tuple(wires), registers)


def _with_frees(steps: list[tuple[Any, ...]], outputs: list[int]) -> tuple[Step, ...]:
    """Attach to each step the registers it reads for the last time (outputs are kept)."""
    last: dict[int, int] = {}
    for t, (_, _, ins, _, _) in enumerate(steps):
        for r in ins:
            last[r] = t
    keep = set(outputs)
    frees: list[list[int]] = [[] for _ in steps]
    for r, t in last.items():
        if r not in keep:
            frees[t].append(r)
    return tuple(Step(box, fn, key, ins, outs, tuple(sorted(set(free))))
                 for (box, fn, ins, outs, key), free in zip(steps, frees))


def compile(diagram: Diagram, rules: Mapping[str, Rule] | None = None) -> Plan:
    """Compile ``diagram`` into a plan with the built-in kernels (and ``rules``)."""
    return TorchFunctor(rules)(diagram)
