"""Saving and loading interpretations: a directory, like a model's.

An interpretation directory holds

* ``interpretation.json``: format and version, the model's diagram (to check the
  interpretation is loaded against the model it explains), each wire's image and
  map (kind and hyperparameters), each given box image as a diagram, and the
  sha256 of ``maps.safetensors``;
* ``maps.safetensors``: the maps' tensors, keyed ``wire.role`` (``resid:64.weight``);
* ``explanation/``: the explanation model, as :func:`compinterp.files.save` writes it.

Function maps cannot be written: their name is kept and loading asks for them
again. Saving writes a temporary directory beside the target, flushes it and swaps
it into place (:func:`compinterp.disk.write_directory`), so a failure or a kill never
leaves a half-written interpretation. Reading trusts nothing in the directory, as
for a model (:mod:`compinterp.files`, ``docs/security.md``): bounded JSON, regular
files only, checksums checked before use, and the explanation's ``opaque.pt``
unpickled only with ``trust_code=True``.

This module sits below :mod:`compinterp.interpretation.interpretation`: :func:`save`
takes any object shaped like an :class:`~compinterp.Interpretation`, and
:func:`read_interpretation` returns a saved one's parts, which
:func:`compinterp.interpretation.interpretation.load` (``Interpretation.load``) builds
into an Interpretation.

>>> import tempfile, torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear
>>> from compinterp.interpretation import Interpretation, maps
>>> from compinterp.interpretation.interpretation import load
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

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from compinterp import files
from compinterp.disk import (
    MAX_FILE_BYTES, Folder, declares_format, descriptor_path, recover, sha256, shown, write_directory,
)
from compinterp.errors import CompinterpError, FormatError
from compinterp.interpretation.maps import Function, Map, map_from_json
from compinterp.syntax import Diagram, Space
from compinterp.syntax.serialize import diagram_from_json, diagram_to_json

FORMAT = "compinterp.interpretation"
FORMAT_VERSION = 1
MANIFEST, MAPS, EXPLANATION = "interpretation.json", "maps.safetensors", "explanation"


class InterpretationParts(NamedTuple):
    """What an interpretation directory holds, read and checked, ready to build an
    :class:`~compinterp.Interpretation` of its model from."""

    images: dict[str, Diagram]
    """The box images given, ``{box name: S(f)}``."""
    wires: dict[str, tuple[str, Map]]
    """Each wire's image and map, ``{wire: (image wire, map)}``."""
    explanation: files.ModelParts
    """The explanation model's parts: its diagram, the parameters of its boxes and its Opaque modules."""


