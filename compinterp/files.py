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
  with :func:`torch.save`;
* sidecar files a caller adds (``train.json``), which reading ignores.

Saving is atomic (:func:`compinterp.disk.write_directory`): files, sidecars included,
are written (and flushed) into a temporary directory beside the target, which is
then swapped in, so the target holds the old or the new model at every instant
(or, where the system cannot exchange two directories, a killed save leaves the
old one aside and the next load or save puts it back).

Reading trusts nothing in the directory (see ``docs/security.md``): files are read
as regular files only, capped in size, from one opened directory; only the file
names above are read; every parse failure is a :class:`~compinterp.errors.FormatError`;
parameter counts are computed from the weights' header and the diagram, and a
``meta.json`` that disagrees is refused. ``opaque.pt`` is a pickle, and unpickling
runs code: it is read only with ``trust_code=True``.

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
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, NamedTuple, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

import compinterp
from compinterp.disk import (
    MAX_FILE_BYTES, MAX_JSON_BYTES, Folder, Moved, declares_format, descriptor_path, parse_json, recover, sha256,
    shown, write_directory,
)
from compinterp.errors import CompinterpError, FormatError, ParameterError
from compinterp.syntax import Diagram, Kind, Swap
from compinterp.syntax.diagram import named_boxes
from compinterp.syntax.serialize import diagram_from_json, diagram_to_json

FORMAT = "compinterp.model"
"""The ``format`` written in every model's ``meta.json``."""

FORMAT_VERSION = 1
"""The newest ``format_version`` this library writes and reads."""

DIAGRAM, WEIGHTS, META, OPAQUE = "diagram.json", "weights.safetensors", "meta.json", "opaque.pt"
FILES = (DIAGRAM, WEIGHTS, OPAQUE)
"""The only files ``meta.json`` may list: reading never opens any other name."""

_SIDECAR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ATTEMPTS = 3
"""How many times a read starts over when a concurrent save swaps the directory under it."""
_T = TypeVar("_T")


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


def save(model: Any, path: str | os.PathLike[str], *, sidecars: Mapping[str, str] | None = None) -> Path:
    """Write ``model`` to the directory ``path`` (created, or replaced if it holds a compinterp model).

    ``model`` is a :class:`~compinterp.Model`, or anything with its ``diagram``, ``boxes``,
    ``params`` (an ``nn.Module`` holding each box's parameters, or an Opaque box's module,
    by box name), ``dom``, ``cod`` and ``num_params()``. ``sidecars`` are more text files,
    ``{file name: text}`` (``train.json``), written with the model before it is swapped in.
    Refuses a target that is a file or a non-empty directory that is not a compinterp
    model. Returns the directory's path.
    """
    if not _is_model_like(model):
        raise FormatError(f"save() takes a compinterp Model, got {type(model).__name__}")
    extra = dict(sidecars or {})
    for name, text in extra.items():
        if not isinstance(name, str) or not _SIDECAR.fullmatch(name) or name in (*FILES, META):
            raise FormatError(f"cannot save a sidecar file named {shown(name, 60)}: use a plain file name, not "
                              f"one of the model's own ({', '.join((*FILES, META))})")
        if not isinstance(text, str):
            raise FormatError(f"sidecar file {name} must be text, got {type(text).__name__}")
    given, path = Path(path), Path(os.path.abspath(path))
    try:
        check_target(path)
    except OSError as err:
        raise FormatError(f"cannot save a model to {path}: {err.strerror or err}") from None

    def write(staging: Path) -> None:
        write_files(model, staging)
        for name, text in extra.items():
            (staging / name).write_text(text, encoding="utf-8")

    write_directory(path, write, "a model")
    return given


def read_model(path: str | os.PathLike[str], *, modules: Mapping[str, nn.Module] | None = None,
               trust_code: bool = False) -> ModelParts:
    """Read the parts of a model written by :func:`save`, checking versions, checksums, shapes and
    parameter counts (:func:`compinterp.model.load` builds the Model from them).

    Opaque boxes' modules come from ``modules`` (``{box name: module}``; only
    their weights are then read from ``weights.safetensors``), else from
    ``opaque.pt``. Reading ``opaque.pt`` unpickles it (``torch.load`` with
    ``weights_only=False``), which executes code stored in the file: it is
    refused unless ``trust_code=True``, which you pass only for directories
    you trust.
    """
    given = _modules(modules)
    return _reading(path, lambda folder: _read_model(folder, given, trust_code))


