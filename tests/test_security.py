"""Loading trusts nothing in a directory (issue 15): no code runs unless asked, hostile files are refused
cheaply with one-line errors, counts come from the weights, and saves leave the old or the new model."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import compinterp
from compinterp import disk
from compinterp.cli import main
from compinterp.errors import FormatError, ParameterError
from compinterp.files import info, read_diagram, read_model, save
from compinterp.interpretation import Interpretation, maps
from compinterp.model import Model, load
from compinterp.syntax import Elementwise, Linear, Opaque, Space, diagram_from_json
from compinterp.syntax.serialize import MAX_LAYERS, MAX_WIDTH
from support import rehash

X = Space("x", 4)


class Planted:
    """A pickled payload: unpickling it writes ``marker`` and gives an ``nn.Identity``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return eval, (f"(open({str(self.marker)!r}, 'w').write('ran'), __import__('torch').nn.Identity())[1]",)


def edit(file: Path, change: Callable[[Any], Any]) -> None:
    """Apply ``change`` to a JSON file, then redo its model directory's checksums."""
    file.write_text(json.dumps(change(json.loads(file.read_text()))))
    if file.name != "meta.json" and (file.parent / "meta.json").exists():
        rehash(file.parent)


def plant(path: Path, marker: Path, box: str = "op") -> Path:
    """Replace ``opaque.pt`` with one that writes ``marker`` when unpickled (checksums redone)."""
    torch.save({box: Planted(marker)}, path / "opaque.pt")
    rehash(path)
    return path


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return save(Model(Linear("f", X, X), seed=0), tmp_path / "plain")


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    path = save(Model(Linear("f", X, X) >> Opaque("op", X, X, module=nn.Identity())), tmp_path / "evil")
    return plant(path, tmp_path / "marker")


def one_line(err: pytest.ExceptionInfo[BaseException], limit: int = 1000) -> str:
    message = str(err.value)
    assert "\n" not in message and len(message) <= limit
    return message


@pytest.fixture
def alarm() -> Iterator[None]:
    """Fail a test that blocks (a FIFO read) instead of hanging the suite."""
    def fail(signum: int, frame: Any) -> None:
        raise TimeoutError("blocked")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# --- code execution on load ----------------------------------------------------------------------------------


