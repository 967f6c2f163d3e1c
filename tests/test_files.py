"""Diagram serialisation and model files: round trips, and every way a file can be wrong."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import compinterp
from compinterp.errors import FormatError, ParameterError
from compinterp.files import FORMAT_VERSION, info, read_diagram, save
from compinterp.model import Model, load
from compinterp.syntax import (
    Add, Attention, Bilinear, Box, Copy, Diagram, Elementwise, Embed, Gated, Id, Linear, Mul, Norm, Opaque,
    Space, Swap, Unembed, chain, residual,
)
from compinterp.syntax.serialize import diagram_from_json, diagram_to_json
from support import rehash

TOK, R, H, LG = Space("tokens", 11), Space("resid", 8), Space("hidden", 6), Space("logits", 5)


def opaque_module(dtype: torch.dtype = torch.float32) -> nn.Module:
    """A module with parameters and buffers (a float vector and an int64 counter)."""
    module = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.LayerNorm(6))
    module.register_buffer("offset", torch.zeros(6))
    module.register_buffer("steps", torch.tensor(7))
    return module.to(dtype)


def every_kind(dtype: torch.dtype = torch.float32, module: nn.Module | None = None) -> Diagram:
    """A diagram using every box kind and a swap: tokens -> logits."""
    return chain(
        Embed("embed", TOK, R),
        residual(Norm("ln0", R, norm="layer") >> Attention("attn", R, heads=2, bias=True)),
        residual(Norm("ln1", R) >> Bilinear("mlp", R, R, hidden=12, bias=True)),
        residual(Gated("glu", R, R, hidden=10, activation="gelu")),
        Linear("up", R, H, bias=True),
        Copy(H),
        Elementwise("relu", H) @ Opaque("op", H, H, module=module or opaque_module(dtype)),
        Swap(H, H),
        Mul(H),
        Copy(H, 3),
        Add(H, 3),
        Unembed("unembed", H, LG, bias=True),
    )


def randomised(model: Model, seed: int = 1) -> Model:
    """Give every parameter and buffer non-default values, so a round trip that drops one is noticed."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.dtype) + 0.5)
    return model.eval()


def tokens() -> torch.Tensor:
    return torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(0))


def by_hand(model: Model, x: torch.Tensor) -> torch.Tensor:
    """The every_kind diagram's forward pass, written out in plain torch."""
    p = {name: dict(model.params[name].named_parameters()) for name in model.params if name != "op"}
    h = F.embedding(x, p["embed"]["W"])
    a = p["attn"]
    z = F.layer_norm(h, (8,), p["ln0"]["weight"], p["ln0"]["bias"], 1e-5)
    q, k, v = (F.linear(z, a[f"W{c}"], a[f"b{c}"]).unflatten(-1, (2, 4)).transpose(1, 2) for c in "qkv")
    h = h + F.linear(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(-2),
                     a["Wo"], a["bo"])
    m, z = p["mlp"], F.rms_norm(h, (8,), p["ln1"]["weight"], 1e-5)
    h = h + F.linear(F.linear(z, m["L"], m["l"]) * F.linear(z, m["R"], m["r"]), m["D"], m["d"])
    g = p["glu"]
    h = h + F.linear(F.gelu(F.linear(h, g["L"])) * F.linear(h, g["R"]), g["D"])
    u = F.linear(h, p["up"]["W"], p["up"]["b"])
    y = model.params["op"](u) * F.relu(u)
    return F.linear(3 * y, p["unembed"]["W"], p["unembed"]["b"])


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Model, Path]:
    model = randomised(Model(every_kind(), seed=3))
    return model, save(model, tmp_path / "model")


# --- diagram serialisation -------------------------------------------------------------------------------


def test_diagram_round_trip_every_kind() -> None:
    diagram = every_kind()
    obj = json.loads(json.dumps(diagram_to_json(diagram)))
    assert diagram_from_json(obj) == diagram
    names = [box["name"] for box in obj["boxes"]]
    assert len(names) == len(set(map(json.dumps, obj["boxes"])))          # each distinct box listed once
    assert len(obj["layers"]) == len(diagram.inside)
    assert [offset for _, offset in obj["layers"]] == [offset for offset, _ in diagram.walk()]