def read_diagram(path: str | os.PathLike[str]) -> Diagram:
    """Only the diagram of the model saved at ``path`` (checked against its checksum; no weights read)."""
    return _reading(path, lambda folder: _read_diagram(folder, _read_meta(folder)["files"]))


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a saved model holds, without building it or unpickling anything; checks every file's checksum.

    Returns JSON: ``path``, versions, ``dom``/``cod``, ``num_params`` (total), ``recognised`` (the
    fraction of the parameters, tied ones once, in boxes that are not Opaque), ``ties``, ``files``
    (bytes each) and ``boxes``: one entry per distinct box in diagram order, with
    ``name``, ``kind``, ``dom``, ``cod``, ``data``, ``uses`` (how many layers) and
    ``params`` (numbers held by that box's parameters, shared boxes counted once
    in the total). The counts are computed from the diagram and the weights' header.
    """
    return _reading(path, _info)


def read_weights(path: str | os.PathLike[str]) -> tuple[Diagram, dict[str, torch.Tensor]]:
    """The diagram and every stored tensor (by key ``box.role``) of the model saved at ``path``, every file
    checked as by :func:`info`; nothing unpickled."""
    def read(folder: Folder) -> tuple[Diagram, dict[str, torch.Tensor]]:
        contents = _contents(folder, tensors=True)
        return contents.diagram, contents.tensors

    return _reading(path, read)


def _info(folder: Folder) -> dict[str, Any]:
    """:func:`info` of an opened model directory."""
    contents = _contents(folder, tensors=False)
    diagram, boxes, counts, files = contents.diagram, contents.boxes, contents.counts, contents.meta["files"]
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for _, box in diagram.walk():
        if isinstance(box, Swap):
            continue
        key = (box.name, box.kind, str(box.dom), str(box.cod))
        if key in rows:
            rows[key]["uses"] += 1
        else:
            rows[key] = {"name": box.name, "kind": box.kind, "dom": box.dom.to_json(), "cod": box.cod.to_json(),
                         "data": dict(box.data), "uses": 1, "params": counts.per_box.get(box.name, 0)}
    total = counts.total
    recognised = sum(n for name, n in counts.own.items() if not boxes[name].opaque) / total if total else 1.0
    meta = contents.meta
    return {"path": str(folder.path), "format_version": meta["format_version"],
            "compinterp_version": meta.get("compinterp_version"), "torch_version": meta.get("torch_version"),
            "dom": diagram.dom.to_json(), "cod": diagram.cod.to_json(), "num_params": total,
            "recognised": recognised, "ties": contents.ties,
            "files": {name: entry["bytes"] for name, entry in files.items()},
            "boxes": list(rows.values())}


class _Contents(NamedTuple):
    """What a model directory holds, every file checked (``opaque.pt`` not unpickled)."""

    meta: dict[str, Any]
    diagram: Diagram
    boxes: dict[str, Any]
    ties: dict[str, str]
    counts: _Counts
    tensors: dict[str, torch.Tensor]
    """Every stored tensor by key (empty unless asked for)."""


def _contents(folder: Folder, *, tensors: bool) -> _Contents:
    """Read and check an opened model directory: the manifest, the diagram, the ties, the weights' header
    against the diagram and the manifest's counts, ``opaque.pt``'s checksum; with ``tensors``, every
    stored tensor too."""
    meta = _read_meta(folder)
    files = meta["files"]
    diagram = _read_diagram(folder, files)
    boxes = _named(folder, diagram)
    ties = _read_ties(folder, meta, boxes)
    counts, stored = _tensors(folder, meta, boxes, ties, load=tensors)
    if OPAQUE in files:
        _verify(folder, files, OPAQUE)
    return _Contents(meta, diagram, boxes, ties, counts, stored)


def _reading(path: str | os.PathLike[str], read: Callable[[Folder], _T]) -> _T:
    """``read`` the model directory at ``path`` (put back first if a killed save left it aside), opened
    once; started over if a concurrent save swaps the directory meanwhile."""
    path = _model_dir(path)
    attempts = _ATTEMPTS
    while True:
        attempts -= 1
        try:
            with Folder(path) as folder:
                return read(folder)
        except Moved:
            if not attempts:
                raise


def _model_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path`, checked to be an existing directory (or the one a killed save left
    aside, put back)."""
    path = Path(path)
    path = recover(path) or path
    if not path.exists():
        raise FormatError(f"no model at {path}: the directory does not exist")
    if not path.is_dir():
        raise FormatError(f"{path} is a file, not a model directory")
    return path


def check_target(path: str | os.PathLike[str]) -> Path:
    """``path`` as a place a model can be saved to (absent, empty, or a model directory, under a directory
    this process may write to), so that a command can refuse a bad ``--out`` before any work; raises naming
    the problem otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FormatError(f"cannot save a model to {path}: it is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not _is_model(path):
        raise FormatError(f"refusing to overwrite {path}: it is a non-empty directory that is not a "
                          f"compinterp model (no {META} with format {FORMAT!r})")
    full = path.absolute()
    parent = next(p for p in full.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK) \
            or (full.is_dir() and not os.access(full, os.W_OK | os.X_OK)):
        where = full if full.is_dir() else parent
        raise FormatError(f"cannot save a model to {path}: {where} is not a directory this process may write to")
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


def _read_model(folder: Folder, given: dict[str, nn.Module], trust_code: bool) -> ModelParts:
    """:func:`read_model` of an opened model directory."""
    meta = _read_meta(folder)
    files: dict[str, Any] = meta["files"]
    diagram = _read_diagram(folder, files)
    boxes = _named(folder, diagram)
    opaque = [name for name, box in boxes.items() if box.opaque]
    _check_modules(folder.path, boxes, given)
    ties = _read_ties(folder, meta, boxes)
    weights = folder.path / WEIGHTS
    _, tensors = _tensors(folder, meta, boxes, ties, load=True)
    params = {name: _box_params(box, tensors, ties) for name, box in boxes.items()
              if not box.opaque and isinstance(box, Kind) and box.param_shapes()}
    needed = [name for name in opaque if name not in given]
    modules = (_read_opaque(folder, files, needed, trust_code) if needed else {}) | given
    for name in opaque:
        _load_module_state(name, modules[name], tensors, weights)
    return ModelParts(diagram, params, modules, ties)


def _modules(modules: Mapping[str, nn.Module] | None) -> dict[str, nn.Module]:
    """The ``modules=`` argument as a dict, checked to map names to torch modules."""
    if modules is None:
        return {}
    if not isinstance(modules, Mapping):
        raise ParameterError(f"modules= takes {{Opaque box name: torch module}}, got a {type(modules).__name__}")
    for name, module in modules.items():
        if not isinstance(module, nn.Module):
            raise ParameterError(f"the module given for Opaque box {shown(name, 60)} is a {type(module).__name__}, "
                                 "not a torch.nn.Module")
    return dict(modules)


def _check_modules(path: Path, boxes: Mapping[str, Any], given: Mapping[str, nn.Module]) -> None:
    """Refuse a ``modules=`` key that is not an Opaque box of the model, saying which name was meant."""
    opaque = [name for name, box in boxes.items() if box.opaque]
    listed = ", ".join(f"'{name}'" for name in opaque) or "none"
    for key in given:
        if key in opaque:
            continue
        if not isinstance(key, str):
            raise ParameterError(f"modules= keys are Opaque box names (strings), got {shown(key, 60)}; "
                                 f"the Opaque boxes of the model at {path}: {listed}")
        guess = key.removeprefix("params.").replace(".", "_")
        hint = next((f"; did you mean '{name}'? (box names write a module path's '.' as '_')"
                     for name in opaque if name in (guess, f"{guess}_glue")), "")
        if key in boxes:
            hint = (f"; '{key}' is a {boxes[key].kind} box, whose parameters are read from {WEIGHTS}: modules= "
                    "takes only Opaque boxes")
        raise ParameterError(f"a module was given for {shown(key, 60)}, which is not an Opaque box of the model "
                             f"at {path}{hint}; its Opaque boxes: {listed}")


def _named(folder: Folder, diagram: Diagram) -> dict[str, Any]:
    """The diagram's boxes by name; a name given to two different boxes is a :class:`FormatError`."""
    try:
        return named_boxes(diagram)
    except CompinterpError as err:
        raise FormatError(f"{folder.path / DIAGRAM}: {err}") from None


def _read_meta(folder: Folder) -> dict[str, Any]:
    """The manifest, checked for format, version and a file table listing only known files."""
    file = folder.path / META
    if not folder.exists(META):
        folder.check_moved()
        raise FormatError(f"{folder.path} is not a compinterp model directory: {META} is missing")
    meta = folder.json(META)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise FormatError(f"{file}: not a compinterp model manifest (format is {shown(found, 60)}, "
                          f"expected {FORMAT!r})")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise FormatError(f"{file}: format_version must be a positive integer, got {shown(version, 60)}")
    if version > FORMAT_VERSION:
        raise FormatError(f"{file}: format_version {version} was written by a newer compinterp "
                          f"({shown(meta.get('compinterp_version', 'unknown'), 40)}); this one "
                          f"({compinterp.__version__}) reads up to {FORMAT_VERSION}: upgrade compinterp")
    files = meta.get("files")
    if not isinstance(files, dict):
        raise FormatError(f"{file}: 'files' must map each file name to its 'bytes' and 'sha256'")
    for name, entry in files.items():
        if name not in FILES:
            raise FormatError(f"{file} lists a file {shown(name, 60)}; a model directory holds only "
                              f"{', '.join(FILES)}, and nothing else is read")
        ok = (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and _SHA256.fullmatch(entry["sha256"])
              and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool) and entry["bytes"] >= 0)
        if not ok:
            raise FormatError(f"{file}: the entry of {name} must give its size in 'bytes' and its 'sha256' "
                              f"(64 hex digits), got {shown(entry)}")
        cap = MAX_JSON_BYTES if name == DIAGRAM else MAX_FILE_BYTES
        if entry["bytes"] > cap:
            raise FormatError(f"{file} records {name} as {entry['bytes']:,} bytes, more than the {cap:,} "
                              "compinterp reads")
    for name in (DIAGRAM, WEIGHTS):
        if name not in files:
            raise FormatError(f"{file} does not list {name}")
    return meta


def _size_and_digest(folder: Folder, name: str, size: int, digest: str, entry: Mapping[str, Any]) -> None:
    """Check a file's size and sha256 against its entry in ``meta.json``."""
    file = folder.path / name
    if size != entry["bytes"]:
        raise FormatError(f"{file} is truncated or was changed: it has {size} bytes, "
                          f"{META} records {entry['bytes']}")
    if digest != entry["sha256"]:
        raise FormatError(f"{file}: checksum mismatch (sha256 {digest[:16]}..., {META} records "
                          f"{entry['sha256'][:16]}...): the file is corrupted or was changed after saving")


def _verify(folder: Folder, files: Mapping[str, Any], name: str) -> None:
    """Check file ``name``'s size and checksum (reading it, never unpickling it)."""
    with _checked(folder, files, name):
        return


@contextmanager
def _checked(folder: Folder, files: Mapping[str, Any], name: str) -> Iterator[IO[bytes]]:
    """File ``name`` opened (a regular file, no larger than ``meta.json`` says), its size and checksum
    checked, positioned at its start."""
    entry = files[name]
    with folder.open(name, MAX_FILE_BYTES) as f:
        size = os.fstat(f.fileno()).st_size
        _size_and_digest(folder, name, size, sha256(f) if size == entry["bytes"] else "", entry)
        f.seek(0)
        yield f


def _read_diagram(folder: Folder, files: Mapping[str, Any]) -> Diagram:
    """The diagram: parsed, checked against its checksum, then rebuilt layer by layer."""
    file = folder.path / DIAGRAM
    data = folder.read(DIAGRAM, MAX_JSON_BYTES)
    obj = parse_json(data, str(file))
    entry = files[DIAGRAM]
    _size_and_digest(folder, DIAGRAM, len(data), sha256(data) if len(data) == entry["bytes"] else "", entry)
    try:
        return diagram_from_json(obj)
    except CompinterpError as err:
        raise FormatError(f"{file}: {err}") from None


@contextmanager
def _weights(folder: Folder, files: Mapping[str, Any]) -> Iterator[Any]:
    """``weights.safetensors`` opened with :func:`safetensors.safe_open` (the very file that was checked:
    a regular file, read through its descriptor), its header parsed, its size and checksum checked."""
    file = folder.path / WEIGHTS
    with folder.open(WEIGHTS, MAX_FILE_BYTES) as f:
        try:
            with safe_open(descriptor_path(f, file), framework="pt") as handle:
                size = os.fstat(f.fileno()).st_size
                entry = files[WEIGHTS]
                _size_and_digest(folder, WEIGHTS, size, sha256(f) if size == entry["bytes"] else "", entry)
                yield handle
        except SafetensorError as err:
            raise FormatError(f"{file} is truncated or corrupted: {shown(str(err))}") from None
        except (TypeError, ValueError, RuntimeError) as err:
            if isinstance(err, CompinterpError):
                raise
            raise FormatError(f"{file} holds a tensor compinterp cannot read: {shown(str(err))}") from None


def _tensors(folder: Folder, meta: Mapping[str, Any], boxes: Mapping[str, Any], ties: Mapping[str, str], *,
             load: bool) -> tuple[_Counts, dict[str, torch.Tensor]]:
    """The parameter counts from the weights' header (checked against the diagram and ``meta.json``, see
    :func:`_counts`) and, with ``load``, every stored tensor by key."""
    with _weights(folder, meta["files"]) as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        counts = _counts(folder, meta, boxes, ties, shapes)
        return counts, ({key: handle.get_tensor(key) for key in shapes} if load else {})


class _Counts(NamedTuple):
    """Parameter counts of a saved model, from its diagram and its weights' header."""

    per_box: dict[str, int]
    """Numbers held by each box's parameters (a tied one counted in both boxes)."""
    own: dict[str, int]
    """Numbers held by each box's own parameters (a tied one only where it is stored)."""
    total: int
    """Every parameter once."""


def _counts(folder: Folder, meta: Mapping[str, Any], boxes: Mapping[str, Any], ties: Mapping[str, str],
            shapes: Mapping[str, tuple[int, ...]]) -> _Counts:
    """The parameter counts, computed from the diagram and the weights' header; each stored tensor is
    checked to belong to a box (with the shape the diagram gives it), and ``meta.json``'s counts to agree."""
    weights, file = folder.path / WEIGHTS, folder.path / META
    declared = meta.get("params", {})
    if not isinstance(declared, dict):
        raise FormatError(f"{file}: 'params' must map box names to parameter counts, got {shown(declared)}")
    per_box: dict[str, int] = {}
    own: dict[str, int] = {}
    claimed: set[str] = set()
    for name, box in boxes.items():
        prefix = f"{name}."
        if box.opaque:
            state = [key for key in shapes if key.startswith(prefix)]
            claimed.update(state)
            held = sum(math.prod(shapes[key]) for key in state)
            count = declared.get(name, held)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= held:
                raise FormatError(f"{file} records {shown(count, 40)} parameters for Opaque box '{name}', but its "
                                  f"state in {WEIGHTS} holds {held:,} numbers")
            per_box[name] = own[name] = count
            continue
        if not isinstance(box, Kind) or not box.param_shapes():
            continue
        per_box[name] = own[name] = 0
        for role, shape in box.param_shapes().items():
            key = prefix + role
            per_box[name] += math.prod(shape)
            if key in ties:
                continue
            if key not in shapes:
                raise FormatError(f"{weights}: box '{name}' ({box.kind}) needs parameter '{role}' of shape "
                                  f"{shape}, which is missing")
            if shapes[key] != shape:
                raise FormatError(f"{weights}: box '{name}' ({box.kind}) parameter '{role}' has shape "
                                  f"{shapes[key]}; the diagram needs {shape}")
            own[name] += math.prod(shape)
            claimed.add(key)
    extra = next((key for key in shapes if key not in claimed), None)
    if extra is not None:
        raise FormatError(f"{weights}: unexpected tensor {shown(extra, 80)}: no box of the diagram has that parameter")
    total = sum(own.values())
    if any(box.opaque for box in boxes.values()):
        # modules may share parameters, which meta.json counts once: any count from the recognised
        # boxes' to every stored parameter is consistent
        low = sum(n for name, n in own.items() if not boxes[name].opaque)
        count = meta.get("num_params", total)
        if isinstance(count, bool) or not isinstance(count, int) or not low <= count <= total:
            raise FormatError(f"{file} records num_params {shown(count, 40)}, but the diagram and {WEIGHTS} "
                              f"hold from {low:,} to {total:,} parameters")
        total = count
    for name, count in declared.items():
        if name in per_box and not boxes[name].opaque and count != per_box[name]:
            raise FormatError(f"{file} records {shown(count, 40)} parameters for box '{name}', but the diagram and "
                              f"{WEIGHTS} give it {per_box[name]:,}")
    if meta.get("num_params", total) != total:
        raise FormatError(f"{file} records num_params {shown(meta['num_params'], 40)}, but the diagram and "
                          f"{WEIGHTS} hold {total:,} parameters")
    return _Counts(per_box, own, total)


