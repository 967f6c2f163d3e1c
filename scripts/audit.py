"""Audit compinterp's loaders and writers against hostile directories and interrupted writes (issue 15).

Each case crafts a directory (a model with planted code, a FIFO, a link to /dev/zero, a diagram that
declares 10**9 wires, a meta.json listing ``../secret``, ...) and runs the ``compinterp`` command line
(or a short Python line) on it in a subprocess, under a time and memory limit, then classifies what
happened:

* ``clean``: what should happen did: a one-line ``compinterp: error: ...`` and exit status 1 where the
  input is bad, success where it is good (``--trust-code``, ``info`` of a directory it need not unpickle);
* ``traceback``: a Python traceback, or death by a signal or out of memory;
* ``hang``: the time limit passed;
* ``silent-wrong``: success where there should have been an error, planted code that ran, a number
  that is wrong, a file outside the directory read;
* ``lost``: a model that is neither the old one nor the new one after a killed save, or temporaries
  left behind.

Run ``.venv/bin/python scripts/audit.py`` (``--only WORD`` runs the cases whose name holds WORD,
``--kills N`` sets how many saves are killed, ``-v`` prints every case). To add a case, write a
function that builds its directory under the ``tmp`` it is given and returns a :class:`Command`
(or, for loops like the kill test, a list of :class:`Outcome`), and decorate it with
``@case(section)`` above the "running" part. It exits 1 if any case is not clean.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compinterp.errors import CompinterpError
from compinterp.files import save
from compinterp.interpretation import Interpretation
from compinterp.model import Model, load
from compinterp.syntax import Copy, Linear, Opaque, Space

OUTCOMES = ("clean", "traceback", "hang", "silent-wrong", "lost")
TIME_LIMIT = 60.0
"""Seconds a command may run before it counts as a hang."""
MEMORY_LIMIT = 3 * 2 ** 30
"""Bytes of address space a command may take (torch itself needs about 1.5 GiB)."""
CLI = "import sys; from compinterp.cli import main; sys.exit(main())"
PYTHON = """import sys, compinterp
from compinterp.errors import CompinterpError
try:
    {line}
except CompinterpError as err:
    print("compinterp: error:", " ".join(str(err).split()), file=sys.stderr)
    sys.exit(1)"""
"""A line of Python run with compinterp imported, its library errors reported as the command line does."""
X = Space("x", 4)


@dataclass(frozen=True)
class Outcome:
    """What one tried case came to."""

    section: str
    name: str
    outcome: str
    detail: str = ""


@dataclass
class Command:
    """A command to run on a crafted directory, and what it should do.

    ``args`` are the command line's arguments (``["info", DIR]``), or with ``python`` a line of Python
    run with compinterp imported; ``fails`` whether it should end in a one-line error; ``check`` looks
    at the finished run (exit status, stdout, stderr) and returns an outcome other than ``clean`` (or
    ``None``); ``within`` is a time bound in seconds tighter than :data:`TIME_LIMIT`.
    """

    args: list[str]
    fails: bool = True
    check: Callable[[subprocess.CompletedProcess[str]], str | None] | None = None
    within: float = TIME_LIMIT
    python: bool = False


@dataclass(frozen=True)
class Case:
    """A named audit case: a function that builds its input in a fresh directory (and, for a kill
    loop, is told how many saves to kill)."""

    section: str
    name: str
    build: Callable[..., Command | list[Outcome]]
    kills: bool = False


def case(section: str, *, kills: bool = False) -> Callable[[Callable[..., Any]], Case]:
    """Make the decorated function a case of ``section``, named after the function (the audit runs
    every case of this module, in order); with ``kills`` it is called as ``build(tmp, kills)``."""
    def make(build: Callable[..., Any]) -> Case:
        return Case(section, build.__name__.replace("_", "-"), build, kills)
    return make


# --- crafting -----------------------------------------------------------------------------------------------


def rehash(folder: Path) -> None:
    """Rewrite meta.json's sizes and checksums, as the author of a hostile directory would."""
    meta = json.loads((folder / "meta.json").read_text())
    for name in meta["files"]:
        file = folder / name
        if file.is_file() and not file.is_symlink():
            data = file.read_bytes()
            meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "meta.json").write_text(json.dumps(meta))


def edit_json(file: Path, edit: Callable[[Any], Any]) -> None:
    """Apply ``edit`` to a JSON file (and rehash its model directory when it is one of its files)."""
    file.write_text(json.dumps(edit(json.loads(file.read_text()))))
    if (file.parent / "meta.json").exists() and file.name != "meta.json":
        rehash(file.parent)