def test_shared_boxes_are_listed_once() -> None:
    x = Space("x", 4)
    f = Linear("f", x, x)
    obj = diagram_to_json(chain(f, f, f) @ Id(x))
    assert len(obj["boxes"]) == 1 and obj["layers"] == [[0, 0]] * 3


def test_long_chain_round_trips() -> None:
    x = Space("x", 3)
    diagram = chain(*[Linear(f"l{i}", x, x) if i % 2 else Elementwise("relu", x, name=f"a{i}") for i in range(1000)])
    back = diagram_from_json(json.loads(json.dumps(diagram_to_json(diagram))))
    assert back == diagram and len(back.inside) == 1000
    assert [box.name for box in back.boxes] == [box.name for box in diagram.boxes]


WIRES = [Space("a", 2), Space("b", 3)]


@st.composite
def layered(draw: st.DrawFn) -> Diagram:
    """A random diagram built layer by layer from copies, adds, swaps, maps and elementwise boxes."""
    current = draw(st.lists(st.sampled_from(WIRES), min_size=1, max_size=3))
    diagram = Id(Space(*[w.wires[0] for w in current]))
    for step in range(draw(st.integers(0, 12))):
        if not current:
            break
        i = draw(st.integers(0, len(current) - 1))
        w, rest = current[i], current[i + 1:]
        choice = draw(st.sampled_from(["copy", "map", "fn"] + (["swap"] if rest else [])
                                      + (["add"] if rest and rest[0] == w else [])))
        if choice == "copy":
            n = draw(st.integers(0, 2))
            box, made = Copy(w, n), [w] * n
        elif choice == "add":
            box, made = Add(w), [w]
        elif choice == "swap":
            box, made = Swap(w, rest[0]), [rest[0], w]
        elif choice == "fn":
            box, made = Elementwise(draw(st.sampled_from(["relu", "tanh"])), w), [w]
        else:
            other = draw(st.sampled_from(WIRES))
            box, made = Linear(f"f{step}", w, other), [other]
        left = Space(*[v.wires[0] for v in current[:i]])
        right = Space(*[v.wires[0] for v in current[i + len(box.dom):]])
        diagram = diagram >> Id(left) @ box @ Id(right)
        current = current[:i] + made + current[i + len(box.dom):]
    return diagram


@given(layered())
def test_random_diagrams_round_trip(diagram: Diagram) -> None:
    back = diagram_from_json(json.loads(json.dumps(diagram_to_json(diagram))))
    assert back == diagram
    assert list(back.walk()) == list(diagram.walk())


def _obj() -> dict:
    x, y = Space("x", 4), Space("y", 2)
    return diagram_to_json(residual(Linear("f", x, x)) >> Linear("out", x, y))


@pytest.mark.parametrize("edit, message", [
    ({"layers": [[0, 1]]}, "diagram layer 0 (box 'copy' (Copy x:4 -> x:4 @ x:4)): offset 1 leaves no room"),
    ({"layers": [[0, 0], [3, 1], [1, 0], [2, 0]]},
     "diagram layer 3 (box 'add' (Add x:4 @ x:4 -> x:4)): needs x:4 @ x:4 at offset 0 but the wires there are "
     "x:4 @ y:2"),
    ({"layers": [[0, 0], [1, 2]]}, "diagram layer 1 (box 'f' (Linear x:4 -> x:4)): offset 2 leaves no room for its "
                                   "1 input wire(s); the diagram has 2 wire(s) at this layer"),
    ({"layers": [[3, 0], [3, 0]]},
     "diagram layer 1 (box 'out' (Linear x:4 -> y:2)): needs x:4 at offset 0 but the wires there are y:2"),
    ({"layers": [[0, 0], [7, 0]]}, "diagram layer 1: box index 7 is out of range (there are 4 boxes)"),
    ({"layers": [[0, -1]]}, "diagram layer 0 (box 'copy' (Copy x:4 -> x:4 @ x:4)): negative offset -1"),
    ({"layers": [[0, "1"]]}, "diagram layer 0: expected [box index, offset], got [0, '1']"),
    ({"layers": [[0, 0]]}, "the layers end on x:4 @ x:4 but the output is declared as y:2"),
    ({"dom": ["x"]}, "the diagram's input: cannot read a wire from 'x'"),
    ({"version": 9}, "diagram JSON has version 9; this compinterp reads versions up to 1"),
])
def test_bad_diagram_json_names_layer_and_box(edit: dict, message: str) -> None:
    with pytest.raises(FormatError) as err:
        diagram_from_json(_obj() | edit)
    assert message in str(err.value)


