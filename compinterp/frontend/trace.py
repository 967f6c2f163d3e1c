"""Tracing a torch module with torch.fx and recording every value it computes on example inputs.

The tracer keeps torch's own layers (and any types the caller names) as leaves. A
submodule whose own code cannot be traced (data-dependent control flow, iteration
over tensors ...) is not given up at once: the children it calls on one of its own
inputs, as seen in an eager run on the examples, are traced like any module, and
only the submodule's own code becomes a leaf (a :class:`Glue`), handed their
results; a submodule with no such child becomes one leaf, later one ``Opaque`` box.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from compinterp.errors import ImportTraceError

Feeds = dict[str, list[list[tuple[str, int]]]]
"""Per module path, per call: the direct children called on one of its positional inputs (child name, input index)."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, prefixed with its type."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def cause(module: nn.Module, err: BaseException) -> str:
    """Why torch.fx could not trace ``module.forward``, and what to do, in one line.

    >>> class Kw(nn.Module):
    ...     def forward(self, x, **kwargs):
    ...         return x
    >>> cause(Kw(), ValueError("code: co_varnames is too small"))
    'cannot trace Kw.forward with torch.fx (ValueError: code: co_varnames is too small): it takes **kwargs, which torch.fx cannot trace; a HuggingFace model goes to ci.from_hf (from_torch sends transformers models there), else import a module whose forward names its arguments'
    """
    text = first_line(err)
    params = inspect.signature(module.forward).parameters.values()
    varkw = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
    if varkw is not None or "co_varnames" in text:
        why = (f"it takes **{varkw or 'kwargs'}, which torch.fx cannot trace; a HuggingFace model goes to "
               "ci.from_hf (from_torch sends transformers models there), else import a module whose forward "
               "names its arguments")
    elif "is not supported in symbolic tracing" in text or "cannot be iterated" in text:
        why = ("it needs a traced value's length or elements; move that code into a submodule, which then "
               "becomes one Opaque box, or name its type in leaves=")
    elif "control flow" in text:
        why = ("it branches on a traced value; move that code into a submodule, which then becomes one Opaque "
               "box, or name its type in leaves=")
    else:
        why = "move data-dependent code into a submodule, which then becomes one Opaque box"
    return f"cannot trace {type(module).__name__}.forward with torch.fx ({text}): {why}"


class Glue(nn.Module):
    """The own code of a submodule that could not be traced, its traced children replaced by their results.

    Called with the submodule's positional inputs, then one result per child in ``fed`` (named, with the index
    of the input it was called on), then the submodule's keyword inputs. The children are not held here: a
    child called on another value than that input raises, so the glue never computes something else.
    """

    def __init__(self, inner: nn.Module, fed: Sequence[tuple[str, int]], path: str) -> None:
        super().__init__()
        shell = copy.copy(inner)
        shell._modules = {n: (nn.Identity() if any(n == f for f, _ in fed) else m) for n, m in inner._modules.items()}
        self.inner, self.fed, self.path = shell, list(fed), path

    def forward(self, *values: Any, **kwargs: Any) -> Any:
        n = len(values) - len(self.fed)
        args, results = values[:n], values[n:]
        shell = copy.copy(self.inner)
        shell._modules = dict(self.inner._modules)
        for (child, j), result in zip(self.fed, results):
            shell._modules[child] = _Fed(args[j], result, f"{self.path}.{child}")
        return shell(*args, **kwargs)


class _Fed(nn.Module):
    """Stands for a traced child inside a :class:`Glue`: returns the child's result on the input it was computed on."""

    def __init__(self, given: torch.Tensor, result: Any, path: str) -> None:
        super().__init__()
        self.given, self.result, self.path = given, result, path

    def forward(self, x: Any, *rest: Any, **kwargs: Any) -> Any:
        if rest or kwargs or not (x is self.given or isinstance(x, torch.Tensor) and x.shape == self.given.shape
                                  and torch.equal(x, self.given)):
            raise ImportTraceError(f"{self.path} was imported as called on its parent's input, but on this input "
                                   "the parent calls it on another value; name the parent's type in leaves=")
        return self.result


class Tracer(fx.Tracer):
    """A ``torch.fx`` tracer whose leaves are torch layers, the ``leaves`` types, and untraceable submodules.

    ``untraceable`` maps the path of each submodule (or glue) that failed to trace to the reason; ``feeds``
    (from an eager run) says which children of a failing submodule to trace apart.
    """

    def __init__(self, leaves: tuple[type[nn.Module], ...] = (), feeds: Feeds | None = None) -> None:
        super().__init__()
        self.leaves, self.feeds = leaves, feeds or {}
        self.untraceable: dict[str, str] = {}
        self.calls: Counter[str] = Counter()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)
        calls = self.feeds.get(path, [])
        fed = calls[self.calls[path]] if self.calls[path] < len(calls) else []
        self.calls[path] += 1

        def attempt(*a: Any, **k: Any) -> Any:
            stack, size = OrderedDict(self.module_stack), len(self.graph.nodes)
            try:
                return forward(*a, **k)
            except Exception as err:  # any failure inside makes the submodule a leaf, or its glue
                self._forget(len(self.graph.nodes) - size)
                self.module_stack.clear()
                self.module_stack.update(stack)
                reason = first_line(err)
                if not fed:
                    self.untraceable[path] = reason
                    return self.create_proxy("call_module", path, a, k)
                results = [self.call_module(getattr(m, child), getattr(m, child).forward, (a[j],), {})
                           for child, j in fed]
                glue = self._attach(Glue(m, fed, path), path)
                children = ", ".join(child for child, _ in fed)
                self.untraceable[glue] = f"{reason}; its children {children} are imported apart"
                return self.create_proxy("call_module", glue, (*a, *results), k)

        return super().call_module(m, attempt, args, kwargs)

    def _attach(self, glue: Glue, path: str) -> str:
        """Register ``glue`` on the root under a fresh name (``<path>_glue``) and return it."""
        base = path.replace(".", "_") + "_glue"
        name = next(f"{base}{k or ''}" for k in itertools.count() if f"{base}{k or ''}" not in self.root._modules)
        self.root.add_module(name, glue)
        return name

    def _forget(self, count: int) -> None:
        """Erase what a failed attempt left behind (parameter reads may be cached, so they stay)."""
        for node in list(itertools.islice(reversed(self.graph.nodes), count)):
            if not node.users and node.op != "get_attr":
                self.graph.erase_node(node)