class Planted:
    """A pickled payload: unpickling it writes ``marker`` and gives an ``nn.Identity``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return eval, (f"(open({str(self.marker)!r}, 'w').write('ran'), __import__('torch').nn.Identity())[1]",)


def plain_model(path: Path, seed: int = 0) -> Path:
    """A small model x:4 -> x:4 with no Opaque box."""
    return save(Model(Linear("f", X, X), seed=seed), path)


def evil_model(path: Path, marker: Path) -> Path:
    """A model with an Opaque box whose opaque.pt runs code (writing ``marker``) when unpickled."""
    save(Model(Linear("f", X, X) >> Opaque("op", X, X, module=nn.Identity())), path)
    torch.save({"op": Planted(marker)}, path / "opaque.pt")
    rehash(path)
    return path


def ran(marker: Path, should: bool) -> Callable[[subprocess.CompletedProcess[str]], str | None]:
    """A check: the planted code ran (``should``) or did not."""
    return lambda result: None if marker.exists() == should else "silent-wrong"


def diagram_model(path: Path, diagram: dict[str, Any], weights: bool = True) -> Path:
    """A saved model whose diagram.json is replaced by ``diagram`` (checksums redone); its weights are
    those of :func:`plain_model`, or none."""
    if weights:
        plain_model(path)
    else:
        save(Model(Copy(X)), path)
    (path / "diagram.json").write_text(json.dumps(diagram))
    rehash(path)
    return path


def spider(kind: str, n: int) -> dict[str, Any]:
    """A diagram of one spider box declaring ``n`` legs."""
    legs = ["x:4"] * min(n, 3)
    dom, cod = (["x:4"], legs) if kind == "Copy" else (legs, ["x:4"])
    return {"version": 1, "dom": dom, "cod": cod, "layers": [[0, 0]],
            "boxes": [{"kind": kind, "name": kind.lower(), "dom": dom, "cod": cod, "data": {"n": n}}]}


def growing(layers: int) -> dict[str, Any]:
    """A diagram whose every layer copies its last wire: ``layers + 1`` wires at the end."""
    box = {"kind": "Copy", "name": "copy", "dom": ["x:4"], "cod": ["x:4", "x:4"], "data": {"n": 2}}
    return {"version": 1, "dom": ["x:4"], "cod": ["x:4"] * (layers + 1), "boxes": [box],
            "layers": [[0, i] for i in range(layers)]}


def linear_box(**changes: Any) -> dict[str, Any]:
    """The JSON of box ``f`` (Linear x:4 -> x:4), with ``changes``."""
    return {"kind": "Linear", "name": "f", "dom": ["x:4"], "cod": ["x:4"], "data": {"bias": False}} | changes


def one_box(box: dict[str, Any]) -> dict[str, Any]:
    """A diagram of the single box ``box``."""
    return {"version": 1, "dom": box["dom"], "cod": box["cod"], "boxes": [box], "layers": [[0, 0]]}


def one_line(result: subprocess.CompletedProcess[str]) -> bool:
    """Whether a run ended as a user error should: status 1 and one short ``compinterp: error:`` line."""
    lines = [line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n")]   # a progress bar, cleared
    lines = [line for line in lines if line.strip()]
    return (result.returncode == 1 and len(lines) == 1 and lines[0].startswith("compinterp: error: ")
            and len(lines[0]) <= 1000)


# --- code execution on load ----------------------------------------------------------------------------------

SECTION_CODE = "code execution on load"


@case(SECTION_CODE)
def check_model_with_planted_code(tmp: Path) -> Command:
    marker = tmp / "marker"
    evil = evil_model(tmp / "evil", marker)
    return Command(["check", str(plain_model(tmp / "good")), str(evil), "--data", "gaussian:64"],
                   check=ran(marker, False))


@case(SECTION_CODE)
def check_interpretation_with_planted_code(tmp: Path) -> Command:
    marker = tmp / "marker"
    model = Model(Linear("f", X, X))
    path = Interpretation(model, boxes={"f": Opaque("g", X, X, module=nn.Identity())}).save(tmp / "interp")
    torch.save({"g": Planted(marker)}, path / "explanation" / "opaque.pt")
    rehash(path / "explanation")
    return Command(["check", str(save(model, tmp / "good")), str(path), "--data", "gaussian:64"],
                   check=ran(marker, False))


@case(SECTION_CODE)
def refine_model_with_planted_code(tmp: Path) -> Command:
    marker = tmp / "marker"
    evil = evil_model(tmp / "evil", marker)
    return Command(["refine", str(evil), "--out", str(tmp / "out"), "--data", "gaussian:64"], check=ran(marker, False))


@case(SECTION_CODE)
def info_never_unpickles(tmp: Path) -> Command:
    marker = tmp / "marker"
    return Command(["info", str(evil_model(tmp / "evil", marker))], fails=False, check=ran(marker, False))


@case(SECTION_CODE)
def draw_never_unpickles(tmp: Path) -> Command:
    marker = tmp / "marker"
    return Command(["draw", str(evil_model(tmp / "evil", marker)), "-o", str(tmp / "d.svg")], fails=False,
                   check=ran(marker, False))


@case(SECTION_CODE)
def demo_reusing_a_planted_model(tmp: Path) -> Command:
    from compinterp.tasks import digits
    marker = tmp / "marker"
    evil = evil_model(tmp / "demo" / "model", marker)
    task = digits.task()
    run = {"task": "digits", "model": task.default_model, "seed": 0, "recipe": task.recipe().to_json(),
           "options": dict(task.options), "test_accuracy": 1.0, "train_accuracy": 1.0, "epochs": 1, "seconds": 1.0}
    (evil / "train.json").write_text(json.dumps(run))
    return Command(["demo", "--out", str(tmp / "demo"), "--budget", "1"], check=ran(marker, False))


@case(SECTION_CODE)
def load_with_planted_code(tmp: Path) -> Command:
    marker = tmp / "marker"
    return Command([f"compinterp.load({str(evil_model(tmp / 'evil', marker))!r})"], python=True,
                   check=ran(marker, False))


@case(SECTION_CODE)
def load_trusting_the_code(tmp: Path) -> Command:
    marker = tmp / "marker"
    return Command([f"compinterp.load({str(evil_model(tmp / 'evil', marker))!r}, trust_code=True)"], python=True,
                   fails=False, check=ran(marker, True))


@case(SECTION_CODE)
def check_trusting_the_code(tmp: Path) -> Command:
    marker = tmp / "marker"
    evil = evil_model(tmp / "evil", marker)
    return Command(["check", str(plain_model(tmp / "good")), str(evil), "--data", "gaussian:64", "--trust-code"],
                   fails=False, check=ran(marker, True))


@case(SECTION_CODE)
def modules_keyed_by_module_path(tmp: Path) -> Command:
    marker = tmp / "marker"
    evil = evil_model(tmp / "evil", marker)

    def check(result: subprocess.CompletedProcess[str]) -> str | None:
        return None if "did you mean 'op'" in result.stderr and not marker.exists() else "silent-wrong"

    return Command([f"compinterp.load({str(evil)!r}, modules={{'params.op': __import__('torch').nn.Identity()}})"],
                   python=True, check=check)


@case(SECTION_CODE)
def modules_given_by_box_name(tmp: Path) -> Command:
    marker = tmp / "marker"
    evil = evil_model(tmp / "evil", marker)
    return Command([f"compinterp.load({str(evil)!r}, modules={{'op': __import__('torch').nn.Identity()}})"],
                   python=True, fails=False, check=ran(marker, False))


# --- hostile directories --------------------------------------------------------------------------------------

SECTION_HOSTILE = "hostile directories"


def short(result: subprocess.CompletedProcess[str]) -> str | None:
    """A check that the run's output is short (a message quoting a huge file is not a one-line error)."""
    return None if len(result.stdout) + len(result.stderr) < 2000 else "silent-wrong"