def test_bad_box_entries_are_named() -> None:
    obj = _obj()
    obj["boxes"][1] = obj["boxes"][1] | {"kind": "Conv4d"}
    with pytest.raises(FormatError, match=r"diagram box 1 \('f'\): unknown box kind 'Conv4d'"):
        diagram_from_json(obj)
    obj = _obj()
    obj["boxes"][1] = obj["boxes"][1] | {"data": {}}
    with pytest.raises(FormatError, match=r"diagram box 1 \('f'\): its data \{\} does not fit a Linear box"):
        diagram_from_json(obj)
    obj = diagram_to_json(Elementwise("relu", Space("x", 2), name="act"))
    obj["boxes"][0]["data"]["fn"] = "sqrt"
    with pytest.raises(FormatError, match=r"diagram box 0 \('act'\): Elementwise box: unknown function 'sqrt'; choose one of identity"):
        diagram_from_json(obj)
    obj = _obj()
    del obj["boxes"][3]["cod"]
    with pytest.raises(FormatError, match=r"diagram box 3 \('out'\): a box needs 'kind', 'name', 'dom' and 'cod'"):
        diagram_from_json(obj)


def test_plain_boxes_cannot_be_written() -> None:
    x = Space("x", 2)
    with pytest.raises(FormatError, match=r"diagram layer 1: box 'g' \(Box x:2 -> x:2\) is a plain Box"):
        diagram_to_json(Linear("f", x, x) >> Box("g", x, x))


# --- model files: round trips ------------------------------------------------------------------------------


def test_round_trip_every_kind_is_bit_identical(saved: tuple[Model, Path]) -> None:
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["diagram.json", "meta.json", "opaque.pt", "weights.safetensors"]
    x = tokens()
    expected = model(x)
    torch.testing.assert_close(expected, by_hand(model, x), rtol=1e-5, atol=1e-5)
    back = load(path, trust_code=True)
    assert back.diagram == model.diagram
    assert torch.equal(back(x), expected)
    state, back_state = model.state_dict(), back.state_dict()
    assert list(back_state) == list(state)
    assert all(torch.equal(back_state[k], state[k]) and back_state[k].dtype == state[k].dtype for k in state)
    assert back.params["op"].steps.dtype == torch.int64 and back.params["op"].steps.item() == 7


