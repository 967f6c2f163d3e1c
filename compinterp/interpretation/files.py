"""Saving and loading interpretations: a directory, like a model's.

An interpretation directory holds

* ``interpretation.json``: format and version, the model's diagram (to check the
  interpretation is loaded against the model it explains), each wire's image and
  map (kind and hyperparameters), each given box image as a diagram, and the
  sha256 of ``maps.safetensors``;
* ``maps.safetensors``: the maps' tensors, keyed ``wire.role`` (``resid:64.weight``);
* ``explanation/``: the explanation model, written by :func:`compinterp.files.save`.

Function maps cannot be written: their name is kept and :func:`load` asks for them
again. Saving writes a temporary directory beside the target and renames it into
place, so a failure never leaves a half-written interpretation.

>>> import tempfile, torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear
>>> from compinterp.interpretation import Interpretation, maps
>>> x = Space("x", 3)
>>> model = Model(Linear("f", x, x))
>>> interp = Interpretation(model, boxes={"f": Linear("g", Space("x", 2), Space("x", 2))},
...                         wires={"x": maps.linear(torch.eye(2, 3))}, params={"g": {"W": torch.eye(2)}})
>>> with tempfile.TemporaryDirectory() as tmp:
...     back = load(save(interp, f"{tmp}/interp"), model)
...     print(back.space(x), torch.equal(back.maps["x:3"].weight, interp.maps["x:3"].weight))
x:2 True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from compinterp import files
from compinterp.errors import CompinterpError, FormatError
from compinterp.interpretation.interpretation import Interpretation
from compinterp.interpretation.maps import Function, map_from_json
from compinterp.model import Model
from compinterp.semantics.functor import Rule
from compinterp.syntax import Kind, Space
from compinterp.syntax.serialize import diagram_from_json, diagram_to_json

FORMAT = "compinterp.interpretation"
FORMAT_VERSION = 1
MANIFEST, MAPS, EXPLANATION = "interpretation.json", "maps.safetensors", "explanation"


def save(interp: Interpretation, path: str | os.PathLike[str]) -> Path:
    """Write ``interp`` to directory ``path`` (created, or replaced if it holds an interpretation)."""
    if not isinstance(interp, Interpretation):
        raise FormatError(f"save() takes an Interpretation, got {type(interp).__name__}")
    given, path = Path(path), Path(os.path.abspath(path))
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not is_interpretation(path))):
        raise FormatError(f"refusing to write an interpretation to {path}: it is a file or a non-empty "
                          f"directory that is not an interpretation (no {MANIFEST} with format {FORMAT!r})")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": diagram_to_json(interp.source),
                "wires": {name: {"image": interp.space(Space(name)).to_json()[0], "map": sigma.to_json()}
                          for name, sigma in interp.maps.items()},
                "boxes": {name: diagram_to_json(image) for name, image in interp.images.items()}}
    tensors = {f"{name}.{role}": t.detach().cpu().contiguous().clone()
               for name, sigma in interp.maps.items() if not isinstance(sigma, Function)
               for role, t in sigma.state_dict().items()}
    staging = path.with_name(f".{path.name}.saving-{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        files.save(interp.explanation, staging / EXPLANATION)
        save_file(tensors, str(staging / MAPS))
        manifest["maps_sha256"] = _sha256(staging / MAPS)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
        if path.exists():
            os.rename(path, old)
        try:
            os.rename(staging, path)
        except OSError:
            if old.exists():
                os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise FormatError(f"cannot save an interpretation to {path}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return given


def load(path: str | os.PathLike[str], model: Model, *,
         functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
         modules: Mapping[str, nn.Module] | None = None, rules: Mapping[str, Rule] | None = None) -> Interpretation:
    """Read an interpretation of ``model`` written by :func:`save`.

    ``functions`` gives the callables of function maps by wire name; ``modules`` and
    ``rules`` are passed to :func:`compinterp.files.load` for the explanation model.
    """
    path = Path(path)
    if not is_interpretation(path):
        raise FormatError(f"no interpretation at {path}: {path / MANIFEST} is missing or is not of format {FORMAT!r}")
    manifest = _read_manifest(path)
    try:
        source = diagram_from_json(manifest["model"])
        images = {name: diagram_from_json(obj) for name, obj in manifest["boxes"].items()}
    except CompinterpError as err:
        raise FormatError(f"{path / MANIFEST}: {err}") from None
    if source != model.diagram:
        raise FormatError(f"the interpretation at {path} explains another diagram than the model given: "
                          f"it was saved for {source.dom} -> {source.cod} with {len(source.inside)} boxes")
    tensors = _read_maps(path, manifest["maps_sha256"])
    wires = {}
    for name, entry in manifest["wires"].items():
        own = {key[len(name) + 1:]: t for key, t in tensors.items() if key.startswith(f"{name}.")}
        try:
            wires[name] = (entry["image"], map_from_json(entry["map"], own, name, dict(functions or {})))
        except (KeyError, TypeError) as err:
            raise FormatError(f"{path / MANIFEST}: the entry of wire {name} is malformed ({err})") from None
    explanation = files.load(path / EXPLANATION, modules=modules, rules=rules)
    params = {name: explanation.box_params(name) for name, box in explanation.boxes.items()
              if box.kind != "Opaque" and isinstance(box, Kind) and box.param_shapes()}
    mods = {name: explanation.params[name] for name, box in explanation.boxes.items() if box.kind == "Opaque"}
    interp = Interpretation(model, boxes=images, wires=wires, params=params, modules=mods, rules=rules)
    if interp.diagram != explanation.diagram:
        raise FormatError(f"{path}: the saved explanation model does not match the interpretation's box images")
    return interp


def is_interpretation(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory with an interpretation manifest (as opposed to a model)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _read_manifest(path: Path) -> dict[str, Any]:
    """The manifest, checked for version and keys."""
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise FormatError(f"{path / MANIFEST}: format_version {version!r}; this compinterp reads 1 to {FORMAT_VERSION}")
    for key, kind in (("model", dict), ("wires", dict), ("boxes", dict), ("maps_sha256", str)):
        if not isinstance(manifest.get(key), kind):
            raise FormatError(f"{path / MANIFEST}: '{key}' is missing or is not a JSON {kind.__name__}")
    return manifest


def _read_maps(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """The maps' tensors, checked against the recorded checksum."""
    file = path / MAPS
    if not file.is_file():
        raise FormatError(f"{file} is missing")
    if _sha256(file) != sha256:
        raise FormatError(f"{file}: checksum mismatch with {MANIFEST}: the file is corrupted or was changed")
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise FormatError(f"{file} is corrupted: {err}") from None


def _sha256(file: Path) -> str:
    """The hex sha256 of a file."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