@case(SECTION_HOSTILE)
def copy_of_ten_million_wires(tmp: Path) -> Command:
    return Command(["info", str(diagram_model(tmp / "m", spider("Copy", 10 ** 7)))], within=20, check=short)


@case(SECTION_HOSTILE)
def spiders_of_a_billion_wires(tmp: Path) -> list[Outcome]:
    return [run_command(SECTION_HOSTILE, f"{kind.lower()}-of-a-billion-wires",
                        Command(["info", str(diagram_model(tmp / kind, spider(kind, 10 ** 9)))], within=20))
            for kind in ("Copy", "Add", "Mul")]


@case(SECTION_HOSTILE)
def wire_of_a_trillion_dimensions(tmp: Path) -> Command:
    box = linear_box(dom=["x:1000000000000"], cod=["x:1000000000000"])
    return Command(["info", str(diagram_model(tmp / "m", one_box(box)))], within=20)


@case(SECTION_HOSTILE)
def two_thousand_growing_layers_load_fast(tmp: Path) -> Command:
    return Command(["info", str(diagram_model(tmp / "m", growing(2000), weights=False)), "--json"], fails=False, within=30)


@case(SECTION_HOSTILE)
def layers_past_the_width_cap(tmp: Path) -> Command:
    return Command(["info", str(diagram_model(tmp / "m", growing(5000), weights=False))], within=20)


@case(SECTION_HOSTILE)
def chain_of_fifty_thousand_layers_loads_fast(tmp: Path) -> Command:
    from compinterp.syntax import Elementwise
    path = save(Model(Elementwise("relu", X)), tmp / "m")
    edit_json(path / "diagram.json", lambda obj: obj | {"layers": [[0, 0]] * 50_000})
    return Command(["info", str(path), "--json"], fails=False, within=30)


@case(SECTION_HOSTILE)
def fifo_files(tmp: Path) -> list[Outcome]:
    outcomes = []
    for name in ("diagram.json", "meta.json", "weights.safetensors"):
        path = plain_model(tmp / name)
        (path / name).unlink()
        os.mkfifo(path / name)
        outcomes.append(run_command(SECTION_HOSTILE, f"fifo-{name}", Command(["info", str(path)], within=20)))
    return outcomes


@case(SECTION_HOSTILE)
def links_to_dev_zero(tmp: Path) -> list[Outcome]:
    outcomes = []
    for name in ("diagram.json", "meta.json", "weights.safetensors"):
        path = plain_model(tmp / name)
        (path / name).unlink()
        (path / name).symlink_to("/dev/zero")
        for command in ("info", "check"):
            args = [command, str(path)] + ([str(path), "--data", "gaussian:8"] if command == "check" else [])
            outcomes.append(run_command(SECTION_HOSTILE, f"{command}-{name}-linked-to-dev-zero",
                                        Command(args, within=20)))
    return outcomes