def test_weights_are_keyed_box_dot_role(saved: tuple[Model, Path]) -> None:
    from safetensors import safe_open
    model, path = saved
    with safe_open(str(path / "weights.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"mlp.L", "mlp.d", "attn.Wq", "attn.bo", "ln0.bias", "op.0.weight", "op.offset", "op.steps"} <= keys
    assert keys == {k.removeprefix("params.") for k in model.state_dict()}


def test_meta_records_versions_counts_and_checksums(saved: tuple[Model, Path]) -> None:
    model, path = saved
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == "compinterp.model" and meta["format_version"] == FORMAT_VERSION
    assert meta["compinterp_version"] == compinterp.__version__ and meta["torch_version"] == torch.__version__
    assert meta["num_params"] == model.num_params() == sum(meta["params"].values())
    assert meta["params"]["mlp"] == 3 * 12 * 8 + 2 * 12 + 8
    for name, entry in meta["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes_round_trip(tmp_path: Path, dtype: torch.dtype) -> None:
    x = Space("x", 4)
    model = Model(residual(Norm("ln", x) >> Bilinear("mlp", x, x, hidden=8)) >> Linear("out", x, Space("y", 3)),
                  seed=5, dtype=dtype)
    back = load(save(model, tmp_path / "m"))
    assert {p.dtype for p in back.parameters()} == {dtype}
    inputs = torch.randn(6, 4, dtype=dtype)
    assert torch.equal(back(inputs), model(inputs))


def test_float64_model_with_opaque_round_trips(tmp_path: Path) -> None:
    model = randomised(Model(every_kind(torch.float64), dtype=torch.float64, seed=2))
    back = load(save(model, tmp_path / "m"), trust_code=True)
    assert back.params["op"][0].weight.dtype == torch.float64
    assert torch.equal(back(tokens()), model(tokens()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_loads_on_the_cpu(tmp_path: Path) -> None:
    model = randomised(Model(every_kind(), seed=3)).to("cuda")
    back = load(save(model, tmp_path / "m"), trust_code=True)
    assert {p.device.type for p in back.parameters()} == {"cpu"}
    assert torch.equal(back.to("cuda")(tokens().cuda()), model(tokens().cuda()))


def test_modules_argument_supplies_opaque_modules(saved: tuple[Model, Path]) -> None:
    model, path = saved
    (path / "opaque.pt").unlink()                   # not read when the modules are given
    fresh = opaque_module()
    back = load(path, modules={"op": fresh}).eval()
    assert back.params["op"] is fresh
    assert torch.equal(fresh.offset, model.params["op"].offset) and fresh.offset.abs().sum() > 0
    assert torch.equal(back(tokens()), model(tokens()))


def test_tied_weights_in_an_opaque_module(tmp_path: Path) -> None:
    x = Space("x", 4)
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = Model(Opaque("tied", x, x, module=nn.Sequential(first, nn.Tanh(), second)))
    back = load(save(model, tmp_path / "m"), trust_code=True)
    inputs = torch.randn(2, 4)
    assert torch.equal(back(inputs), model(inputs))
    assert back.params["tied"][0].weight is back.params["tied"][2].weight


def test_saving_over_a_model_replaces_it(saved: tuple[Model, Path]) -> None:
    _, path = saved
    x = Space("x", 3)
    other = Model(Linear("g", x, x), seed=9)
    assert save(other, path) == path
    assert sorted(p.name for p in path.iterdir()) == ["diagram.json", "meta.json", "weights.safetensors"]
    assert torch.equal(load(path).box_params("g")["W"], other.box_params("g")["W"])
    assert [p.name for p in path.parent.iterdir()] == ["model"]          # nothing left beside it


def test_model_save_method_and_lazy_exports(tmp_path: Path) -> None:
    model = Model(Linear("f", Space("x", 2), Space("y", 2)))
    path = model.save(tmp_path / "deep" / "m")
    assert compinterp.load(path).diagram == model.diagram
    assert read_diagram(path) == model.diagram


def test_info_without_building_the_model(saved: tuple[Model, Path]) -> None:
    model, path = saved
    summary = info(path)
    assert summary["dom"] == ["tokens:11"] and summary["cod"] == ["logits:5"]
    assert summary["num_params"] == model.num_params()
    rows = {(box["name"], box["dom"][0][0], len(box["cod"])): box for box in summary["boxes"]}
    assert len(rows) == len(summary["boxes"]) == 16
    assert rows[("attn", "r", 1)]["params"] == 4 * 8 * 8 + 4 * 8
    assert rows[("op", "h", 1)]["params"] == sum(p.numel() for p in model.params["op"].parameters())
    assert rows[("copy", "r", 2)]["uses"] == 3 and rows[("add", "r", 1)]["uses"] == 3
    assert rows[("copy", "h", 2)]["uses"] == rows[("copy", "h", 3)]["uses"] == 1
    assert "Swap" not in {box["kind"] for box in summary["boxes"]}


# --- model files: errors -----------------------------------------------------------------------------------


def test_missing_directory_and_files(saved: tuple[Model, Path], tmp_path: Path) -> None:
    _, path = saved
    with pytest.raises(FormatError, match="no model at .*nowhere: the directory does not exist"):
        load(tmp_path / "nowhere")
    with pytest.raises(FormatError, match="meta.json is a file, not a model directory"):
        load(path / "meta.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="empty is not a compinterp model directory: meta.json is missing"):
        load(tmp_path / "empty")
    (path / "weights.safetensors").unlink()
    with pytest.raises(FormatError, match=r"model/weights.safetensors is missing"):
        load(path)


def test_missing_diagram_file(saved: tuple[Model, Path]) -> None:
    _, path = saved
    (path / "diagram.json").unlink()
    with pytest.raises(FormatError, match=r"model/diagram.json is missing"):
        load(path)


def test_truncated_safetensors(saved: tuple[Model, Path]) -> None:
    _, path = saved
    file = path / "weights.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    with pytest.raises(FormatError, match=r"weights.safetensors is truncated or corrupted: .*deserializing header"):
        load(path)


def test_corrupted_safetensors_fails_its_checksum(saved: tuple[Model, Path]) -> None:
    _, path = saved
    file = path / "weights.safetensors"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF                                   # a flipped bit in a weight: the header still parses
    file.write_bytes(bytes(data))
    with pytest.raises(FormatError, match=r"weights.safetensors: checksum mismatch .* corrupted or was changed"):
        load(path)


def test_size_change_is_reported(saved: tuple[Model, Path]) -> None:
    _, path = saved
    file = path / "diagram.json"
    file.write_text(file.read_text() + "\n\n")
    with pytest.raises(FormatError, match=r"diagram.json is truncated or was changed: it has \d+ bytes, meta.json"):
        load(path)


def test_edited_diagram_fails_its_checksum(saved: tuple[Model, Path]) -> None:
    _, path = saved
    file = path / "diagram.json"
    file.write_text(file.read_text().replace('"heads": 2', '"heads": 4'))
    with pytest.raises(FormatError, match=r"diagram.json: checksum mismatch"):
        load(path)


@pytest.mark.parametrize("name", ["meta.json", "diagram.json"])
def test_invalid_json_names_file_and_line(saved: tuple[Model, Path], name: str) -> None:
    _, path = saved
    lines = (path / name).read_text().splitlines()
    lines[2] = lines[2] + ","                            # a trailing comma on line 3
    (path / name).write_text("\n".join(lines))
    with pytest.raises(FormatError, match=rf"{name}: invalid JSON at line [34], column \d+"):
        load(path)


def test_newer_format_version_is_refused(saved: tuple[Model, Path]) -> None:
    _, path = saved
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta | {"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(FormatError, match=rf"format_version {FORMAT_VERSION + 1} was written by a newer "
                                          rf"compinterp .* reads up to {FORMAT_VERSION}: upgrade compinterp"):
        load(path)


def test_not_a_manifest(saved: tuple[Model, Path]) -> None:
    _, path = saved
    (path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FormatError, match="not a compinterp model manifest .*'something-else'"):
        load(path)


def test_bad_layer_in_saved_diagram_names_file_layer_and_box(saved: tuple[Model, Path]) -> None:
    _, path = saved
    obj = json.loads((path / "diagram.json").read_text())
    obj["layers"][1][1] = 5
    (path / "diagram.json").write_text(json.dumps(obj))
    rehash(path)
    with pytest.raises(FormatError, match=r"diagram.json: diagram layer 1 \(box 'copy' \(Copy resid:8 -> "
                                          r"resid:8 @ resid:8\)\): offset 5 leaves no room"):
        load(path)


def _swap_weights(path: Path, other: Model, tmp_path: Path) -> None:
    donor = save(other, tmp_path / "donor")
    (path / "weights.safetensors").write_bytes((donor / "weights.safetensors").read_bytes())
    rehash(path)


def test_weights_that_do_not_match_the_diagram(tmp_path: Path) -> None:
    x = Space("x", 4)
    path = save(Model(Linear("f", x, Space("y", 2), bias=True)), tmp_path / "m")
    _swap_weights(path, Model(Linear("f", x, Space("y", 3), bias=True)), tmp_path)
    with pytest.raises(FormatError, match=r"weights.safetensors: box 'f' \(Linear\) parameter 'W' has shape "
                                          r"\(3, 4\); the diagram needs \(2, 4\)"):
        load(path)
    _swap_weights(path, Model(Linear("f", x, Space("y", 2))), tmp_path)
    with pytest.raises(FormatError, match=r"box 'f' \(Linear\) needs parameter 'b' of shape \(2,\), which is missing"):
        load(path)
    _swap_weights(path, Model(Linear("f", x, Space("y", 2), bias=True) >> Linear("g", Space("y", 2), x)),
                  tmp_path)
    with pytest.raises(FormatError, match=r"unexpected tensor 'g.W': no box of the diagram has that parameter"):
        load(path)


def test_opaque_weights_that_do_not_fit_the_module(saved: tuple[Model, Path]) -> None:
    _, path = saved
    with pytest.raises(FormatError, match=r"weights of Opaque box 'op' do not fit its module: .*size mismatch"):
        load(path, modules={"op": nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.LayerNorm(6))})


def test_missing_opaque_module(saved: tuple[Model, Path]) -> None:
    _, path = saved
    (path / "opaque.pt").unlink()
    with pytest.raises(FormatError, match=r"Opaque box 'op' has no module \(opaque.pt is missing\); "
                                          r"pass load\(\.\.\., modules=\{'op': module\}\)"):
        load(path)
    with pytest.raises(ParameterError, match="a module was given for 'nope', which is not an Opaque box"):
        load(path, modules={"op": opaque_module(), "nope": nn.Identity()})


def test_corrupted_pickle_is_never_unpickled(saved: tuple[Model, Path]) -> None:
    _, path = saved
    (path / "opaque.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(FormatError, match=r"opaque.pt is truncated or was changed"):
        load(path)


# --- saving: refusals and atomicity ------------------------------------------------------------------------


def test_refuses_to_overwrite_what_is_not_a_model(tmp_path: Path) -> None:
    model = Model(Linear("f", Space("x", 2), Space("x", 2)))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FormatError, match=r"refusing to overwrite .*photos: it is a non-empty directory that is "
                                          r"not a compinterp model"):
        save(model, folder)
    assert [p.name for p in folder.iterdir()] == ["cat.jpg"]
    with pytest.raises(FormatError, match=r"cannot save a model to .*cat.jpg: it is a file"):
        save(model, folder / "cat.jpg")
    (tmp_path / "empty").mkdir()
    assert load(save(model, tmp_path / "empty")).diagram == model.diagram


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_failed_save_leaves_the_old_model_untouched(saved: tuple[Model, Path], monkeypatch) -> None:
    model, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def crash(tensors: dict, filename: str) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("compinterp.files.save_file", crash)
    with pytest.raises(FormatError, match=r"cannot save a model to .*model: No space left on device"):
        save(Model(Linear("g", Space("x", 2), Space("x", 2))), path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert torch.equal(load(path, trust_code=True)(tokens()), model(tokens()))
    assert _leftovers(path.parent) == []


def test_failed_rename_restores_the_old_model(saved: tuple[Model, Path], monkeypatch) -> None:
    model, path = saved
    rename = os.rename
    monkeypatch.setattr("compinterp.disk._exchange", lambda a, b: False)   # the two-rename swap

    def flaky(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        if Path(dst) == path and ".saving-" in str(src):
            raise OSError(5, "Input/output error")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(FormatError, match="Input/output error"):
        save(Model(Linear("g", Space("x", 2), Space("x", 2))), path)
    monkeypatch.undo()
    assert torch.equal(load(path, trust_code=True)(tokens()), model(tokens()))
    assert _leftovers(path.parent) == []


def test_unsaveable_diagram_writes_nothing(tmp_path: Path) -> None:
    x = Space("x", 2)
    model = Model(Linear("f", x, x) >> Box("plain", x, x), rules={"Box": lambda box: lambda p, v: (v,)})
    with pytest.raises(FormatError, match=r"box 'plain' \(Box x:2 -> x:2\) is a plain Box"):
        save(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