def save(interp: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``interp`` to directory ``path`` (created, or replaced if it holds an interpretation).

    ``interp`` is an :class:`~compinterp.Interpretation`, or anything with its ``source``,
    ``space``, ``maps``, ``images`` and ``explanation`` (a model, see :func:`compinterp.files.save`).
    """
    if not _is_interpretation_like(interp):
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

    def write(staging: Path) -> None:
        (staging / EXPLANATION).mkdir()
        files.write_files(interp.explanation, staging / EXPLANATION)
        save_file(tensors, str(staging / MAPS))
        manifest["maps_sha256"] = sha256(staging / MAPS)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")

    write_directory(path, write, "an interpretation")
    return given


def read_interpretation(path: str | os.PathLike[str], source: Diagram, *,
                        functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                        modules: Mapping[str, nn.Module] | None = None,
                        trust_code: bool = False) -> InterpretationParts:
    """Read the parts of an interpretation of a model with diagram ``source``, written by :func:`save`
    (:func:`compinterp.interpretation.interpretation.load` builds the Interpretation from them).

    ``functions`` gives the callables of function maps by wire name; ``modules`` the
    explanation's Opaque modules and ``trust_code`` whether its ``opaque.pt`` may be
    unpickled (see :func:`compinterp.files.read_model`).
    """
    path = Path(path)
    path = recover(path) or path
    if not declares_format(path, MANIFEST, FORMAT):
        raise FormatError(f"no interpretation at {path}: {path / MANIFEST} is missing or is not of format {FORMAT!r}")
    with Folder(path) as folder:
        manifest = _read_manifest(folder)
        try:
            saved = diagram_from_json(manifest["model"])
            images = {name: diagram_from_json(obj) for name, obj in manifest["boxes"].items()}
        except CompinterpError as err:
            raise FormatError(f"{path / MANIFEST}: {err}") from None
        if saved != source:
            raise FormatError(f"the interpretation at {path} explains another diagram than the model given: "
                              f"it was saved for {saved.dom} -> {saved.cod} with {len(saved.inside)} boxes")
        tensors = _read_maps(folder, manifest["maps_sha256"])
    wires = {}
    for name, entry in manifest["wires"].items():
        own = {key[len(name) + 1:]: t for key, t in tensors.items() if key.startswith(f"{name}.")}
        _check_wire(path / MANIFEST, name, entry, own)
        try:
            wires[name] = (entry["image"], map_from_json(entry["map"], own, name, dict(functions or {})))
        except CompinterpError as err:
            raise FormatError(f"{path / MANIFEST}: wire {shown(name, 60)}: {err}") from None
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(f"{path / MANIFEST}: the entry of wire {shown(name, 60)} is malformed "
                              f"({type(err).__name__}: {shown(str(err))})") from None
    explanation = files.read_model(path / EXPLANATION, modules=modules, trust_code=trust_code)
    return InterpretationParts(images, wires, explanation)


def is_interpretation(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory with an interpretation manifest (as opposed to a model); an
    interpretation a killed save left aside is put back first (:func:`compinterp.disk.recover`)."""
    return declares_format(recover(path) or path, MANIFEST, FORMAT)


def _is_interpretation_like(interp: Any) -> bool:
    """Whether ``interp`` has what :func:`save` reads of an :class:`~compinterp.Interpretation`."""
    return (isinstance(interp, nn.Module) and isinstance(getattr(interp, "source", None), Diagram)
            and callable(getattr(interp, "space", None)) and isinstance(getattr(interp, "maps", None), nn.ModuleDict)
            and isinstance(getattr(interp, "images", None), Mapping)
            and isinstance(getattr(interp, "explanation", None), nn.Module))


def _read_manifest(folder: Folder) -> dict[str, Any]:
    """The manifest, checked for version and keys."""
    file = folder.path / MANIFEST
    manifest = folder.json(MANIFEST)
    if not isinstance(manifest, dict):
        raise FormatError(f"{file}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise FormatError(f"{file}: format_version {shown(version, 40)}; this compinterp reads 1 to {FORMAT_VERSION}")
    for key, kind in (("model", dict), ("wires", dict), ("boxes", dict), ("maps_sha256", str)):
        if not isinstance(manifest.get(key), kind):
            raise FormatError(f"{file}: '{key}' is missing or is not a JSON {kind.__name__}")
    return manifest


def _check_wire(file: Path, name: str, entry: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Check a wire's entry: an image wire name and a map object, and a rotation's size against the
    tensors that hold it (so no size read from the file is allocated unchecked)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("map"), dict):
        raise FormatError(f"{file}: wire {shown(name, 60)} must map to {{'image': wire name, 'map': {{'kind': ...}}}}, "
                          f"got {shown(entry)}")
    sigma = entry["map"]
    if sigma.get("kind") == "rotation":
        dim = sigma.get("dim")
        shapes = {tuple(t.shape) for t in tensors.values()}
        if isinstance(dim, bool) or not isinstance(dim, int) or (dim, dim) not in shapes:
            raise FormatError(f"{file}: the rotation map of wire {shown(name, 60)} declares dim {shown(dim, 40)}, "
                              f"which its tensors in {MAPS} do not hold")


def _read_maps(folder: Folder, checksum: str) -> dict[str, torch.Tensor]:
    """The maps' tensors (a regular file), checked against the recorded checksum."""
    file = folder.path / MAPS
    with folder.open(MAPS, MAX_FILE_BYTES) as f:
        if sha256(f) != checksum:
            raise FormatError(f"{file}: checksum mismatch with {MANIFEST}: the file is corrupted or was changed")
        try:
            with safe_open(descriptor_path(f, file), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}
        except SafetensorError as err:
            raise FormatError(f"{file} is corrupted: {shown(str(err))}") from None
        except (TypeError, ValueError, RuntimeError) as err:
            raise FormatError(f"{file} holds a tensor compinterp cannot read: {shown(str(err))}") from None