def leaks(secret: Path) -> Callable[[subprocess.CompletedProcess[str]], str | None]:
    """A check that nothing about the file ``secret`` (its size, its hash) appears in the output."""
    data = secret.read_bytes()
    tells = (str(len(data)), hashlib.sha256(data).hexdigest()[:16])
    return lambda result: "silent-wrong" if any(t in result.stdout + result.stderr for t in tells) else None


@case(SECTION_HOSTILE)
def files_outside_the_directory(tmp: Path) -> list[Outcome]:
    secret = tmp / "secret.bin"
    secret.write_bytes(os.urandom(12345))
    outcomes = []
    for name in ("../secret.bin", str(secret), "weights.safetensors/../../secret.bin", "notes.txt"):
        path = plain_model(tmp / f"m{len(outcomes)}")
        listed = {name: {"bytes": 1, "sha256": "0" * 64}}
        edit_json(path / "meta.json", lambda meta: meta | {"files": meta["files"] | listed})
        command = Command(["info", str(path)], check=leaks(secret))
        outcomes.append(run_command(SECTION_HOSTILE, f"meta-lists-{name}", command))
    return outcomes


@case(SECTION_HOSTILE)
def meta_json_of_a_hundred_mebibytes(tmp: Path) -> Command:
    path = plain_model(tmp / "m")
    with open(path / "meta.json", "r+b") as f:
        f.truncate(100 * 2 ** 20)
    return Command(["info", str(path)], within=20)


@case(SECTION_HOSTILE)
def box_names_of_ten_and_a_hundred_megabytes(tmp: Path) -> list[Outcome]:
    outcomes = []
    for size in (10, 100):
        path = diagram_model(tmp / f"m{size}", one_box(linear_box(name="n" * (size * 10 ** 6))))
        for command in ("info", "draw"):
            args = [command, str(path)] + (["-o", str(tmp / "d.svg")] if command == "draw" else [])
            outcomes.append(run_command(SECTION_HOSTILE, f"{command}-box-name-of-{size}-mb",
                                        Command(args, within=20, check=short)))
    return outcomes


@case(SECTION_HOSTILE)
def weights_declared_a_petabyte(tmp: Path) -> Command:
    path = plain_model(tmp / "m")
    edit_json(path / "meta.json", lambda meta: meta | {
        "files": meta["files"] | {"weights.safetensors": meta["files"]["weights.safetensors"] | {"bytes": 2 ** 50}}})
    return Command(["info", str(path)], within=20)


@case(SECTION_HOSTILE)
def meta_json_lies_about_the_parameter_count(tmp: Path) -> Command:
    path = plain_model(tmp / "m")
    edit_json(path / "meta.json", lambda meta: meta | {"num_params": 1, "params": {"f": 1}})
    return Command(["info", str(path)])


# --- tracebacks instead of one-line errors ------------------------------------------------------------------

SECTION_TRACEBACK = "tracebacks instead of one-line errors"


@case(SECTION_TRACEBACK)
def box_kinds_that_are_not_strings(tmp: Path) -> list[Outcome]:
    outcomes = []
    for kind in (["Linear"], {"Linear": 1}, 7, None):
        path = diagram_model(tmp / type(kind).__name__, one_box(linear_box(kind=kind)))
        outcomes.append(run_command(SECTION_TRACEBACK, f"box-kind-{type(kind).__name__}", Command(["info", str(path)])))
    return outcomes


@case(SECTION_TRACEBACK)
def norm_eps_of_text(tmp: Path) -> Command:
    box = {"kind": "Norm", "name": "ln", "dom": ["x:4"], "cod": ["x:4"],
           "data": {"norm": "rms", "eps": "abc", "affine": True}}
    return Command(["info", str(diagram_model(tmp / "m", one_box(box)))])


@case(SECTION_TRACEBACK)
def json_nested_a_hundred_thousand_deep(tmp: Path) -> list[Outcome]:
    outcomes = []
    for name in ("meta.json", "diagram.json"):
        path = plain_model(tmp / name)
        (path / name).write_text("[" * 100_000 + "]" * 100_000)
        if name != "meta.json":
            rehash(path)
        outcomes.append(run_command(SECTION_TRACEBACK, f"{name}-nested-100000-deep", Command(["info", str(path)])))
    return outcomes


@case(SECTION_TRACEBACK)
def integers_of_five_thousand_digits(tmp: Path) -> list[Outcome]:
    outcomes = []
    edits = {"meta-version": ("meta.json", lambda meta: meta | {"format_version": "BIG"}),
             "meta-count": ("meta.json", lambda meta: meta | {"num_params": "BIG"}),
             "diagram-offset": ("diagram.json", lambda obj: obj | {"layers": [[0, "BIG"]]})}
    for label, (name, edit) in edits.items():
        path = plain_model(tmp / label)
        text = json.dumps(edit(json.loads((path / name).read_text())))
        (path / name).write_text(text.replace('"BIG"', "9" * 5000))
        if name != "meta.json":
            rehash(path)
        outcomes.append(run_command(SECTION_TRACEBACK, f"{label}-of-5000-digits", Command(["info", str(path)])))
    return outcomes


