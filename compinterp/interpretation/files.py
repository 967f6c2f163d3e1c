"""Saving and loading interpretations: a directory, like a model's.

An interpretation directory holds

* ``interpretation.json``: format and version, the model's diagram (to check the
  interpretation is loaded against the model it explains), each wire's image and
  map (kind and hyperparameters), each given box image as a diagram, and the
  sha256 of ``maps.safetensors``;
* ``maps.safetensors``: the maps' tensors, keyed ``wire.role`` (``resid:64.weight``);
* ``explanation/``: the explanation model, as :func:`compinterp.files.save` writes it.

Function maps cannot be written: their name is kept and loading asks for them
again. Saving writes a temporary directory beside the target, flushes it and renames
it into place (:func:`compinterp.disk.write_directory`), so a failure never leaves a
half-written interpretation.

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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from compinterp import files
from compinterp.disk import declares_format, sha256, write_directory
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
                        modules: Mapping[str, nn.Module] | None = None) -> InterpretationParts:
    """Read the parts of an interpretation of a model with diagram ``source``, written by :func:`save`
    (:func:`compinterp.interpretation.interpretation.load` builds the Interpretation from them).

    ``functions`` gives the callables of function maps by wire name; ``modules`` the
    explanation's Opaque modules (see :func:`compinterp.files.read_model`).
    """
    path = Path(path)
    if not is_interpretation(path):
        raise FormatError(f"no interpretation at {path}: {path / MANIFEST} is missing or is not of format {FORMAT!r}")
    manifest = _read_manifest(path)
    try:
        saved = diagram_from_json(manifest["model"])
        images = {name: diagram_from_json(obj) for name, obj in manifest["boxes"].items()}
    except CompinterpError as err:
        raise FormatError(f"{path / MANIFEST}: {err}") from None
    if saved != source:
        raise FormatError(f"the interpretation at {path} explains another diagram than the model given: "
                          f"it was saved for {saved.dom} -> {saved.cod} with {len(saved.inside)} boxes")
    tensors = _read_maps(path, manifest["maps_sha256"])
    wires = {}
    for name, entry in manifest["wires"].items():
        own = {key[len(name) + 1:]: t for key, t in tensors.items() if key.startswith(f"{name}.")}
        try:
            wires[name] = (entry["image"], map_from_json(entry["map"], own, name, dict(functions or {})))
        except (KeyError, TypeError) as err:
            raise FormatError(f"{path / MANIFEST}: the entry of wire {name} is malformed ({err})") from None
    explanation = files.read_model(path / EXPLANATION, modules=modules)
    return InterpretationParts(images, wires, explanation)


def is_interpretation(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory with an interpretation manifest (as opposed to a model)."""
    return declares_format(path, MANIFEST, FORMAT)


def _is_interpretation_like(interp: Any) -> bool:
    """Whether ``interp`` has what :func:`save` reads of an :class:`~compinterp.Interpretation`."""
    return (isinstance(interp, nn.Module) and isinstance(getattr(interp, "source", None), Diagram)
            and callable(getattr(interp, "space", None)) and isinstance(getattr(interp, "maps", None), nn.ModuleDict)
            and isinstance(getattr(interp, "images", None), Mapping)
            and isinstance(getattr(interp, "explanation", None), nn.Module))


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


def _read_maps(path: Path, checksum: str) -> dict[str, torch.Tensor]:
    """The maps' tensors, checked against the recorded checksum."""
    file = path / MAPS
    if not file.is_file():
        raise FormatError(f"{file} is missing")
    if sha256(file) != checksum:
        raise FormatError(f"{file}: checksum mismatch with {MANIFEST}: the file is corrupted or was changed")
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise FormatError(f"{file} is corrupted: {err}") from None
