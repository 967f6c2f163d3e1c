"""A plan's run as straight-line Python, generated once per run signature and cached on the plan.

:meth:`Interpreter.run <compinterp.semantics.Interpreter.run>` walks a plan's steps one at a
time: per step it checks which registers are given, builds the argument list, calls the kernel,
checks the result, writes and frees registers. On small tensors that bookkeeping costs more than
the kernels. As torch.fx's ``Graph.python_code`` and ``GraphModule.recompile`` turn a graph into
the Python source of its forward, :func:`compiled` unrolls that same loop for one
:data:`Signature` (which registers are given beforehand, where the run stops, which registers
pass through the interpreter's :meth:`~compinterp.semantics.Interpreter.written` hook, which
steps with heads are cut in two halves, which registers it returns) into one function whose body
is the steps that would run, in order, on local variables ``r0, r1, ...`` (one per register):

>>> from compinterp.semantics import TorchFunctor
>>> from compinterp.syntax import Space, Linear, Elementwise, Attention
>>> x = Space("x", 2)
>>> plan = TorchFunctor()(Linear("f", x, x) >> Elementwise("relu", x) >> Attention("attn", x, heads=1))
>>> print(python_code(plan, (frozenset(), None, frozenset({2}), frozenset(), None))[0])
def run(self, P, xs, G):
    r0, = xs
    w = self.written
    try:
        t = 0  # f: Linear x:2 -> x:2
        p = P['f']
        r1 = _linear(r0, p['W'])
        r0 = None
        t = 1  # relu: Elementwise x:2 -> x:2
        r2 = f1(r1)
        r2 = w(2, r2)
        r1 = None
        t = 2  # attn: Attention x:2 -> x:2
        r3, = k2(P['attn'], r2)
        r2 = None
        pass
    except Exception as err:
        _failed(self, t, err, locals())
    return (r3, )
<BLANKLINE>

Each step is its kernel called (``k<t>``, the step's own ``fn``; a kernel of a user's rule has its
result checked as the loop checks it), or, for the kernels that are one torch call (``F.linear``,
a pointwise function of one wire, the sum or product of two wires), that call written out, as
torch.fx writes a node. It is generated from the plan's steps and :meth:`Plan.live
<compinterp.semantics.Plan.live>`, the loop's own decisions taken once instead of per call, so it
computes what the loop computes: the same torch operations on the same values in the same order
(equal to the last bit), the same registers freed after their last read (``rK = None``), the same
hooks called in the same order, the same errors naming the failing box (:meth:`Interpreter.failed
<compinterp.semantics.Interpreter.failed>`, given the failing step's input values). The
interpreter stays the reference: it runs the loop itself (:meth:`Interpreter.interpret
<compinterp.semantics.Interpreter.interpret>`) whenever a subclass overrides what a step computes
(:meth:`~compinterp.semantics.Interpreter.run_step` or
:meth:`~compinterp.semantics.Interpreter.initial_env`), and the tests check that both agree on
random diagrams and signatures.

The source of a generated function is kept in :mod:`linecache`, so tracebacks show its lines.
The plans and interpreters here are :mod:`compinterp.semantics.functor`'s, which imports this
module (so it does not import them back).
"""

from __future__ import annotations

import linecache
from collections.abc import Callable
from functools import partial
from itertools import count
from typing import Any

import torch.nn.functional as F

from compinterp.semantics import kernels

Signature = tuple[frozenset[int], int | None, frozenset[int], frozenset[int], tuple[int, ...] | None]
"""``(given, until, watched, cut, returns)``: registers set beforehand, the number of steps to run
(``None``: all), registers passed through ``written``, registers of steps with heads run in two
halves, the registers returned (``None``: the plan's outputs)."""

Compiled = Callable[[Any, Any, tuple[Any, ...], Any], tuple[Any, ...]]
"""``run(interpreter, params, inputs, given) -> outputs``."""

CACHED = 256
"""How many signatures' functions a plan keeps (the oldest are dropped first)."""

_ids = count()


def compiled(plan: Any, signature: Signature) -> Compiled:
    """The run of ``plan`` with ``signature``, generated on first use and cached on the plan."""
    code = plan._code.get(signature)
    if code is None:
        source, scope = python_code(plan, signature)
        filename = f"<compinterp plan {next(_ids)}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), scope)  # noqa: S102 - the source is generated from the plan
        if len(plan._code) >= CACHED:
            linecache.cache.pop(plan._code.pop(next(iter(plan._code))).__code__.co_filename, None)
        code = plan._code[signature] = scope["run"]
    return code