@case(SECTION_TRACEBACK)
def float8_weights_in_info(tmp: Path) -> Command:
    model = Model(Linear("f", X, X))
    with torch.no_grad():
        model.params["f"]["W"] = nn.Parameter(model.params["f"]["W"].to(torch.float8_e4m3fn), requires_grad=False)
    return Command(["info", str(save(model, tmp / "m"))], fails=False)


@case(SECTION_TRACEBACK)
def interpretation_map_given_as_text(tmp: Path) -> Command:
    from compinterp.interpretation import maps
    model = Model(Linear("f", X, X))
    path = Interpretation(model, wires={"x": maps.linear(torch.eye(4))}).save(tmp / "interp")
    edit_json(path / "interpretation.json",
              lambda obj: obj | {"wires": {name: "identity" for name in obj["wires"]}})
    return Command(["check", str(save(model, tmp / "good")), str(path), "--data", "gaussian:8"])


@case(SECTION_TRACEBACK)
def loads_racing_saves(tmp: Path) -> list[Outcome]:
    target = tmp / "m"
    models = [Model(Linear("f", Space("x", 64), Space("x", 64)), seed=seed) for seed in (1, 2)]
    save(models[0], target)
    weights = [m.box_params("f")["W"] for m in models]
    pid = os.fork()
    if pid == 0:
        try:
            for i in range(10 ** 6):
                save(models[i % 2], target)
        finally:
            os._exit(0)
    outcomes = []
    try:
        for i in range(200):
            name = f"load-racing-save-{i}"
            try:
                back = load(target).box_params("f")["W"]
                outcome = "clean" if any(torch.equal(back, w) for w in weights) else "lost"
                outcomes.append(Outcome(SECTION_TRACEBACK, name, outcome))
            except CompinterpError as err:          # a whole model was there: an error is wrong
                outcomes.append(Outcome(SECTION_TRACEBACK, name, "silent-wrong", f"error while racing: {err}"))
            except Exception as err:  # what the audit is looking for: anything but compinterp's own errors
                outcomes.append(Outcome(SECTION_TRACEBACK, name, "traceback", f"{type(err).__name__}: {err}"))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return outcomes


# --- interrupted writes ---------------------------------------------------------------------------------------

SECTION_WRITES = "interrupted writes"


def kill_loop(tmp: Path, kills: int, label: str, save_as: Callable[[str, Path], object],
              which: Callable[[Path], str | None], *, two_step: bool = False) -> list[Outcome]:
    """With the ``old`` model at a target, start saving the ``new`` one (``save_as(version, path)``) in a
    forked child ``kills`` times, SIGKILL it after a random delay, and check after each kill that the
    target loads as the old or the new model (``which``: ``"old"``, ``"new"`` or ``None``); then that
    one more save leaves no temporaries. ``two_step`` turns off the atomic exchange (the rename fallback)."""
    import compinterp.disk
    target = tmp / label / "target"

    def start(path: Path) -> int:
        pid = os.fork()
        if pid == 0:
            if two_step:
                compinterp.disk._exchange = lambda a, b: False
            try:
                save_as("new", path)
            finally:
                os._exit(0)
        return pid

    save_as("old", tmp / "scratch")
    begin = time.perf_counter()
    os.waitpid(start(tmp / "scratch"), 0)          # how long a whole save takes in a child
    span = (time.perf_counter() - begin) * 1.2
    save_as("old", target)
    outcomes = []
    for i in range(kills):
        pid = start(target)
        time.sleep(random.uniform(0, span))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            found = which(target)
        except CompinterpError as err:
            found, detail = None, str(err)
        else:
            detail = f"found {found}" if found else "neither the old nor the new model"
        outcomes.append(Outcome(SECTION_WRITES, f"{label}-kill-{i}", "clean" if found else "lost", detail))
        if found == "new":
            save_as("old", target)
        span *= 0.8 if found == "new" else 1.25              # kill around the swap, whatever the load
    save_as("new", target)
    left = sorted(p.name for p in target.parent.iterdir() if p.name != target.name)
    outcomes.append(Outcome(SECTION_WRITES, f"{label}-temporaries-cleaned", "lost" if left else "clean",
                            f"left: {left[:3]}" if left else ""))
    return outcomes


