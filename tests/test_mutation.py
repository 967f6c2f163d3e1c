"""Mutated model directories (flipped, cut or inserted bytes, hostile JSON values, links, FIFOs, missing files)
fail only with compinterp's own errors, within a time and a memory bound."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
from torch import nn

from compinterp.errors import CompinterpError
from compinterp.files import info, save
from compinterp.interpretation import Interpretation, maps
from compinterp.model import Model, load
from compinterp.syntax import Add, Bilinear, Copy, Elementwise, Linear, Norm, Opaque, Space, chain, residual

FILES = ("diagram.json", "meta.json", "weights.safetensors", "opaque.pt")
SECONDS = 10
"""How long one load (or info) of a mutated directory may take."""
MEMORY = 2 * 2 ** 30
"""How much more address space than the test process already has one load may take."""
HOSTILE = ["BIG", "DEEP", [], {}, "abc", None, -1, 0, 10 ** 9, 10 ** 18, 1.5, True, "x" * 100_000, "../../etc/passwd",
           ["x:4"] * 3, {"kind": "Linear"}, "x:1000000000000"]
"""Values a mutation writes into the JSON; "BIG" becomes an integer of 5,000 digits, "DEEP" a list nested
100,000 deep."""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, h = Space("x", 4), Space("h", 6)
    diagram = chain(residual(Norm("ln", x) >> Bilinear("mlp", x, x, hidden=5)), Linear("up", x, h, bias=True),
                    Copy(h), Elementwise("relu", h) @ Opaque("op", h, h, module=nn.Linear(6, 6)), Add(h))
    return save(Model(diagram, seed=0), tmp_path_factory.mktemp("mutation") / "model")


@pytest.fixture(scope="module")
def bounded() -> Iterator[None]:
    """Cap the address space (where the system can) and arm an alarm per call, see :func:`within_bounds`."""
    def fail(signum: int, frame: Any) -> None:
        raise TimeoutError(f"a load took more than {SECONDS} s")

    previous = signal.signal(signal.SIGALRM, fail)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    size = _address_space()
    if size is not None:
        cap = size + MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    signal.signal(signal.SIGALRM, previous)


def _address_space() -> int | None:
    """This process's virtual memory size in bytes (Linux), else None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmSize:")), None)
    return int(line.split()[1]) * 1024 if line else None


def regular(file: Path) -> bool:
    """Whether ``file`` is a regular file (not a link, a FIFO or a directory)."""
    return file.is_file() and not file.is_symlink()


def rehash(folder: Path) -> None:
    """Redo meta.json's sizes and checksums (so a mutation reaches past them), where meta.json still parses."""
    if not regular(folder / "meta.json"):
        return
    try:
        meta = json.loads((folder / "meta.json").read_text())
        for name in list(meta["files"]):
            file = folder / name
            if regular(file):
                data = file.read_bytes()
                meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (folder / "meta.json").write_text(json.dumps(meta))
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        pass


def spots(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a JSON value (the keys of objects, the indices of lists)."""
    yield path
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from spots(value, (*path, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:20]):
            yield from spots(value, (*path, i))


def put(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``obj`` with the value at ``path`` replaced."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: put(obj[head], rest, value)}
    return [put(item, rest, value) if i == head else item for i, item in enumerate(obj)]


mutations = st.one_of(
    st.tuples(st.just("flip"), st.sampled_from(FILES), st.integers(0, 10 ** 6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.sampled_from(FILES), st.integers(0, 10 ** 6)),
    st.tuples(st.just("insert"), st.sampled_from(FILES), st.integers(0, 10 ** 6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("json"), st.sampled_from(FILES[:2]), st.integers(0, 10 ** 6), st.sampled_from(HOSTILE)),
    st.tuples(st.just("replace"), st.sampled_from(FILES), st.sampled_from(
        ["link-zero", "link-other", "link-dir", "fifo", "dir", "missing", "empty"])),
)


def mutate(folder: Path, mutation: tuple[Any, ...]) -> None:
    """Apply one mutation to the model directory ``folder``."""
    kind, name = mutation[0], mutation[1]
    file = folder / name
    if kind == "replace":
        file.unlink()
        how = mutation[2]
        if how.startswith("link"):
            file.symlink_to({"link-zero": "/dev/zero", "link-other": folder / "meta.json", "link-dir": "/"}[how])
        elif how == "fifo":
            os.mkfifo(file)
        elif how == "dir":
            file.mkdir()
        elif how == "empty":
            file.write_bytes(b"")
        return
    data = bytearray(file.read_bytes())
    at = mutation[2] % (len(data) + 1)
    if kind == "flip" and data:
        data[at % len(data)] ^= mutation[3]
    elif kind == "cut":
        del data[at:]
    elif kind == "insert":
        data[at:at] = mutation[3]
    elif kind == "json":
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):         # an earlier mutation broke it
            return
        places = list(spots(obj))
        text = json.dumps(put(obj, places[mutation[2] % len(places)], mutation[3]))
        data = bytearray(text.replace('"BIG"', "9" * 5000).replace('"DEEP"', "[" * 100_000 + "]" * 100_000), "utf-8")
    file.write_bytes(bytes(data))


def within_bounds(read: Any, path: Path) -> None:
    """Call ``read(path)``: it succeeds or raises a CompinterpError, within :data:`SECONDS` (and the memory cap)."""
    signal.alarm(SECONDS)
    try:
        read(path)
    except CompinterpError as err:
        message = str(err)
        assert "\n" not in message and len(message) < 2000, message[:300]
    finally:
        signal.alarm(0)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutations, min_size=1, max_size=3), st.booleans())
def test_mutated_directories_fail_with_our_errors(template: Path, bounded: None, changes: list[tuple[Any, ...]],
                                                  rehashed: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(template, Path(tmp) / "model"))
        for change in changes:
            if regular(folder / change[1]):
                mutate(folder, change)
        if rehashed:
            rehash(folder)
        for read in (load, info):
            within_bounds(read, folder)
        within_bounds(lambda path: load(path, modules={"op": nn.Linear(6, 6)}), folder)


@pytest.fixture(scope="module")
def interpretation(template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Model, Path]:
    model = load(template, modules={"op": nn.Linear(6, 6)})
    interp = Interpretation(model, wires={"x": maps.linear(torch.eye(4)), "h": maps.MAPS["rotation"](6, 6)})
    return model, interp.save(tmp_path_factory.mktemp("mutation") / "interp")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10 ** 6), st.sampled_from(HOSTILE), st.sampled_from(["interpretation.json", "maps.safetensors"]),
       st.integers(0, 10 ** 6), st.integers(1, 255))
def test_mutated_interpretations_fail_with_our_errors(interpretation: tuple[Model, Path], bounded: None, spot: int,
                                                      value: Any, name: str, at: int, flip: int) -> None:
    model, template = interpretation
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(template, Path(tmp) / "interp"))
        if name == "maps.safetensors":
            mutate(folder, ("flip", name, at, flip))
        else:
            mutate(folder, ("json", name, spot, value))
        within_bounds(lambda path: Interpretation.load(path, model, modules={"op": nn.Linear(6, 6)}), folder)