def python_code(plan: Any, signature: Signature) -> tuple[str, dict[str, Any]]:
    """The source of :func:`compiled`'s function ``run(interpreter, params, inputs, given)`` and
    the globals it reads (kernels ``k<t>``, pointwise functions ``f<t>``, head halves ``h<t>`` and
    ``c<t>``)."""
    given, until, watched, cut, returns = signature
    returned = plan.outputs if returns is None else returns
    live = plan.live(given, returns) if (given or returns is not None) and until is None else None
    steps = [(t, step) for t, step in enumerate(plan.steps if until is None else plan.steps[:until])
             if live is None or t in live]
    written = {r for _, step in steps for r in step.outs}
    n = len(plan._dims)
    scope: dict[str, Any] = {"_arity": _arity, "_failed": _failed, "_linear": F.linear}
    body = [f"    {''.join(f'r{r}, ' for r in range(n))}= xs"] if n else []
    body += [f"    r{r} = G[{r}]" for r in sorted(given)]
    if watched:
        body.append("    w = self.written")
        body += [f"    r{r} = w({r}, r{r})" for r in range(n) if r in watched]
    unset = [r for r in returned if r >= n and r not in given and r not in written]
    body += [f"    r{r} = None" for r in dict.fromkeys(unset)]
    body.append("    try:")
    for t, step in steps:
        lines = []
        if not all(r in given for r in step.outs):
            lines += _call(t, step, plan, given, cut, scope)
            lines += [f"r{r} = w({r}, r{r})" for r in step.outs if r in watched and r not in given]
        lines += [f"r{r} = None" for r in step.free if r not in returned]
        if lines:
            body.append(f"        t = {t}  # {plan.labels[t]}: {step.box.kind} {step.box.dom} -> {step.box.cod}")
            body += [f"        {line}" for line in lines]
    body += ["        pass", "    except Exception as err:", "        _failed(self, t, err, locals())"]
    outputs = "".join(f"r{r}, " for r in returned)
    body.append(f"    return ({outputs})")
    return "def run(self, P, xs, G):\n" + "\n".join(body) + "\n", scope


def _call(t: int, step: Any, plan: Any, given: frozenset[int], cut: frozenset[int],
          scope: dict[str, Any]) -> list[str]:
    """The lines writing step ``t``'s outputs that are not given: a kernel call (its result checked
    unless the kernel is built in, :attr:`Step.builtin <compinterp.semantics.Step.builtin>`), or the
    two halves of a cut step with :meth:`heads_written` between them."""
    args = "".join(f", r{r}" for r in step.ins)
    p = "None" if step.key is None else f"P[{step.key!r}]"
    if step.outs and step.outs[0] in cut:
        scope[f"h{t}"], scope[f"c{t}"] = plan.halves(t)
        return [f"p = {p}", f"z = self.heads_written({step.outs[0]}, h{t}(p{args}))",
                f"r{step.outs[0]} = c{t}(p, z)"]
    inline = _inline(t, step, scope)
    if inline is not None and given.isdisjoint(step.outs):
        return ([] if step.key is None else [f"p = {p}"]) + [f"r{step.outs[0]} = {inline}"]
    scope[f"k{t}"] = step.fn
    call = f"k{t}({p}{args})"
    if step.builtin and given.isdisjoint(step.outs):
        return [f"{''.join(f'r{r}, ' for r in step.outs)}= {call}"]
    return [f"o = {call}", f"if o.__class__ is not tuple or len(o) != {len(step.outs)}: _arity(self, {t}, o)",
            *(f"r{r} = o[{i}]" for i, r in enumerate(step.outs) if r not in given)]


def _inline(t: int, step: Any, scope: dict[str, Any]) -> str | None:
    """The expression of the one output of a kernel that is one torch call (``F.linear`` with or
    without a bias, a pointwise function of one wire, the sum or product of two wires), written out
    as torch.fx writes a node, on the step's parameters ``p``; else ``None``. The tests check
    these against the kernels themselves (:mod:`compinterp.semantics.kernels`), bit for bit."""
    fn, xs = step.fn, [f"r{r}" for r in step.ins]
    if fn is kernels.linear:
        return f"_linear({xs[0]}, p['W'])"
    if fn is kernels.affine:
        return f"_linear({xs[0]}, p['W'], p['b'])"
    if isinstance(fn, partial) and fn.func is kernels.pointwise1 and len(fn.args) == 1 and not fn.keywords:
        scope[f"f{t}"] = fn.args[0]
        return f"f{t}({xs[0]})"
    if fn is kernels.add and len(xs) == 2:
        return f"{xs[0]} + {xs[1]}"
    if fn is kernels.mul and len(xs) == 2:
        return f"{xs[0]} * {xs[1]}"
    return None


def _arity(interpreter: Any, t: int, outs: Any) -> None:
    """Refuse the result of step ``t``'s kernel as the loop does."""
    interpreter.check_arity(interpreter.plan.steps[t], outs)


def _failed(interpreter: Any, t: int, err: Exception, registers: dict[str, Any]) -> None:
    """Raise ``err``, raised by step ``t``, as the loop does, from the local variables of the run."""
    step = interpreter.plan.steps[t]
    interpreter.failed(step, err, [registers.get(f"r{r}") for r in step.ins])
