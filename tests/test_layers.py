"""The package's import graph: no module imports, through any chain, a module that imports it back
(imports inside functions count; the layers themselves are import-linter's contracts in pyproject.toml)."""

from __future__ import annotations

import networkx as nx
import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the dev extra)")


def test_no_import_cycles_inside_compinterp() -> None:
    graph = grimp.build_graph("compinterp", include_external_packages=False, cache_dir=None)
    edges = nx.DiGraph()
    for module in graph.modules:
        edges.add_node(module)
        for imported in graph.find_modules_directly_imported_by(module):
            edges.add_edge(module, imported)
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []
