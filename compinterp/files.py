"""Saving and reading models: one directory holding the syntax, the weights and a manifest.

A model directory holds

* ``diagram.json``: the diagram (:mod:`compinterp.syntax.serialize`);
* ``weights.safetensors``: every parameter and buffer, keyed ``box.role``
  (``mlp0.L``; an Opaque box's module state as ``box.<its state_dict key>``);
* ``meta.json``: format name and ``format_version``, the compinterp and torch
  versions, the parameter count, each file's size and sha256, and ``ties`` when
  parameters are tied (``{"box.role": "other_box.role"}``: the key is not in the
  weights, it is the value's tensor);
* ``opaque.pt``: only when the diagram has Opaque boxes, their modules pickled
  with :func:`torch.save`.

Saving is atomic (:func:`compinterp.disk.write_directory`): files are written (and
flushed) into a temporary directory beside the target, which is then renamed into
place, so an error or a crash never leaves a half-written model where a good one
was. A model already there is first renamed aside to ``.<name>.old-*`` and deleted
once the new one is in place (restored if that rename fails); a crash in the
instant between the two renames leaves it there, whole.

This module sits below :mod:`compinterp.model`: :func:`save` takes any object shaped
like a :class:`~compinterp.Model` (``diagram``, ``boxes``, ``params``, ``num_params``)
and :func:`read_model` returns a saved model's parts, which
:func:`compinterp.model.load` (``compinterp.load``) builds into a Model.

>>> import tempfile
>>> import torch
>>> from compinterp.model import Model, load
>>> from compinterp.syntax import Space, Linear
>>> model = Model(Linear("f", Space("x", 3), Space("y", 2)))
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = save(model, Path(tmp) / "model")
...     print(sorted(p.name for p in path.iterdir()))
...     print(torch.equal(load(path)(torch.ones(3)), model(torch.ones(3))))
['diagram.json', 'meta.json', 'weights.safetensors']
True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import compinterp
from compinterp.disk import declares_format, read_json, sha256, write_directory
from compinterp.errors import CompinterpError, FormatError, ParameterError
from compinterp.syntax import Diagram, Kind, Swap
from compinterp.syntax.diagram import named_boxes
from compinterp.syntax.serialize import diagram_from_json, diagram_to_json

FORMAT = "compinterp.model"
"""The ``format`` written in every model's ``meta.json``."""

FORMAT_VERSION = 1
"""The newest ``format_version`` this library writes and reads."""

DIAGRAM, WEIGHTS, META, OPAQUE = "diagram.json", "weights.safetensors", "meta.json", "opaque.pt"


class ModelParts(NamedTuple):
    """What a model directory holds, read and checked, ready to build a :class:`~compinterp.Model` from."""

    diagram: Diagram
    """The syntax."""
    params: dict[str, dict[str, torch.Tensor]]
    """The parameters of each box that has some, ``{box name: {role: tensor}}``."""
    modules: dict[str, nn.Module]
    """The module of each Opaque box, its weights loaded."""
    ties: Mapping[str, str] = MappingProxyType({})
    """Tied parameters, ``{"box.role": "other_box.role"}`` (see :class:`~compinterp.Model`)."""


def save(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to the directory ``path`` (created, or replaced if it holds a compinterp model).

    ``model`` is a :class:`~compinterp.Model`, or anything with its ``diagram``, ``boxes``,
    ``params`` (an ``nn.Module`` holding each box's parameters, or an Opaque box's module,
    by box name), ``dom``, ``cod`` and ``num_params()``. Refuses a target that is a file
    or a non-empty directory that is not a compinterp model. Returns the directory's path.
    """
    if not _is_model_like(model):
        raise FormatError(f"save() takes a compinterp Model, got {type(model).__name__}")
    given, path = Path(path), Path(os.path.abspath(path))
    try:
        check_target(path)
    except OSError as err:
        raise FormatError(f"cannot save a model to {path}: {err.strerror or err}") from None
    write_directory(path, lambda staging: write_files(model, staging), "a model")
    return given


def read_model(path: str | os.PathLike[str], *, modules: Mapping[str, nn.Module] | None = None) -> ModelParts:
    """Read the parts of a model written by :func:`save`, checking versions, checksums and shapes
    (:func:`compinterp.model.load` builds the Model from them).

    Opaque boxes' modules come from ``modules`` (``{box name: module}``; only
    their weights are then read from ``weights.safetensors``), else from
    ``opaque.pt``. Reading ``opaque.pt`` unpickles it (``torch.load`` with
    ``weights_only=False``), which executes code stored in the file: read only
    directories you trust.
    """
    path = _model_dir(path)
    meta = _read_meta(path)
    files: dict[str, Any] = meta["files"]
    diagram = _read_diagram(path, files)
    tensors = _read_weights(path, files)
    weights = path / WEIGHTS
    try:
        boxes = named_boxes(diagram)
    except CompinterpError as err:
        raise FormatError(f"{path / DIAGRAM}: {err}") from None
    opaque = [name for name, box in boxes.items() if box.opaque]
    given = dict(modules or {})
    for name in given:
        if name not in opaque:
            raise ParameterError(f"a module was given for '{name}', which is not an Opaque box of the model "
                                 f"at {path}; its Opaque boxes: {', '.join(opaque) or 'none'}")
    ties = _read_ties(path, meta)
    params = {name: _box_params(box, tensors, weights, ties) for name, box in boxes.items()
              if not box.opaque and isinstance(box, Kind) and box.param_shapes()}
    if any(name not in given for name in opaque):
        given = _read_opaque(path, files, [name for name in opaque if name not in given]) | given
    for name in opaque:
        _load_module_state(name, given[name], tensors, weights)
    if tensors:
        raise FormatError(f"{weights}: unexpected tensor '{next(iter(tensors))}': no box of the diagram "
                          "has that parameter")
    return ModelParts(diagram, params, given, ties)


def read_diagram(path: str | os.PathLike[str]) -> Diagram:
    """Only the diagram of the model saved at ``path`` (checked against its checksum; no weights read)."""
    path = _model_dir(path)
    return _read_diagram(path, _read_meta(path)["files"])


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a saved model holds, without building it or unpickling anything; checks every file's checksum.

    Returns JSON: ``path``, versions, ``dom``/``cod``, ``num_params`` (total), ``recognised`` (the
    fraction of the parameters, tied ones once, in boxes that are not Opaque), ``ties``, ``files``
    (bytes each) and ``boxes``: one entry per distinct box in diagram order, with
    ``name``, ``kind``, ``dom``, ``cod``, ``data``, ``uses`` (how many layers) and
    ``params`` (numbers held by that box's parameters, shared boxes counted once
    in the total).
    """
    path = _model_dir(path)
    meta = _read_meta(path)
    diagram = _read_diagram(path, meta["files"])
    for name in meta["files"]:
        if name != DIAGRAM:
            _verify(path, meta["files"], name)
    counts = meta.get("params")
    if not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values()):
        raise FormatError(f"{path / META}: 'params' must map box names to parameter counts")
    if not isinstance(meta.get("num_params"), int):
        raise FormatError(f"{path / META}: 'num_params' must be an integer, got {meta.get('num_params')!r}")
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for _, box in diagram.walk():
        if isinstance(box, Swap):
            continue
        key = (box.name, box.kind, str(box.dom), str(box.cod))
        if key in rows:
            rows[key]["uses"] += 1
        else:
            rows[key] = {"name": box.name, "kind": box.kind, "dom": box.dom.to_json(), "cod": box.cod.to_json(),
                         "data": dict(box.data), "uses": 1, "params": counts.get(box.name, 0)}
    ties = _read_ties(path, meta)
    boxes = named_boxes(diagram)
    own = {name: n - sum(math.prod(boxes[name].param_shapes()[key.partition(".")[2]])
                         for key in ties if key.partition(".")[0] == name)
           for name, n in counts.items() if name in boxes}
    total = sum(own.values())
    recognised = sum(n for name, n in own.items() if not boxes[name].opaque) / total if total else 1.0
    return {"path": str(path), "format_version": meta["format_version"],
            "compinterp_version": meta.get("compinterp_version"), "torch_version": meta.get("torch_version"),
            "dom": diagram.dom.to_json(), "cod": diagram.cod.to_json(), "num_params": meta.get("num_params"),
            "recognised": recognised, "ties": ties,
            "files": {name: entry["bytes"] for name, entry in meta["files"].items()},
            "boxes": list(rows.values())}


def _model_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path`, checked to be an existing directory."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"no model at {path}: the directory does not exist")
    if not path.is_dir():
        raise FormatError(f"{path} is a file, not a model directory")
    return path


def check_target(path: str | os.PathLike[str]) -> Path:
    """``path`` as a place a model can be saved to (absent, empty, or a model directory), so that a
    command can refuse a bad ``--out`` before any work; raises naming the problem otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FormatError(f"cannot save a model to {path}: it is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not _is_model(path):
        raise FormatError(f"refusing to overwrite {path}: it is a non-empty directory that is not a "
                          f"compinterp model (no {META} with format {FORMAT!r})")
    return path


def _is_model(path: Path) -> bool:
    """Whether ``path`` holds a ``meta.json`` declaring a compinterp model (good or not)."""
    return declares_format(path, META, FORMAT)


def _is_model_like(model: Any) -> bool:
    """Whether ``model`` has what :func:`save` reads of a :class:`~compinterp.Model`."""
    return (isinstance(model, nn.Module) and isinstance(getattr(model, "diagram", None), Diagram)
            and isinstance(getattr(model, "params", None), nn.Module) and callable(getattr(model, "num_params", None))
            and isinstance(getattr(model, "boxes", None), Mapping))


def write_files(model: Any, folder: Path) -> None:
    """Write every file of ``model`` (as for :func:`save`) into the existing, empty directory ``folder``,
    ``meta.json`` (with the checksums) last; nothing is flushed or renamed (see
    :func:`compinterp.disk.write_directory`)."""
    diagram = json.dumps(diagram_to_json(model.diagram), indent=1)
    (folder / DIAGRAM).write_text(diagram + "\n", encoding="utf-8")
    ties = dict(getattr(model, "ties", None) or {})
    save_file(_state(model, skip=ties), str(folder / WEIGHTS))
    os.chmod(folder / WEIGHTS, (folder / DIAGRAM).stat().st_mode & 0o777)   # safetensors writes 0600
    opaque = {name: model.params[name] for name, box in model.boxes.items() if box.opaque}
    if opaque:
        torch.save(opaque, folder / OPAQUE)
    written = [DIAGRAM, WEIGHTS, *([OPAQUE] if opaque else [])]
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "compinterp_version": compinterp.__version__,
        "torch_version": torch.__version__,
        "num_params": model.num_params(),
        "params": {name: sum(p.numel() for p in model.params[name].parameters()) for name in model.params},
        "dom": model.dom.to_json(),
        "cod": model.cod.to_json(),
        "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
                  for name in written},
        **({"ties": ties} if ties else {}),
    }
    (folder / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def _state(model: Any, skip: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by ``box.role``, but those in ``skip`` (tied): on the CPU,
    contiguous, no two sharing memory."""
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for key, value in model.params.state_dict().items():
        if key in skip:
            continue
        if not isinstance(value, torch.Tensor):
            raise FormatError(f"cannot save box '{key.split('.')[0]}': its state entry '{key}' is a "
                              f"{type(value).__name__}, not a tensor")
        tensor = value.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in storages or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        storages.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    return out


def _read_meta(path: Path) -> dict[str, Any]:
    """The manifest, checked for format, version and a file table."""
    file = path / META
    if not file.exists():
        raise FormatError(f"{path} is not a compinterp model directory: {META} is missing")
    meta = read_json(file)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise FormatError(f"{file}: not a compinterp model manifest (format is {found!r}, expected {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatError(f"{file}: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{file}: format_version {version} was written by a newer compinterp "
                          f"({meta.get('compinterp_version', 'unknown')}); this one "
                          f"({compinterp.__version__}) reads up to {FORMAT_VERSION}: upgrade compinterp")
    files = meta.get("files")
    ok = isinstance(files, dict) and all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)
        for entry in files.values())
    if not ok:
        raise FormatError(f"{file}: 'files' must map each file name to its 'bytes' and 'sha256'")
    for name in (DIAGRAM, WEIGHTS):
        if name not in files:
            raise FormatError(f"{file} does not list {name}")
    return meta


def _verify(path: Path, files: Mapping[str, Any], name: str) -> Path:
    """Check that file ``name`` exists and has the size and sha256 that ``meta.json`` records."""
    file, entry = path / name, files.get(name)
    if entry is None:
        raise FormatError(f"{path / META} does not list {name}")
    if not file.is_file():
        raise FormatError(f"{file} is missing")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise FormatError(f"{file} is truncated or was changed: it has {size} bytes, "
                          f"{META} records {entry['bytes']}")
    digest = sha256(file)
    if digest != entry["sha256"]:
        raise FormatError(f"{file}: checksum mismatch (sha256 {digest[:16]}..., {META} records "
                          f"{entry['sha256'][:16]}...): the file is corrupted or was changed after saving")
    return file


def _read_diagram(path: Path, files: Mapping[str, Any]) -> Diagram:
    """The diagram: parsed, checked against its checksum, then rebuilt layer by layer."""
    file = path / DIAGRAM
    obj = read_json(file)
    _verify(path, files, DIAGRAM)
    try:
        return diagram_from_json(obj)
    except FormatError as err:
        raise FormatError(f"{file}: {err}") from None


def _read_weights(path: Path, files: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """All tensors of ``weights.safetensors``, by key; a damaged file is a :class:`FormatError`."""
    file = path / WEIGHTS
    if not file.is_file():
        raise FormatError(f"{file} is missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            keys = list(f.keys())
            _verify(path, files, WEIGHTS)
            return {key: f.get_tensor(key) for key in keys}
    except SafetensorError as err:
        raise FormatError(f"{file} is truncated or corrupted: {err}") from None


def _read_ties(path: Path, meta: Mapping[str, Any]) -> dict[str, str]:
    """The tied parameters ``meta.json`` records (none if it records none)."""
    ties = meta.get("ties", {})
    if not isinstance(ties, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ties.items()):
        raise FormatError(f"{path / META}: 'ties' must map 'box.role' to 'box.role', got {ties!r}")
    return ties


def _box_params(box: Kind, tensors: dict[str, torch.Tensor], weights: Path,
                ties: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Take box's parameters out of ``tensors``, checking that each is there with its shape
    (a tied one is left to the model, which takes its tensor from the parameter it is tied to)."""
    out = {}
    for role, shape in box.param_shapes().items():
        key = f"{box.name}.{role}"
        if key in ties:
            continue
        if key not in tensors:
            raise FormatError(f"{weights}: box '{box.name}' ({box.kind}) needs parameter '{role}' of shape "
                              f"{shape}, which is missing")
        tensor = tensors.pop(key)
        if tuple(tensor.shape) != shape:
            raise FormatError(f"{weights}: box '{box.name}' ({box.kind}) parameter '{role}' has shape "
                              f"{tuple(tensor.shape)}; the diagram needs {shape}")
        out[role] = tensor
    return out


def _read_opaque(path: Path, files: Mapping[str, Any], names: list[str]) -> dict[str, nn.Module]:
    """The pickled modules of Opaque boxes ``names`` from ``opaque.pt`` (checksum verified first)."""
    hint = f"pass load(..., modules={{'{names[0]}': module}})"
    if OPAQUE not in files or not (path / OPAQUE).exists():
        raise FormatError(f"{path}: Opaque box '{names[0]}' has no module ({OPAQUE} is missing); {hint}")
    file = _verify(path, files, OPAQUE)
    try:
        stored = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:  # unpickling can raise anything the pickled code raises
        raise FormatError(f"{file} cannot be unpickled: {type(err).__name__}: {err}") from None
    if not isinstance(stored, dict):
        raise FormatError(f"{file} should hold a dict of modules, found a {type(stored).__name__}")
    for name in names:
        if not isinstance(stored.get(name), nn.Module):
            raise FormatError(f"{file} has no module for Opaque box '{name}'; {hint}")
    return {name: stored[name] for name in names}


def _load_module_state(name: str, module: nn.Module, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    """Load Opaque box ``name``'s state (keys ``name.*``) from ``tensors`` into ``module``."""
    if not isinstance(module, nn.Module):
        raise ParameterError(f"the module given for Opaque box '{name}' is a {type(module).__name__}, "
                             "not a torch.nn.Module")
    prefix = f"{name}."
    state = {key[len(prefix):]: tensors.pop(key) for key in [k for k in tensors if k.startswith(prefix)]}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise FormatError(f"{weights}: the weights of Opaque box '{name}' do not fit its module: {detail}") from None