def state_of(model: Model) -> dict[str, torch.Tensor]:
    """A model's state, to compare a loaded one with."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def identify(states: dict[str, dict[str, torch.Tensor]], target: Path) -> str | None:
    """Which of ``states`` the model at ``target`` loads as exactly, if any."""
    back = load(target).state_dict()
    return next((version for version, state in states.items()
                 if back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)), None)


def big_models() -> dict[str, Model]:
    """Two models of about 3 MB each, the old and the new."""
    h = Space("h", 512)
    diagram = Linear("a", h, h) >> Linear("b", h, h) >> Linear("c", h, h)
    return {"old": Model(diagram, seed=1), "new": Model(diagram, seed=2)}


@case(SECTION_WRITES, kills=True)
def killed_saves(tmp: Path, kills: int) -> list[Outcome]:
    models = big_models()
    states = {version: state_of(model) for version, model in models.items()}
    return kill_loop(tmp, kills, "exchange", lambda version, path: save(models[version], path),
                     lambda path: identify(states, path))


@case(SECTION_WRITES, kills=True)
def killed_saves_renaming_in_two_steps(tmp: Path, kills: int) -> list[Outcome]:
    models = big_models()
    states = {version: state_of(model) for version, model in models.items()}
    return kill_loop(tmp, kills, "two-step", lambda version, path: save(models[version], path),
                     lambda path: identify(states, path), two_step=True)


@case(SECTION_WRITES, kills=True)
def killed_training_saves_keep_train_json(tmp: Path, kills: int) -> list[Outcome]:
    from compinterp.tasks import gates
    from compinterp.tasks.train import RUN_FILE, train
    runs = {version: train(gates.task(), seed=seed, epochs=1, progress=False)
            for version, seed in (("old", 0), ("new", 1))}
    states = {version: state_of(run.model) for version, run in runs.items()}

    def which(path: Path) -> str | None:
        version = identify(states, path)
        run = json.loads((path / RUN_FILE).read_text()) if (path / RUN_FILE).exists() else {}
        return version if version is not None and run.get("seed") == runs[version].seed else None

    return kill_loop(tmp, kills, "train", lambda version, path: runs[version].save(path), which)


@case(SECTION_WRITES)
def model_stranded_between_two_renames(tmp: Path) -> Command:
    path = plain_model(tmp / "m")
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = path.with_name(f".{path.name}.old-{int(child.stdout)}-{'0' * 32}")
    path.rename(aside)                                  # what a save killed between its two renames leaves

    def check(result: subprocess.CompletedProcess[str]) -> str | None:
        return None if path.is_dir() and not aside.exists() else "lost"

    return Command(["info", str(path)], fails=False, check=check)


# --- silently wrong numbers ------------------------------------------------------------------------------------

SECTION_NUMBERS = "silently wrong numbers"


def token_models(tmp: Path) -> tuple[Path, Path]:
    """Two token models (tokens:11 -> logits:11) of different seeds."""
    from compinterp.syntax import Embed
    tokens, h, logits = Space("tokens", 11), Space("h", 8), Space("logits", 11)
    return tuple(save(Model(Embed("embed", tokens, h) >> Linear("out", h, logits, bias=True), seed=seed),
                      tmp / f"tokens{seed}") for seed in (0, 1))


def hand_faithfulness(a: Model, b: Model, *xs: torch.Tensor) -> float:
    """``1 - FVU`` of ``b`` against ``a`` on ``xs``, written out: squared errors over the variance about the mean."""
    with torch.no_grad():
        ya, yb = a(*xs).double(), b(*xs).double()
    return float(1 - ((ya - yb) ** 2).sum() / ((ya - ya.mean(0)) ** 2).sum())


def faithfulness_is(want: float) -> Callable[[subprocess.CompletedProcess[str]], str | None]:
    """A check: the JSON report's end-to-end faithfulness equals ``want`` (to 1e-5)."""
    def check(result: subprocess.CompletedProcess[str]) -> str | None:
        got = json.loads(result.stdout)["end_to_end"]["faithfulness"]
        return None if abs(got - want) < 1e-5 else "silent-wrong"
    return check


@case(SECTION_NUMBERS)
def check_of_token_models_by_default(tmp: Path) -> Command:
    a, b = token_models(tmp)
    want = hand_faithfulness(load(a), load(b), torch.arange(11))      # every token, equally likely
    return Command(["check", str(a), str(b), "--json"], fails=False, check=faithfulness_is(want))


@case(SECTION_NUMBERS)
def check_of_token_models_on_generated_data(tmp: Path) -> list[Outcome]:
    from compinterp.data import gaussian
    from compinterp.semantics import inputs
    a, b = token_models(tmp)
    wires = inputs(load(a).plan)
    drawn = next(gaussian(5000).batches(5000, wires))[0]           # the samples the check draws, to score by hand
    if drawn.dtype != torch.long or drawn.shape != (5000,):
        return [Outcome(SECTION_NUMBERS, "check-of-token-models-on-gaussian", "silent-wrong",
                        f"generated {drawn.dtype} {tuple(drawn.shape)} for a token wire")]
    want = hand_faithfulness(load(a), load(b), drawn)
    outcomes = []
    for size in ("7", "256"):
        def check(result: subprocess.CompletedProcess[str]) -> str | None:
            report = json.loads(result.stdout)
            return None if report["samples"] == 5000 and abs(report["end_to_end"]["faithfulness"] - want) < 1e-5 \
                else "silent-wrong"
        outcomes.append(run_command(SECTION_NUMBERS, f"check-of-token-models-on-gaussian-batch-{size}",
                                    Command(["check", str(a), str(b), "--data", "gaussian:5000", "--batch-size",
                                             size, "--json"], fails=False, check=check)))
    return outcomes


def sequence_models(tmp: Path) -> tuple[Path, Path]:
    """Two small transformers on tokens:11 @ positions:6, of different seeds."""
    from compinterp.models import transformer
    diagram = transformer(11, 6, Space("logits", 11), width=8, heads=2, layers=1, hidden=8)
    return tuple(save(Model(diagram, seed=seed), tmp / f"seq{seed}") for seed in (0, 1))