@dataclass
class Traced:
    """A traced module: its graph, the value of every node on the example inputs, and what did not trace."""

    root: nn.Module
    graph: fx.Graph
    values: dict[fx.Node, Any]
    untraceable: dict[str, str]
    order: dict[fx.Node, int]


class _Recorder(fx.Interpreter):
    """Runs a graph and keeps every node's value."""

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        self.values[n] = out = super().run_node(n)
        return out


def trace(module: nn.Module, examples: Mapping[str, torch.Tensor], leaves: tuple[type[nn.Module], ...]) -> Traced:
    """Trace ``module`` with the forward's arguments named in ``examples`` as inputs (the others keep their
    defaults) and run it on them; a submodule that fails to trace has its children fed from its inputs traced
    apart (see :class:`Glue`)."""
    name = type(module).__name__
    concrete = _defaults(module, examples, name)
    root = copy.copy(module)  # torch.fx stores tensor constants and glues on its root: keep them off the user's module
    root._modules = dict(module._modules)
    tracer = Tracer(leaves)
    try:
        graph = tracer.trace(root, concrete_args=concrete or None)
        if tracer.untraceable:
            tracer = Tracer(leaves, _feeds(root, examples))
            graph = tracer.trace(root, concrete_args=concrete or None)
    except Exception as err:
        raise ImportTraceError(cause(module, err)) from err
    _drop_placeholders(graph, set(examples), name)
    recorder = _Recorder(root, graph)
    try:
        with torch.no_grad():
            recorder.run(*examples.values())
    except Exception as err:
        raise ImportTraceError(f"the torch.fx graph traced from {name} fails on the example inputs "
                               f"({first_line(err)}), although the module itself runs on them") from err
    order = {node: i for i, node in enumerate(graph.nodes)}
    return Traced(root, graph, recorder.values, tracer.untraceable, order)


def _feeds(root: nn.Module, examples: Mapping[str, torch.Tensor]) -> Feeds:
    """Run ``root`` on the examples and note, per call of each module, which direct children it calls with
    exactly one of its own positional inputs (the same tensor object) as their only argument."""
    paths: dict[nn.Module, str] = {}
    for path, m in root.named_modules():
        paths.setdefault(m, path)
    feeds: Feeds = {}
    stack: list[tuple[nn.Module, tuple[Any, ...], list[tuple[str, int]]]] = []

    def enter(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if stack and len(args) == 1 and not kwargs:
            parent, given, seen = stack[-1]
            child = next((n for n, c in parent._modules.items() if c is m), None)
            j = next((i for i, a in enumerate(given) if a is args[0] and isinstance(a, torch.Tensor)), None)
            if child is not None and j is not None and (child, j) not in seen:
                seen.append((child, j))
        record: list[tuple[str, int]] = []
        feeds.setdefault(paths.get(m, ""), []).append(record)
        stack.append((m, args, record))

    def leave(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        stack.pop()

    handles = []
    try:
        for m in paths:
            handles.append(m.register_forward_pre_hook(enter, with_kwargs=True))
            handles.append(m.register_forward_hook(leave, with_kwargs=True, always_call=True))
        with torch.no_grad():
            root(**examples)
    finally:
        for handle in handles:
            handle.remove()
    return feeds


def _defaults(module: nn.Module, examples: Mapping[str, torch.Tensor], name: str) -> dict[str, Any]:
    """The forward's arguments without an example, at their default values."""
    params = list(inspect.signature(module.forward).parameters.values())
    star = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    if star is not None:
        raise ImportTraceError(f"{name}.forward takes *{star.name}: from_torch needs named positional arguments, "
                               "one per example input")
    missing = [p.name for p in params if p.name not in examples and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ImportTraceError(f"{name}.forward's arguments {', '.join(missing)} have no example input and no default")
    return {p.name: p.default for p in params if p.name not in examples
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _drop_placeholders(graph: fx.Graph, keep: set[str], name: str) -> None:
    """Remove the placeholders of arguments without an example (defaulted) and the checks fx hung on them."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    dropped = [p for p in placeholders if str(p.target) not in keep]
    doomed: set[fx.Node] = set()
    todo = list(dropped)
    while todo:
        node = todo.pop()
        if node.op == "output":
            raise ImportTraceError(f"the output of {name} depends on the forward's arguments "
                                   f"{', '.join(str(p.target) for p in dropped)}, which have no "
                                   "example input and no fixed default")
        if node not in doomed:
            doomed.add(node)
            todo.extend(node.users)
    for node in reversed(list(graph.nodes)):
        if node in doomed:
            graph.erase_node(node)