def test_planted_code_does_not_run_without_trust_code(evil: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(FormatError, match=r"opaque.pt holds pickled code for Opaque box 'op', and unpickling runs "
                                          r"it: pass trust_code=True \(--trust-code\) .* modules=\{'op': module\}"):
        compinterp.load(evil)
    with pytest.raises(FormatError, match="holds pickled code"):
        read_model(evil)
    assert not marker.exists()


def test_planted_code_runs_with_trust_code(evil: Path, tmp_path: Path) -> None:
    model = compinterp.load(evil, trust_code=True)
    assert (tmp_path / "marker").read_text() == "ran" and isinstance(model.params["op"], nn.Identity)


def test_info_and_draw_never_unpickle(evil: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert info(evil)["num_params"] == 16 and read_diagram(evil).dom == X
    assert main(["info", str(evil)]) == 0 and main(["draw", str(evil), "-o", str(tmp_path / "d.svg")]) == 0
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("command", ["check", "refine"])
def test_cli_refuses_planted_code_without_trust_code(command: str, evil: Path, plain: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    args = {"check": ["check", str(plain), str(evil)], "refine": ["refine", str(evil), "--out", str(tmp_path / "o")]}
    assert main([*args[command], "--data", "gaussian:16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds pickled code for Opaque box 'op'" in err and "--trust-code" in err
    assert not (tmp_path / "marker").exists()


def test_cli_check_with_trust_code_runs_it(evil: Path, plain: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(plain), str(evil), "--data", "gaussian:16", "--trust-code", "--json"]) == 0
    assert (tmp_path / "marker").exists()


def test_interpretation_explanation_with_planted_code(tmp_path: Path) -> None:
    model = Model(Linear("f", X, X))
    path = Interpretation(model, boxes={"f": Opaque("g", X, X, module=nn.Identity())}).save(tmp_path / "interp")
    plant(path / "explanation", tmp_path / "marker", box="g")
    with pytest.raises(FormatError, match="explanation/opaque.pt holds pickled code for Opaque box 'g'"):
        Interpretation.load(path, model)
    assert not (tmp_path / "marker").exists()
    Interpretation.load(path, model, trust_code=True)
    assert (tmp_path / "marker").exists()


def test_demo_refuses_a_planted_model_it_would_reuse(tmp_path: Path) -> None:
    from compinterp.demo import run
    from compinterp.tasks import digits
    out = tmp_path / "demo"
    path = save(Model(Linear("f", X, X) >> Opaque("op", X, X, module=nn.Identity())), out / "model")
    plant(path, tmp_path / "marker")
    task = digits.task()
    (path / "train.json").write_text(json.dumps({
        "task": "digits", "model": task.default_model, "seed": 0, "recipe": task.recipe().to_json(),
        "options": dict(task.options)}))
    with pytest.raises(FormatError, match="holds pickled code"):
        run(out, budget=1, progress=False)
    assert not (tmp_path / "marker").exists()


def test_lm_demo_refuses_a_planted_model_it_would_reuse(tmp_path: Path) -> None:
    from compinterp import demo_lm
    from compinterp.tasks import text
    out = tmp_path / "lm"
    path = save(Model(Linear("f", X, X) >> Opaque("op", X, X, module=nn.Identity())), out / "model")
    plant(path, tmp_path / "marker")
    task = text.task(train_bytes=4096, test_bytes=4096)
    (path / "train.json").write_text(json.dumps({
        "task": "text", "model": task.default_model, "seed": 0, "recipe": task.recipe().to_json(),
        "options": json.loads(json.dumps(dict(task.options)))}))
    with pytest.raises(FormatError, match="holds pickled code"):
        demo_lm._model(out, task, 0, torch.device("cpu"), False, False)
    assert not (tmp_path / "marker").exists()


def test_modules_keys_say_which_box_was_meant(evil: Path) -> None:
    module = nn.Identity()
    assert isinstance(load(evil, modules={"op": module}).params["op"], nn.Identity)
    with pytest.raises(ParameterError, match=r"a module was given for 'params.op', which is not an Opaque box .*did "
                                             r"you mean 'op'\? .*its Opaque boxes: 'op'") as err:
        load(evil, modules={"params.op": module})
    one_line(err)
    with pytest.raises(ParameterError, match=r"'f' is a Linear box, whose parameters are read from "
                                             r"weights.safetensors.*its Opaque boxes: 'op'"):
        load(evil, modules={"f": module, "op": module})
    with pytest.raises(ParameterError, match="not a torch.nn.Module"):
        load(evil, modules={"op": lambda x: x})
    with pytest.raises(ParameterError, match=r"modules= takes \{Opaque box name: torch module\}"):
        load(evil, modules=[module])


def test_module_paths_suggest_their_box_names(tmp_path: Path) -> None:
    path = save(Model(Opaque("blocks_0", X, X, module=nn.Identity())), tmp_path / "m")
    with pytest.raises(ParameterError, match=r"did you mean 'blocks_0'\?.*'\.' as '_'"):
        load(path, modules={"blocks.0": nn.Identity()})


# --- hostile directories -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["diagram.json", "meta.json", "weights.safetensors"])
def test_fifos_are_refused_without_blocking(plain: Path, name: str, alarm: None) -> None:
    (plain / name).unlink()
    os.mkfifo(plain / name)
    for read in (load, info):
        with pytest.raises(FormatError, match=rf"{name} is a FIFO, not a regular file") as err:
            read(plain)
        one_line(err)


@pytest.mark.parametrize("name", ["diagram.json", "meta.json", "weights.safetensors"])
def test_links_are_not_followed(plain: Path, name: str) -> None:
    (plain / name).unlink()
    (plain / name).symlink_to("/dev/zero")
    for read in (load, info):
        with pytest.raises(FormatError, match=rf"{name} is a symbolic link: compinterp reads only regular files"):
            read(plain)


@pytest.mark.parametrize("name", ["../secret.bin", "{secret}", "weights.safetensors/../../secret.bin", "notes.txt",
                                  "opaque.pt/.."])
def test_only_known_files_are_read(plain: Path, tmp_path: Path, name: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(12345))
    name = name.format(secret=secret)
    edit(plain / "meta.json", lambda meta: meta | {"files": meta["files"] | {name: {"bytes": 1, "sha256": "0" * 64}}})
    for read in (load, info):
        with pytest.raises(FormatError, match="a model directory holds only diagram.json, weights.safetensors, "
                                              "opaque.pt") as err:
            read(plain)
        assert "12345" not in one_line(err) and hashlib.sha256(secret.read_bytes()).hexdigest()[:16] not in str(err)


def test_large_files_are_refused_before_reading(plain: Path) -> None:
    with open(plain / "meta.json", "r+b") as f:
        f.truncate(100 * 2 ** 20)                                 # sparse: 100 MiB of zeros
    with pytest.raises(FormatError, match=r"meta.json is too large: 104,857,600 bytes, more than the 67,108,864"):
        info(plain)


def test_declared_sizes_over_the_caps(plain: Path) -> None:
    def declare(name: str, size: int) -> Callable[[Any], Any]:
        return lambda meta: meta | {"files": meta["files"] | {name: meta["files"][name] | {"bytes": size}}}

    edit(plain / "meta.json", declare("weights.safetensors", 2 ** 50))
    with pytest.raises(FormatError, match=r"records weights.safetensors as 1,125,899,906,842,624 bytes, more than "
                                          r"the 1,099,511,627,776"):
        load(plain)
    edit(plain / "meta.json", declare("diagram.json", 2 ** 30))
    with pytest.raises(FormatError, match="records diagram.json as 1,073,741,824 bytes, more than the 67,108,864"):
        info(plain)


@pytest.mark.parametrize("name", ["meta.json", "diagram.json"])
def test_deep_json_is_a_format_error(plain: Path, name: str) -> None:
    (plain / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(FormatError, match=rf"{name}: JSON nested deeper than 64 levels"):
        load(plain)
    nested: Any = 1
    for _ in range(65):                                      # parses, but deeper than the cap
        nested = [nested]
    (plain / name).write_text(json.dumps({"a": nested}))
    with pytest.raises(FormatError, match=rf"{name}: JSON nested deeper than 64 levels"):
        info(plain)


@pytest.mark.parametrize("name, key", [("meta.json", "format_version"), ("meta.json", "num_params"),
                                       ("diagram.json", "layers")])
def test_huge_integers_are_a_format_error(plain: Path, name: str, key: str) -> None:
    obj = json.loads((plain / name).read_text())
    obj[key] = [[0, "BIG"]] if key == "layers" else "BIG"
    (plain / name).write_text(json.dumps(obj).replace('"BIG"', "9" * 5000))
    with pytest.raises(FormatError, match=rf"{name}: an integer of 5,000 digits; compinterp reads integers of up "
                                          "to 40 digits"):
        info(plain)


def box_json(**changes: Any) -> dict[str, Any]:
    return {"kind": "Linear", "name": "f", "dom": ["x:4"], "cod": ["x:4"], "data": {"bias": False}} | changes


def with_box(path: Path, box: dict[str, Any]) -> Path:
    edit(path / "diagram.json", lambda obj: obj | {"boxes": [box]})
    return path


@pytest.mark.parametrize("box, message", [
    (box_json(kind=["Linear"]), r"unknown box kind \['Linear'\] for box 'f'"),
    (box_json(kind={"Linear": 1}), r"unknown box kind \{'Linear': 1\}"),
    (box_json(kind="Norm", data={"norm": "rms", "eps": "abc", "affine": True}), r"does not fit a 'Norm' box"),
    (box_json(data=[1, 2]), r"'data' must be a JSON object"),
    (box_json(name="n" * 10 ** 7), r"diagram box 0 \('nnnn.*\.\.\.\): .*is not valid"),
    (box_json(dom=["x:1000000000000"]), r"cannot read a wire from 'x:1000000000000'"),
    (box_json(kind="Copy", name="copy", cod=["x:4"] * 3, data={"n": 10 ** 9}), r"n must be an integer from 0 to 1024"),
])
def test_bad_boxes_are_one_line_errors(plain: Path, box: dict[str, Any], message: str) -> None:
    with_box(plain, box)
    for read in (load, info, read_diagram):
        with pytest.raises(FormatError, match=message) as err:
            read(plain)
        one_line(err)


def test_parameter_counts_come_from_the_weights(plain: Path, tmp_path: Path) -> None:
    edit(plain / "meta.json", lambda meta: meta | {"num_params": 1})
    with pytest.raises(FormatError, match=r"meta.json records num_params 1, but the diagram and weights.safetensors "
                                          r"hold 16 parameters"):
        info(plain)
    edit(plain / "meta.json", lambda meta: meta | {"num_params": 16, "params": {"f": 3}})
    with pytest.raises(FormatError, match=r"records 3 parameters for box 'f', but .* give it 16"):
        load(plain)
    module = nn.Sequential(nn.Linear(4, 4))
    module.register_buffer("steps", torch.zeros(5))
    path = save(Model(Linear("f", X, X) >> Opaque("op", X, X, module=module)), tmp_path / "op")
    summary = info(path)
    assert summary["num_params"] == 16 + 20 and {b["name"]: b["params"] for b in summary["boxes"]}["op"] == 20
    edit(path / "meta.json", lambda meta: meta | {"params": {"f": 16, "op": 10 ** 6}})
    with pytest.raises(FormatError, match=r"records 1000000 parameters for Opaque box 'op', but its state in "
                                          r"weights.safetensors holds 25 numbers"):
        info(path)


def test_float8_weights_in_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = Model(Linear("f", X, X))
    with torch.no_grad():
        model.params["f"]["W"] = nn.Parameter(model.params["f"]["W"].to(torch.float8_e4m3fn), requires_grad=False)
    path = save(model, tmp_path / "m")
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_params"] == 16
    assert load(path).box_params("f")["W"].dtype == torch.float8_e4m3fn


def test_interpretation_files_are_checked(tmp_path: Path) -> None:
    model = Model(Linear("f", X, X))
    path = Interpretation(model, wires={"x": maps.linear(torch.eye(4))}).save(tmp_path / "interp")
    manifest = path / "interpretation.json"
    good = manifest.read_text()
    edit(manifest, lambda obj: obj | {"wires": {name: "identity" for name in obj["wires"]}})
    with pytest.raises(FormatError, match=r"wire 'x:4' must map to \{'image': wire name, 'map': \{'kind': ...\}\}"):
        Interpretation.load(path, model)
    manifest.write_text(good)
    rotated = Interpretation(model, wires={"x": maps.MAPS["rotation"](4, 4)}).save(tmp_path / "rotated")
    edit(rotated / "interpretation.json", lambda obj: obj | {"wires": {name: {**entry, "map": {**entry["map"],
         "dim": 10 ** 9}} for name, entry in obj["wires"].items()}})
    with pytest.raises(FormatError, match="the rotation map of wire 'x:4' declares dim 1000000000, which its tensors"):
        Interpretation.load(rotated, model)
    manifest.write_text("[" * 100_000)
    with pytest.raises(FormatError, match="no interpretation at"):
        Interpretation.load(path, model)


def test_train_json_is_read_bounded(plain: Path, alarm: None) -> None:
    from compinterp.tasks.train import read_run
    os.mkfifo(plain / "train.json")
    with pytest.raises(FormatError, match="train.json is a FIFO, not a regular file"):
        read_run(plain)


# --- loading is linear in the number of layers ---------------------------------------------------------------


def growing(layers: int) -> dict[str, Any]:
    """A diagram whose every layer copies its last wire: ``layers + 1`` wires at the end."""
    box = {"kind": "Copy", "name": "copy", "dom": ["x:4"], "cod": ["x:4", "x:4"], "data": {"n": 2}}
    return {"version": 1, "dom": ["x:4"], "cod": ["x:4"] * (layers + 1), "boxes": [box],
            "layers": [[0, i] for i in range(layers)]}


def test_reading_builds_no_type_per_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """discopy's constructors check every wire of every layer (quadratic in a wide diagram): reading builds
    each box's spaces once and no wire or layer through them."""
    from discopy.monoidal import Layer, Ty
    counts = {"ty": 0, "layer": 0}
    ty_init, layer_init = Ty.__init__, Layer.__init__

    def count(key: str, init: Callable[..., None]) -> Callable[..., None]:
        def counted(self: Any, *args: Any) -> None:
            counts[key] += 1
            init(self, *args)
        return counted

    monkeypatch.setattr(Ty, "__init__", count("ty", ty_init))
    monkeypatch.setattr(Layer, "__init__", count("layer", layer_init))
    for layers in (500, 2000):
        counts.update(ty=0, layer=0)
        diagram = diagram_from_json(growing(layers))
        assert len(diagram.inside) == layers and len(diagram.cod) == layers + 1
        assert counts["layer"] <= 1 and counts["ty"] <= 20          # the box's own, and the diagram's spaces


def test_diagram_sizes_are_capped() -> None:
    with pytest.raises(FormatError, match=rf"grows past {MAX_WIDTH:,} wires side by side"):
        diagram_from_json(growing(MAX_WIDTH + 10))
    obj = growing(1) | {"layers": [[0, 0]] * (MAX_LAYERS + 1)}
    with pytest.raises(FormatError, match=rf"has {MAX_LAYERS + 1:,} layers; compinterp reads at most {MAX_LAYERS:,}"):
        diagram_from_json(obj)


def test_a_long_chain_loads(tmp_path: Path) -> None:
    path = save(Model(Elementwise("relu", X)), tmp_path / "m")
    edit(path / "diagram.json", lambda obj: obj | {"layers": [[0, 0]] * 20_000})
    assert len(load(path).diagram.inside) == 20_000


# --- writes that survive any kill ----------------------------------------------------------------------------


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_stranded_old_model_is_put_back_by_load_and_by_save(plain: Path) -> None:
    expected = load(plain).box_params("f")["W"]
    aside = plain.with_name(f".{plain.name}.old-{dead_pid()}-{'a' * 32}")
    plain.rename(aside)                                 # a save killed between its two renames
    assert torch.equal(load(plain).box_params("f")["W"], expected)
    assert not aside.exists()
    plain.rename(aside)
    save(Model(Elementwise("relu", X)), plain.parent / "other")
    assert not plain.exists()                           # a save elsewhere leaves it be
    save(Model(Linear("g", X, X)), plain)               # the next save here puts it back, then replaces it
    assert not aside.exists() and read_diagram(plain).inside[0].boxes[0].name == "g"


def test_info_and_read_diagram_put_it_back_too(plain: Path) -> None:
    aside = plain.with_name(f".{plain.name}.old-{dead_pid()}-{'b' * 32}")
    plain.rename(aside)
    assert info(plain)["num_params"] == 16 and plain.is_dir()


def test_the_old_model_of_a_live_writer_is_left_alone(plain: Path) -> None:
    aside = plain.with_name(f".{plain.name}.old-{os.getpid()}-{'c' * 32}")
    plain.rename(aside)
    with pytest.raises(FormatError, match="the directory does not exist"):
        load(plain)
    assert aside.is_dir()


def test_temporaries_of_dead_writers_are_cleaned_by_the_next_save(plain: Path) -> None:
    dead, alive = dead_pid(), os.getpid()
    names = [f".{plain.name}.{kind}-{pid}-{'d' * 32}" for kind in ("saving", "old", "trash") for pid in (dead, alive)]
    names += [f".{plain.name}x.saving-{dead}-{'d' * 32}", f".{plain.name}.saving-{'d' * 32}"]
    for name in names:
        (plain.parent / name).mkdir()
        (plain.parent / name / "weights.safetensors").write_bytes(b"0" * 1000)
    save(Model(Linear("f", X, X), seed=1), plain)
    left = sorted(p.name for p in plain.parent.iterdir() if p.name.startswith("."))
    assert left == sorted([n for n in names if f"-{alive}-" in n] + names[-2:])


def test_sidecars_are_written_before_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compinterp.tasks import gates
    from compinterp.tasks.train import RUN_FILE, train
    seen: list[list[str]] = []
    swap = disk.swap_in

    def spy(staging: Path, path: Path) -> None:
        seen.append(sorted(p.name for p in staging.iterdir()))
        swap(staging, path)

    monkeypatch.setattr(disk, "swap_in", spy)
    run = train(gates.task(), seed=0, epochs=1, progress=False)
    path = run.save(tmp_path / "m")
    assert seen == [sorted([RUN_FILE, "diagram.json", "meta.json", "weights.safetensors"])]
    assert json.loads((path / RUN_FILE).read_text())["seed"] == 0
    with pytest.raises(FormatError, match="cannot save a sidecar file named 'meta.json'"):
        save(run.model, tmp_path / "m", sidecars={"meta.json": "{}"})
    with pytest.raises(FormatError, match=r"cannot save a sidecar file named '../x'"):
        save(run.model, tmp_path / "m", sidecars={"../x": "{}"})


def test_a_failed_exchange_leaves_the_old_model(plain: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p.name: p.read_bytes() for p in plain.iterdir()}

    def broken(a: Path, b: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(disk, "_exchange", broken)
    with pytest.raises(FormatError, match="Input/output error"):
        save(Model(Linear("g", X, X)), plain)
    assert {p.name: p.read_bytes() for p in plain.iterdir()} == before
    assert [p.name for p in plain.parent.iterdir() if p.name.startswith(".")] == []


def test_a_directory_swapped_while_read_is_read_again(plain: Path, tmp_path: Path) -> None:
    with disk.Folder(plain) as folder:
        plain.rename(tmp_path / "gone")
        save(Model(Linear("g", X, X)), plain)
        (tmp_path / "gone" / "meta.json").unlink()
        with pytest.raises(disk.Moved, match="was replaced while it was read"):
            folder.json("meta.json")
