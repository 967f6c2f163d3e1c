"""The semantic functor ``[[-]] : Syntax -> Torch``, compiled once into a flat plan, and the one
interpreter that runs a plan.

Following torch.fx's split between a graph and the interpreters that walk it,
:class:`TorchFunctor` walks a diagram's layers once and emits a :class:`Plan`:
a straight-line program over numbered registers. Swaps, copies, discards and
identities cost nothing at run time (they only rename registers); each other
box is one kernel call. :class:`Interpreter` runs a plan's steps over its
registers; everything that runs a plan (the forward pass, probes, the checker's
two sides, caches, hooks and patches) is that loop with one method overridden.
Where no method that computes a step is overridden, the loop runs as Python
generated from it once per run signature (:mod:`compinterp.semantics.codegen`,
as ``torch.fx.GraphModule`` recompiles its graph), to the same result.

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

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from compinterp.errors import BoxError, CompinterpError, InputError
from compinterp.semantics import codegen, kernels
from compinterp.syntax import Box, Diagram, Space, Swap, Wire, describe

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
    builtin: bool = False
    """Whether ``fn`` is a built-in rule's (:data:`~compinterp.semantics.kernels.RULES`), which
    returns a tuple of one value per output by construction: generated code does not check it."""


class Plan:
    """A compiled diagram: ``plan(params, *inputs)`` runs it on batched tensors.

    ``params`` maps a box name to that box's parameters (a mapping of tensors or a
    module). The plan returns one tensor for a one-wire codomain, else a tuple.
    """

    def __init__(self, dom: Space, cod: Space, steps: tuple[Step, ...], outputs: tuple[int, ...],
                 registers: int) -> None:
        self.dom, self.cod, self.steps, self.outputs, self.registers = dom, cod, steps, outputs, registers
        self._dims = tuple(w.dim for w in dom.wires)
        wires = [*dom.wires, *[None] * (registers - len(dom))]
        for step in steps:
            for r, w in zip(step.outs, step.box.cod.wires):
                wires[r] = w
        self.wires: tuple[Wire, ...] = tuple(wires)
        """The wire each register holds a value of."""
        uses, seen = Counter(step.box.name for step in steps), Counter[str]()
        labels = []
        for step in steps:
            seen[step.box.name] += 1
            labels.append(f"{step.box.name}#{seen[step.box.name]}" if uses[step.box.name] > 1 else step.box.name)
        self.labels: tuple[str, ...] = tuple(labels)
        """Each step's name: its box's, numbered ``name#k`` where a box is used more than once."""
        self.heads: dict[int, int] = {step.outs[0]: step.box.data["heads"] for step in steps
                                      if step.box.kind in kernels.HEADS}
        """For each step with heads (a kernel that :data:`~compinterp.semantics.kernels.HEADS` cuts), by
        the register it writes: its number of heads."""
        self.names: dict[str, int] = _register_names(self)
        """Each register by name: inputs by wire label, box outputs by step label (``label.i`` for
        output ``i`` of several), then the ``k``-th register holding a wire label as ``label_k`` (the
        bare label where only one does), where these do not clash."""
        self.writer: dict[int, int] = {r: t for t, step in enumerate(steps) for r in step.outs}
        """The step that writes each register written by a step (inputs are written by none)."""
        self._halves: dict[int, kernels.HeadKernels] = {}
        self._code: dict[codegen.Signature, codegen.Compiled] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_halves": {}, "_code": {}}

    def halves(self, t: int) -> kernels.HeadKernels:
        """Step ``t``'s two halves, ``heads(p, *ins) -> z`` and ``out(p, z)`` (see
        :data:`~compinterp.semantics.kernels.HEADS`), bound once."""
        halves = self._halves.get(t)
        if halves is None:
            box = self.steps[t].box
            halves = self._halves[t] = kernels.HEADS[box.kind](box)
        return halves

    def __repr__(self) -> str:
        return f"<Plan {self.dom} -> {self.cod}: {len(self.steps)} kernel calls>"

    def __call__(self, params: Mapping[str, Any], *xs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self.check_inputs(xs)
        out = Interpreter(self, params).run(*xs)
        return out[0] if len(out) == 1 else out

    def run(self, params: Mapping[str, Any], *xs: Any, initial: Mapping[int, Any] | None = None) -> tuple[Any, ...]:
        """The values of the output registers, ``initial`` pre-setting registers (see :meth:`Interpreter.run`)."""
        return Interpreter(self, params).run(*xs, initial=initial)

    def live(self, given: Mapping[int, Any] | frozenset[int], wanted: Sequence[int] | None = None) -> set[int]:
        """The steps the outputs (or the registers ``wanted``) need when the registers in ``given``
        are set beforehand.

        >>> from compinterp.syntax import Space, Linear
        >>> x = Space("x", 2)
        >>> plan = TorchFunctor()(Linear("f", x, x) >> Linear("g", x, x))
        >>> sorted(plan.live({})), sorted(plan.live({1: None})), sorted(plan.live({}, wanted=[1]))
        ([0, 1], [1], [0])
        """
        want, steps = set(self.outputs if wanted is None else wanted), set()
        for t in range(len(self.steps) - 1, -1, -1):
            step = self.steps[t]
            if any(r in want and r not in given for r in step.outs):
                steps.add(t)
                want.update(step.ins)
        return steps

    def check_inputs(self, xs: Sequence[Any]) -> None:
        """Refuse inputs that are not one tensor per input wire, floats ending in the wire's dimension."""
        if len(xs) != len(self._dims):
            raise InputError(f"expected {len(self._dims)} inputs ({self.dom}), got {len(xs)}")
        for i, (x, dim) in enumerate(zip(xs, self._dims)):
            if not isinstance(x, torch.Tensor):
                raise InputError(f"input {i} ({self.dom.wires[i].name}) must be a torch.Tensor, got {type(x).__name__}")
            if x.is_floating_point() and (x.dim() == 0 or x.shape[-1] != dim):
                raise InputError(f"input {i} is wire {self.dom.wires[i].name} but has shape {tuple(x.shape)}: "
                                 f"its last dimension must be {dim}")


class Interpreter:
    """Runs a plan's steps over its registers, one kernel call at a time, in the manner of
    ``torch.fx.Interpreter``: subclasses override :meth:`run_step` (what one step computes)
    or :meth:`initial_env` (the registers before the first step), and :meth:`run` stays the
    only loop over a plan's steps.

    Registers may hold anything a subclass's :meth:`run_step` reads and writes (the checker
    keeps the model's value, its image under sigma and the explanation's value together).

    Two narrower override points keep a run compiled: :meth:`written` sees (and may replace)
    the value of each register in :attr:`watched` as it is written, and :meth:`heads_written`
    the per-head outputs of each step with heads whose register is in :attr:`cut`. A class that
    overrides neither :meth:`run_step` nor :meth:`initial_env` runs as the Python that
    :mod:`compinterp.semantics.codegen` generates from the plan once per signature (given
    registers, ``until``, :attr:`watched`, :attr:`cut`); others run the loop (:meth:`interpret`).

    >>> from compinterp.syntax import Space, Linear
    >>> x = Space("x", 2)
    >>> plan = TorchFunctor()(Linear("f", x, x) >> Linear("g", x, x))
    >>> params = {"f": {"W": 2 * torch.eye(2)}, "g": {"W": torch.eye(2)}}
    >>> class Inputs(Interpreter):
    ...     def run_step(self, t, step, args):
    ...         print(step.box.name, args[0].tolist())
    ...         return super().run_step(t, step, args)
    >>> Inputs(plan, params).run(torch.ones(2))
    f [1.0, 1.0]
    g [2.0, 2.0]
    (tensor([2., 2.]),)
    """

    side = ""
    """Prefix of the error that names a failing box (``"model "``, ``"explanation of 'mlp': "``)."""

    watched: frozenset[int] = frozenset()
    """Registers whose values pass through :meth:`written` when written (inputs included)."""

    cut: frozenset[int] = frozenset()
    """Registers written by steps with heads (:attr:`Plan.heads`) that run in two halves
    (:meth:`Plan.halves`), :meth:`heads_written` seeing the per-head outputs in between."""

    compiled = True
    """Whether :meth:`run` runs generated code; false (on the class) where a subclass overrides
    :meth:`run_step` or :meth:`initial_env`; set it false on an instance to run the loop."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.run_step is not Interpreter.run_step or cls.initial_env is not Interpreter.initial_env:
            cls.compiled = False

    def __init__(self, plan: Plan, params: Mapping[str, Any], side: str | None = None) -> None:
        self.plan, self.params = plan, params
        if side is not None:
            self.side = side

    def shape(self, value: Any) -> str:
        """A register's value as an error message shows it (its shape)."""
        return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else "?"

    def written(self, r: int, value: Any) -> Any:
        """The value register ``r`` (one of :attr:`watched`) holds once written with ``value``."""
        return value

    def heads_written(self, r: int, z: Any) -> Any:
        """The per-head outputs the step writing register ``r`` (one of :attr:`cut`) goes on with."""
        return z

    def initial_env(self, xs: Sequence[Any], initial: Mapping[int, Any] | None) -> list[Any]:
        """The registers before the first step: the inputs, then ``initial``'s values by register;
        then the watched inputs pass through :meth:`written`."""
        regs: list[Any] = [*xs, *([None] * (self.plan.registers - len(xs)))]
        for r, value in (initial or {}).items():
            regs[r] = value
        if self.watched:
            for r in range(len(xs)):
                if r in self.watched:
                    regs[r] = self.written(r, regs[r])
        return regs

    def run_step(self, t: int, step: Step, args: list[Any]) -> tuple[Any, ...]:
        """The outputs of step ``t`` on the values ``args`` of its input registers (a step whose
        register is in :attr:`cut` runs in two halves, :meth:`heads_written` in between)."""
        p = self.params[step.key] if step.key is not None else None
        if self.cut and step.outs and step.outs[0] in self.cut:
            heads, out = self.plan.halves(t)
            return (out(p, self.heads_written(step.outs[0], heads(p, *args))),)
        return step.fn(p, *args)

    def run(self, *xs: Any, initial: Mapping[int, Any] | None = None, until: int | None = None,
            returns: Sequence[int] | None = None) -> tuple[Any, ...]:
        """Run the steps (the first ``until`` of them) and return the output registers' values
        (those of the registers ``returns``, if given).

        ``initial`` pre-sets registers, as torch.fx's ``initial_env``: a step whose outputs are
        all given is skipped, a given output of a step that runs keeps its given value (an
        interchange intervention is a run with the patched register in ``initial``), and a
        step that no returned register needs once those registers are given is not run at all.
        Registers are freed after their last read, so ``until`` returns outputs not yet
        written as ``None``. A given register is not :meth:`written` (unless it is an input).
        """
        if self.compiled and len(xs) == len(self.plan._dims):
            signature = (frozenset(initial) if initial else _NONE, until, self.watched, self.cut,
                         None if returns is None else tuple(returns))
            return codegen.compiled(self.plan, signature)(self, self.params, xs, initial)
        return self.interpret(*xs, initial=initial, until=until, returns=returns)

    def prepared(self, given: frozenset[int] = frozenset(), until: int | None = None,
                 returns: Sequence[int] | None = None) -> Callable[[Sequence[Any], Mapping[int, Any] | None],
                                                                   tuple[Any, ...]]:
        """:meth:`run` for one signature, resolved once for a loop over batches: ``f(xs, initial)``
        is ``run(*xs, initial=initial, until=until, returns=returns)`` for ``xs`` one value per
        input wire and ``initial`` holding exactly the registers ``given`` (``None`` for none)."""
        if not self.compiled:
            return lambda xs, initial: self.interpret(*xs, initial=initial, until=until, returns=returns)
        signature = (frozenset(given), until, self.watched, self.cut, None if returns is None else tuple(returns))
        return partial(codegen.compiled(self.plan, signature), self, self.params)

    def interpret(self, *xs: Any, initial: Mapping[int, Any] | None = None, until: int | None = None,
                  returns: Sequence[int] | None = None) -> tuple[Any, ...]:
        """:meth:`run` as a loop over the steps, one :meth:`run_step` each: the reference semantics."""
        regs = self.initial_env(xs, initial)
        given = initial or {}
        steps = self.plan.steps if until is None else self.plan.steps[:until]
        live = self.plan.live(given, returns) if (given or returns is not None) and until is None else None
        kept = frozenset(returns or ())
        run_step, watched, written = self.run_step, self.watched, self.written
        t, step = -1, None
        try:
            for t, step in enumerate(steps):
                if live is not None and t not in live:
                    continue
                if given and all(r in given for r in step.outs):
                    outs = tuple(given[r] for r in step.outs)
                else:
                    outs = run_step(t, step, [regs[i] for i in step.ins])
                    if type(outs) is not tuple or len(outs) != len(step.outs):
                        self.check_arity(step, outs)
                    if watched:
                        outs = tuple(written(r, y) if r in watched and r not in given else y
                                     for r, y in zip(step.outs, outs))
                if given:
                    outs = tuple(given.get(r, y) for r, y in zip(step.outs, outs))
                for r, y in zip(step.outs, outs):
                    regs[r] = y
                for r in step.free:
                    if r not in kept:
                        regs[r] = None
        except Exception as err:
            if step is None:
                raise
            self.failed(step, err, [regs[i] for i in step.ins])
        return tuple(regs[r] for r in (self.plan.outputs if returns is None else returns))

    def check_arity(self, step: Step, outs: Any) -> None:
        """Refuse a kernel's result that is not a tuple of one value per output of ``step``."""
        if type(outs) is not tuple or len(outs) != len(step.outs):
            raise InputError(f"{self.side}box '{step.box.name}' ({describe(step.box)}): its kernel must "
                             f"return a tuple of {len(step.outs)} tensor(s), got {type(outs).__name__}")

    def failed(self, step: Step, err: Exception, args: Sequence[Any]) -> None:
        """Raise ``err``, raised while running ``step`` on ``args``, as the error that names the box:
        compinterp's own errors as they are; a missing parameter entry, or a torch error with the
        shapes of the inputs, as an :class:`~compinterp.errors.InputError`; any other error as it is."""
        if isinstance(err, CompinterpError):
            raise err
        if isinstance(err, KeyError):
            if step.key is not None and step.key not in self.params:
                raise InputError(f"{self.side}no parameters for box '{step.key}' ({describe(step.box)})") from None
            raise err
        if isinstance(err, (RuntimeError, IndexError, ValueError, TypeError)):
            shapes = ", ".join(self.shape(a) for a in args)
            raise InputError(f"{self.side}box '{step.box.name}' ({step.box.kind} {step.box.dom} -> {step.box.cod}) "
                             f"failed on inputs of shape {shapes}: {err}") from err
        raise err


_NONE: frozenset[int] = frozenset()


class TorchFunctor:
    """Sends a diagram to a :class:`Plan`; ``rules`` adds or overrides kernels by box kind."""

    def __init__(self, rules: Mapping[str, Rule] | None = None) -> None:
        self.rules = {**kernels.RULES, **(rules or {})}

    def kernel(self, box: Box) -> kernels.Kernel:
        """The kernel of one box: the rule for its kind (a user's, else the built-in one)."""
        rule = self.rules.get(box.kind)
        if rule is None:
            raise BoxError(f"no torch semantics for box '{box.name}' of kind {box.kind}: "
                           "give the functor a rule for it (TorchFunctor(rules={...}))")
        return rule(box)

    def __call__(self, diagram: Diagram) -> Plan:
        if not isinstance(diagram, Diagram):
            raise BoxError(f"the torch functor takes a compinterp Diagram, got {type(diagram).__name__}")
        wires = list(range(len(diagram.dom)))
        registers = len(wires)
        steps: list[tuple[Box, kernels.Kernel, tuple[int, ...], tuple[int, ...], str | None, bool]] = []
        for offset, box in diagram.walk():
            n = len(box.dom)
            ins = wires[offset:offset + n]
            outs = _renamed(box, ins)
            if outs is None:
                outs = list(range(registers, registers + len(box.cod)))
                registers += len(box.cod)
                key = box.name if box.opaque or getattr(box, "param_shapes", dict)() else None
                steps.append((box, self.kernel(box), tuple(ins), tuple(outs), key,
                              self.rules.get(box.kind) is kernels.RULES.get(box.kind)))
            wires = wires[:offset] + outs + wires[offset + n:]
        return Plan(diagram.dom, diagram.cod, _with_frees(steps, wires), tuple(wires), registers)


def _register_names(plan: Plan) -> dict[str, int]:
    """The names of :attr:`Plan.names`: canonical names first, then wire aliases that are free."""
    names: dict[str, int] = {}
    inputs = [w.label for w in plan.dom.wires]
    for r, label in enumerate(inputs):
        names[label if inputs.count(label) == 1 else f"{label}.{r}"] = r
    for step, label in zip(plan.steps, plan.labels):
        for i, r in enumerate(step.outs):
            names[label if len(step.outs) == 1 else f"{label}.{i}"] = r
    by_wire: dict[str, list[int]] = {}
    for r, w in enumerate(plan.wires):
        by_wire.setdefault(w.label, []).append(r)
    for label, registers in by_wire.items():
        aliases = [(label, registers[0])] if len(registers) == 1 else \
            [(f"{label}_{k}", r) for k, r in enumerate(registers)]
        for alias, r in aliases:
            names.setdefault(alias, r)
    return names


def _renamed(box: Box, ins: list[int]) -> list[int] | None:
    """The registers of a box's outputs when it only renames registers (a swap; a spider with one
    input, which copies, discards or passes it), else ``None``: the box is a kernel call."""
    if isinstance(box, Swap):
        return ins[1:] + ins[:1]
    if not box.spider or len(ins) > 1:
        return None
    if not ins:
        raise BoxError(f"box '{box.name}' adds no wires: a zero has no batch shape to take")
    return ins * len(box.cod)


def _with_frees(steps: list[tuple[Any, ...]], outputs: list[int]) -> tuple[Step, ...]:
    """Attach to each step the registers it reads for the last time (outputs are kept)."""
    last: dict[int, int] = {}
    for t, (_, _, ins, *_) in enumerate(steps):
        for r in ins:
            last[r] = t
    keep = set(outputs)
    frees: list[list[int]] = [[] for _ in steps]
    for r, t in last.items():
        if r not in keep:
            frees[t].append(r)
    return tuple(Step(box, fn, key, ins, outs, tuple(sorted(set(free))), builtin)
                 for (box, fn, ins, outs, key, builtin), free in zip(steps, frees))


def compile_plan(diagram: Diagram, rules: Mapping[str, Rule] | None = None) -> Plan:
    """Compile ``diagram`` into a plan with the built-in kernels (and ``rules``)."""
    return TorchFunctor(rules)(diagram)
