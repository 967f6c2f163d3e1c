"""Runs of a plan that read and edit values by name: the activation cache, hooks and interventions.

One interpreter, :class:`Edited`, does all three: after a register is written it applies that
register's edits (functions ``value -> value``) and keeps its value if asked; a step with heads
(an ``Attention`` box) is cut in two halves (:data:`compinterp.semantics.kernels.HEADS`) when a
site reads or edits its per-head outputs ``(..., T, H, d_head)``, which are then edited and kept
the same way before the output projection sums them.

>>> import torch
>>> from compinterp.syntax import Space, Linear
>>> from compinterp.semantics import TorchFunctor
>>> x = Space("x", 2)
>>> plan = TorchFunctor()(Linear("f", x, x) >> Linear("g", x, x))
>>> params = {"f": {"W": 2 * torch.eye(2)}, "g": {"W": torch.eye(2)}}
>>> editor = Edited(plan, params, edits={plan.names["f"]: [torch.neg]}, keep={plan.names["f"]})
>>> editor.run(torch.ones(2)), editor.values[plan.names["f"]]
((tensor([-2., -2.]),), tensor([-2., -2.]))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from compinterp.semantics import Interpreter, Plan, Step
from compinterp.semantics.kernels import HEADS

Edit = Callable[[torch.Tensor], torch.Tensor]


class Edited(Interpreter):
    """A plan run that edits and keeps values: ``edits`` and ``keep`` by register, ``head_edits``
    and ``keep_heads`` by the register an attention step writes (for its per-head outputs)."""

    def __init__(self, plan: Plan, params: Mapping[str, Any], *, edits: Mapping[int, Sequence[Edit]] | None = None,
                 keep: Iterable[int] = (), head_edits: Mapping[int, Sequence[Edit]] | None = None,
                 keep_heads: Iterable[int] = ()) -> None:
        super().__init__(plan, params)
        self.edits, self.keep = dict(edits or {}), set(keep)
        self.head_edits, self.keep_heads = dict(head_edits or {}), set(keep_heads)
        self.values: dict[int, torch.Tensor] = {}
        self.heads: dict[int, torch.Tensor] = {}
        cut = self.head_edits.keys() | self.keep_heads
        self._cut = {t: HEADS[step.box.kind](step.box) for t, step in enumerate(plan.steps)
                     if step.outs and step.outs[0] in cut}
        self._touched = self.edits.keys() | self.keep

    def last_step(self) -> int:
        """How many steps must run before every kept value is known."""
        wanted = self.keep | self.keep_heads
        written = [t + 1 for t, step in enumerate(self.plan.steps) if wanted & set(step.outs)]
        return max(written, default=0)

    def initial_env(self, xs: Sequence[Any], initial: Mapping[int, Any] | None) -> list[Any]:
        regs = super().initial_env(xs, initial)
        for r in range(len(xs)):
            regs[r] = self._written(r, regs[r])
        return regs

    def run_step(self, t: int, step: Step, args: list[Any]) -> tuple[Any, ...]:
        if t in self._cut:
            r = step.outs[0]
            heads, out = self._cut[t]
            p = self.params[step.key]
            z = heads(p, *args)
            for edit in self.head_edits.get(r, ()):
                z = edit(z)
            if r in self.keep_heads:
                self.heads[r] = z
            outs: tuple[Any, ...] = (out(p, z),)
        else:
            outs = super().run_step(t, step, args)
            if type(outs) is not tuple or self._touched.isdisjoint(step.outs):
                return outs
        return tuple(self._written(r, y) for r, y in zip(step.outs, outs))

    def _written(self, r: int, value: Any) -> Any:
        """A register's value after its edits; kept if asked."""
        for edit in self.edits.get(r, ()):
            value = edit(value)
        if r in self.keep:
            self.values[r] = value
        return value


def run_edited(plan: Plan, params: Mapping[str, Any], xs: Sequence[torch.Tensor], *,
               edits: Mapping[int, Sequence[Edit]] | None = None, head_edits: Mapping[int, Sequence[Edit]] | None = None,
               keep: Iterable[int] = (), keep_heads: Iterable[int] = (), outputs: bool = True,
               checked: bool = False, initial: Mapping[int, torch.Tensor] | None = None
               ) -> tuple[tuple[Any, ...], dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Run ``plan`` with edits; the outputs (``()`` when ``outputs`` is false: the run stops after
    the last kept value), the kept values and the kept per-head outputs, by register. ``checked``:
    the inputs were already checked against the plan; ``initial``: registers set beforehand (whole
    values replaced: the steps only they needed do not run)."""
    if not checked:
        plan.check_inputs(xs)
    editor = Edited(plan, params, edits=edits, keep=keep, head_edits=head_edits, keep_heads=keep_heads)
    if not outputs:
        editor.run(*xs, until=editor.last_step())
        return (), editor.values, editor.heads
    out = editor.run(*xs, initial=initial)
    return out, editor.values, editor.heads
