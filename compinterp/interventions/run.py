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

from compinterp.semantics import Interpreter, Plan

Edit = Callable[[torch.Tensor], torch.Tensor]


class Edited(Interpreter):
    """A plan run that edits and keeps values: ``edits`` and ``keep`` by register, ``head_edits``
    and ``keep_heads`` by the register an attention step writes (for its per-head outputs).

    It overrides only the interpreter's :meth:`~compinterp.semantics.Interpreter.written` and
    :meth:`~compinterp.semantics.Interpreter.heads_written` hooks, so it runs compiled."""

    def __init__(self, plan: Plan, params: Mapping[str, Any], *, edits: Mapping[int, Sequence[Edit]] | None = None,
                 keep: Iterable[int] = (), head_edits: Mapping[int, Sequence[Edit]] | None = None,
                 keep_heads: Iterable[int] = ()) -> None:
        super().__init__(plan, params)
        self.edits, self.keep = dict(edits or {}), set(keep)
        self.head_edits, self.keep_heads = dict(head_edits or {}), set(keep_heads)
        self.values: dict[int, torch.Tensor] = {}
        self.heads: dict[int, torch.Tensor] = {}
        self.watched = frozenset(self.edits.keys() | self.keep)
        self.cut = frozenset(self.head_edits.keys() | self.keep_heads)

    def last_step(self) -> int:
        """How many steps must run before every kept value is known."""
        writer = self.plan.writer
        return max((writer[r] + 1 for r in self.keep | self.keep_heads if r in writer), default=0)

    def written(self, r: int, value: Any) -> Any:
        """A register's value after its edits; kept if asked."""
        for edit in self.edits.get(r, ()):
            value = edit(value)
        if r in self.keep:
            self.values[r] = value
        return value

    def heads_written(self, r: int, z: Any) -> Any:
        """An attention step's per-head outputs after their edits; kept if asked."""
        for edit in self.head_edits.get(r, ()):
            z = edit(z)
        if r in self.keep_heads:
            self.heads[r] = z
        return z


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