def _read_ties(folder: Folder, meta: Mapping[str, Any], boxes: Mapping[str, Any]) -> dict[str, str]:
    """The tied parameters ``meta.json`` records (none if it records none), each naming a parameter
    ``box.role`` of the diagram."""
    file = folder.path / META
    ties = meta.get("ties", {})
    if not isinstance(ties, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ties.items()):
        raise FormatError(f"{file}: 'ties' must map 'box.role' to 'box.role', got {shown(ties)}")
    for key in (*ties, *ties.values()):
        name, _, role = key.partition(".")
        box = boxes.get(name)
        if not isinstance(box, Kind) or box.opaque or role not in box.param_shapes():
            raise FormatError(f"{file}: tie {shown(key, 80)} names no parameter of the diagram")
    return ties


def _box_params(box: Kind, tensors: dict[str, torch.Tensor], ties: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Take box's parameters out of ``tensors`` (their presence and shapes already checked by
    :func:`_counts`); a tied one is left to the model, which takes its tensor from the parameter it
    is tied to."""
    return {role: tensors.pop(f"{box.name}.{role}") for role in box.param_shapes() if f"{box.name}.{role}" not in ties}


def _read_opaque(folder: Folder, files: Mapping[str, Any], names: list[str], trust_code: bool) -> dict[str, nn.Module]:
    """The pickled modules of Opaque boxes ``names`` from ``opaque.pt``: its checksum verified, then
    unpickled only if the caller trusts the directory (``trust_code``), refused otherwise."""
    file = folder.path / OPAQUE
    example = f"load(..., modules={{'{names[0]}': module}})"
    if OPAQUE not in files or not folder.exists(OPAQUE):
        folder.check_moved()
        raise FormatError(f"{folder.path}: Opaque box '{names[0]}' has no module ({OPAQUE} is missing); "
                          f"pass {example}")
    with _checked(folder, files, OPAQUE) as f:
        if not trust_code:
            quoted = ", ".join(f"'{name}'" for name in names)
            raise FormatError(f"{file} holds pickled code for Opaque box{'es' if len(names) > 1 else ''} {quoted}, "
                              "and unpickling runs it: pass trust_code=True (--trust-code) if you trust this "
                              f"directory, or give the modules yourself: {example}")
        try:
            stored = torch.load(f, map_location="cpu", weights_only=False)
        except Exception as err:  # unpickling can raise anything the pickled code raises
            raise FormatError(f"{file} cannot be unpickled: {type(err).__name__}: {shown(str(err))}") from None
    if not isinstance(stored, dict):
        raise FormatError(f"{file} should hold a dict of modules, found a {type(stored).__name__}")
    for name in names:
        if not isinstance(stored.get(name), nn.Module):
            raise FormatError(f"{file} has no module for Opaque box '{name}'; pass {example}")
    return {name: stored[name] for name in names}


def _load_module_state(name: str, module: nn.Module, tensors: dict[str, torch.Tensor], weights: Path) -> None:
    """Load Opaque box ``name``'s state (keys ``name.*``) from ``tensors`` into ``module``."""
    prefix = f"{name}."
    state = {key[len(prefix):]: tensors.pop(key) for key in [k for k in tensors if k.startswith(prefix)]}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise FormatError(f"{weights}: the weights of Opaque box '{name}' do not fit its module: "
                          f"{shown(detail, 400)}") from None
