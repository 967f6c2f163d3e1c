"""Tracing a torch module with torch.fx and recording every value it computes on example inputs.

The tracer keeps torch's own layers (and any types the caller names) as leaves,
and turns a submodule whose code cannot be traced (data-dependent control flow,
iteration over tensors ...) into a leaf as well, so that it can later become one
``Opaque`` box instead of failing the whole import.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from compinterp.errors import ImportTraceError


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, prefixed with its type."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


class Tracer(fx.Tracer):
    """A ``torch.fx`` tracer whose leaves are torch layers, the ``leaves`` types, and untraceable submodules.

    ``untraceable`` maps the path of each submodule that failed to trace to the reason.
    """

    def __init__(self, leaves: tuple[type[nn.Module], ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves
        self.untraceable: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        path = self.path_of_module(m)
        if self.is_leaf_module(m, path):
            return super().call_module(m, forward, args, kwargs)

        def attempt(*a: Any, **k: Any) -> Any:
            stack, size = OrderedDict(self.module_stack), len(self.graph.nodes)
            try:
                return forward(*a, **k)
            except Exception as err:  # any failure inside makes the submodule a leaf
                self._forget(len(self.graph.nodes) - size)
                self.module_stack.clear()
                self.module_stack.update(stack)
                self.untraceable[path] = first_line(err)
                return self.create_proxy("call_module", path, a, k)

        return super().call_module(m, attempt, args, kwargs)

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


def trace(module: nn.Module, examples: tuple[torch.Tensor, ...], leaves: tuple[type[nn.Module], ...]) -> Traced:
    """Trace ``module`` with ``len(examples)`` positional inputs (later arguments keep their defaults) and run it."""
    name = type(module).__name__
    concrete = _defaults_after(module, len(examples), name)
    tracer = Tracer(leaves)
    root = copy.copy(module)  # torch.fx stores tensor constants on its root: keep them off the user's module
    try:
        graph = tracer.trace(root, concrete_args=concrete or None)
    except Exception as err:
        raise ImportTraceError(
            f"cannot trace {name}.forward with torch.fx ({first_line(err)}); move data-dependent code "
            "into a submodule, which then becomes one Opaque box") from err
    _drop_placeholders(graph, len(examples), name)
    recorder = _Recorder(root, graph)
    try:
        with torch.no_grad():
            recorder.run(*examples)
    except Exception as err:
        raise ImportTraceError(f"the torch.fx graph traced from {name} fails on the example inputs "
                               f"({first_line(err)}), although the module itself runs on them") from err
    order = {node: i for i, node in enumerate(graph.nodes)}
    return Traced(root, graph, recorder.values, tracer.untraceable, order)


def _defaults_after(module: nn.Module, given: int, name: str) -> dict[str, Any]:
    """The forward's arguments after the first ``given`` positional ones, at their default values."""
    params = list(inspect.signature(module.forward).parameters.values())
    star = next((p for p in params if p.kind == p.VAR_POSITIONAL), None)
    if star is not None:
        raise ImportTraceError(f"{name}.forward takes *{star.name}: from_torch needs named positional arguments, "
                               "one per example input")
    return {p.name: p.default for p in params[given:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


def _drop_placeholders(graph: fx.Graph, keep: int, name: str) -> None:
    """Remove the placeholders past the first ``keep`` (defaulted arguments) and the checks fx hung on them."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    doomed: set[fx.Node] = set()
    todo = placeholders[keep:]
    while todo:
        node = todo.pop()
        if node.op == "output":
            raise ImportTraceError(f"the output of {name} depends on the forward's arguments "
                                   f"{', '.join(str(p.target) for p in placeholders[keep:])}, which have no "
                                   "example input and no fixed default")
        if node not in doomed:
            doomed.add(node)
            todo.extend(node.users)
    for node in reversed(list(graph.nodes)):
        if node in doomed:
            graph.erase_node(node)