@case(SECTION_NUMBERS)
def check_of_an_attention_model_at_two_batch_sizes(tmp: Path) -> list[Outcome]:
    a, b = sequence_models(tmp)
    found: dict[str, float] = {}
    outcomes = []
    for size in ("7", "256"):
        def check(result: subprocess.CompletedProcess[str], size: str = size) -> str | None:
            found[size] = json.loads(result.stdout)["end_to_end"]["faithfulness"]
            return None if len(found) < 2 or abs(found["7"] - found["256"]) < 1e-6 else "silent-wrong"
        outcomes.append(run_command(SECTION_NUMBERS, f"attention-check-batch-{size}",
                                    Command(["check", str(a), str(b), "--data", "gaussian:300", "--batch-size", size,
                                             "--json"], fails=False, check=check)))
    return outcomes


@case(SECTION_NUMBERS)
def refine_reports_a_held_out_figure(tmp: Path) -> Command:
    from compinterp.syntax import Elementwise
    path = save(Model(Linear("up", X, X, bias=True) >> Elementwise("relu", X) >> Linear("down", X, X)), tmp / "m")

    def check(result: subprocess.CompletedProcess[str]) -> str | None:
        found = json.loads(result.stdout)
        return None if found.get("held_out_faithfulness") is not None and found.get("search_data") else "silent-wrong"

    return Command(["refine", str(path), "--out", str(tmp / "out"), "--data", "gaussian:400", "--budget", "5",
                    "--json"], fails=False, check=check)


@case(SECTION_NUMBERS)
def one_dimensional_data_tensor(tmp: Path) -> Command:
    path = save(Model(Linear("f", Space("x", 64), Space("y", 2))), tmp / "m")
    torch.save(torch.randn(64), tmp / "data.pt")
    return Command(["check", str(path), str(path), "--data", str(tmp / "data.pt")])


@case(SECTION_NUMBERS)
def parameter_count_in_meta_json_is_not_trusted(tmp: Path) -> Command:
    path = plain_model(tmp / "m")
    edit_json(path / "meta.json", lambda meta: meta | {"num_params": 1})
    return Command(["info", str(path)])


@case(SECTION_NUMBERS)
def box_name_with_a_newline(tmp: Path) -> Command:
    return Command(["info", str(diagram_model(tmp / "m", one_box(linear_box(name="f\n"))))])


@case(SECTION_NUMBERS)
def negative_diagram_version(tmp: Path) -> Command:
    return Command(["info", str(diagram_model(tmp / "m", one_box(linear_box()) | {"version": -5}))])


# --- the command line -------------------------------------------------------------------------------------------

SECTION_CLI = "command-line friction"


def vector_model(path: Path, seed: int = 0) -> Path:
    """A model that is not polynomial, its output wire y:3 not named logits."""
    from compinterp.syntax import Elementwise
    return save(Model(Linear("up", X, X, bias=True) >> Elementwise("relu", X) >> Linear("down", X, Space("y", 3)),
                      seed=seed), path)


def holds(*texts: str, stream: str = "stdout") -> Callable[[subprocess.CompletedProcess[str]], str | None]:
    """A check: the run's ``stream`` holds every one of ``texts``."""
    return lambda result: None if all(t in getattr(result, stream) for t in texts) else "silent-wrong"


@case(SECTION_CLI)
def logits_on_an_output_not_named_logits(tmp: Path) -> list[Outcome]:
    a, b = vector_model(tmp / "a"), vector_model(tmp / "b", seed=1)

    def noted(result: subprocess.CompletedProcess[str]) -> str | None:
        report = json.loads(result.stdout)
        return None if report["end_to_end"]["top1"] is None and "--logits" in (report["note"] or "") \
            else "silent-wrong"

    def scored(result: subprocess.CompletedProcess[str]) -> str | None:
        return None if json.loads(result.stdout)["end_to_end"]["top1"] is not None else "silent-wrong"

    common = ["check", str(a), str(b), "--data", "gaussian:256", "--json"]
    return [run_command(SECTION_CLI, "no-logits-says-why", Command(common, fails=False, check=noted)),
            run_command(SECTION_CLI, "logits-named", Command([*common, "--logits", "y"], fails=False, check=scored))]


@case(SECTION_CLI)
def exact_data_on_a_model_that_is_not_polynomial(tmp: Path) -> Command:
    path = vector_model(tmp / "m")
    return Command(["check", str(path), str(path), "--data", "exact"], check=holds("gaussian", stream="stderr"))


@case(SECTION_CLI)
def refine_help_lists_its_default_passes(tmp: Path) -> Command:
    from compinterp.refinement.passes import default_passes
    names = ",".join(p if isinstance(p, str) else p.name for p in default_passes())
    return Command(["refine", "--help"], fails=False, check=holds(names))


@case(SECTION_CLI)
def info_into_a_closed_pipe(tmp: Path) -> list[Outcome]:
    path = plain_model(tmp / "m")
    script = f"{sys.executable!s} -c {json.dumps(CLI)} info {path} | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True, text=True, timeout=TIME_LIMIT)
    quiet = result.stderr.strip() == "" and result.stdout.count("\n") == 1
    return [Outcome(SECTION_CLI, "info-into-a-closed-pipe", "clean" if quiet else "traceback",
                    result.stderr.strip()[-160:])]


