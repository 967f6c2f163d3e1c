"""Declared sizes are checked before anything is built: names, dimensions, spider legs, file versions."""

from __future__ import annotations

import time

import pytest

import compinterp as ci
from compinterp.errors import BoxError, FormatError
from compinterp.syntax import diagram_from_json, diagram_to_json


@pytest.mark.parametrize("name", ["mlp\n", "a" * 129, "1x", "a.b"])
def test_box_names_are_refused_whole(name: str) -> None:
    with pytest.raises(BoxError, match="is not valid") as info:
        ci.Linear(name, ci.Space("x", 2), ci.Space("y", 2))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize("text", ["x\n:2", "x:" + "9" * 5000, "x:0"])
def test_wires_are_refused_with_a_short_message(text: str) -> None:
    with pytest.raises(BoxError) as info:
        ci.Space(text)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("n", [10 ** 7, 10 ** 9])
def test_spider_legs_are_capped_before_any_wire_is_built(n: int) -> None:
    x = ci.Space("x", 2)
    start = time.perf_counter()
    for make in (lambda: ci.Copy(x, n), lambda: ci.Add(x, n), lambda: ci.Mul(x, n)):
        with pytest.raises(BoxError, match="n must be an integer from") as info:
            make()
        assert len(str(info.value)) < 200
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("version", [-5, 0, 2, True, "1"])
def test_diagram_versions_out_of_range_are_refused(version: object) -> None:
    obj = diagram_to_json(ci.Linear("f", ci.Space("x", 2), ci.Space("y", 2)))
    with pytest.raises(FormatError, match="version"):
        diagram_from_json(obj | {"version": version})