@case(SECTION_CLI)
def unknown_devices(tmp: Path) -> list[Outcome]:
    path = plain_model(tmp / "m")
    runs = {"check": ["check", str(path), str(path)], "refine": ["refine", str(path), "--out", str(tmp / "out")],
            "demo": ["demo", "--out", str(tmp / "demo")]}
    return [run_command(SECTION_CLI, f"{name}-device-{device}", Command([*argv, "--device", device]))
            for name, argv in runs.items() for device in ("bogus", "meta")]


@case(SECTION_CLI)
def refine_plot_with_a_wrong_suffix(tmp: Path) -> Command:
    path = plain_model(tmp / "m")
    out = tmp / "out"
    return Command(["refine", str(path), "--out", str(out), "--plot", str(tmp / "x.txt")], within=20,
                   check=lambda result: "silent-wrong" if out.exists() else None)


@case(SECTION_CLI)
def refine_out_that_cannot_be_written(tmp: Path) -> Command:
    path = plain_model(tmp / "m")
    (tmp / "file").write_text("not a directory")
    return Command(["refine", str(path), "--out", str(tmp / "file" / "out")], within=20)


@case(SECTION_CLI)
def negative_faithfulness_is_explained(tmp: Path) -> Command:
    a, b = token_models(tmp)
    return Command(["check", str(a), str(b)], fails=False, check=holds("below 0"))


# --- running ---------------------------------------------------------------------------------------------------

CASES = tuple(value for value in dict(globals()).values() if isinstance(value, Case))
"""Every case above, in order."""

KILLS = 40
"""Saves killed per kill case, by default."""


def limits() -> None:
    """Cap the child's address space (in the child, before it runs)."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_command(section: str, name: str, command: Command) -> Outcome:
    """Run ``command`` in a subprocess under the limits and classify what happened."""
    argv = [sys.executable, "-c", PYTHON.format(line=command.args[0])] if command.python \
        else [sys.executable, "-c", CLI, *command.args]
    env = os.environ | {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    start = time.perf_counter()
    try:
        raw = subprocess.run(argv, capture_output=True, timeout=command.within, preexec_fn=limits, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(section, name, "hang", f"still running after {command.within:.0f} s")
    result = subprocess.CompletedProcess(argv, raw.returncode, raw.stdout.decode(errors="replace"),
                                         raw.stderr.decode(errors="replace"))   # "\r" kept: progress bars clear with it
    seconds = time.perf_counter() - start
    detail = f"{seconds:.1f} s, exit {result.returncode}: " + (result.stderr.strip().splitlines() or [""])[-1][:160]
    if "Traceback (most recent call last)" in result.stderr or result.returncode not in (0, 1):
        return Outcome(section, name, "traceback", detail)
    if command.fails and not one_line(result):
        return Outcome(section, name, "silent-wrong" if result.returncode == 0 else "traceback", detail)
    if not command.fails and result.returncode != 0:
        return Outcome(section, name, "silent-wrong", detail)
    verdict = command.check(result) if command.check else None
    return Outcome(section, name, verdict or "clean", detail)


def run_case(item: Case, root: Path, kills: int) -> list[Outcome]:
    """Build and run one case in a fresh directory under ``root``."""
    tmp = root / item.name
    tmp.mkdir()
    try:
        built = item.build(tmp, kills) if item.kills else item.build(tmp)
    except Exception as err:  # a case that cannot even be built is reported, not fatal
        return [Outcome(item.section, item.name, "traceback", f"building the case failed: {type(err).__name__}: {err}")]
    return built if isinstance(built, list) else [run_command(item.section, item.name, built)]


def table(outcomes: Sequence[Outcome]) -> str:
    """The audit's table: per section and in total, how many cases were tried and how each ended."""
    sections = list(dict.fromkeys(o.section for o in outcomes))
    rows = [(section, [o for o in outcomes if o.section == section]) for section in sections]
    rows.append(("total", list(outcomes)))
    width = max(len(name) for name, _ in rows)
    head = f"{'section':<{width}}  {'tried':>5}  " + "  ".join(f"{o:>12}" for o in OUTCOMES)
    lines = [head, "-" * len(head)]
    for name, found in rows:
        counts = [sum(o.outcome == kind for o in found) for kind in OUTCOMES]
        lines.append(f"{name:<{width}}  {len(found):>5}  " + "  ".join(f"{c:>12}" for c in counts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the audit; print every case that is not clean (every case with ``-v``) and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="WORD", help="run only the cases whose name holds WORD")
    parser.add_argument("--kills", type=int, default=KILLS, help=f"saves killed per kill case (default: {KILLS})")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case, not only the failures")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    random.seed(0)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="compinterp-audit-") as root:
        for item in CASES:
            if args.only and args.only not in item.name:
                continue
            found = run_case(item, Path(root), args.kills)
            for outcome in found:
                if args.verbose or outcome.outcome != "clean":
                    print(f"{outcome.outcome:>12}  {outcome.section}: {outcome.name}  {outcome.detail}", flush=True)
            outcomes += found
    print()
    print(table(outcomes))
    return 0 if all(o.outcome == "clean" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
