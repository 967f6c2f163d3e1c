"""File input and output that every part of compinterp shares: atomic writes, checksums, JSON.

This is a leaf module: it imports nothing from compinterp but :mod:`compinterp.errors`,
so models, interpretations, drawings, reports and runs can all write through it.

* :func:`write_atomically` writes one file beside its target, flushes it to disk and
  renames it into place;
* :func:`write_directory` does the same for a directory: it is filled in a staging
  directory beside the target, flushed, then swapped in (what was there is moved
  aside, and put back if the swap fails);
* :func:`sha256`, :func:`read_json` and :func:`declares_format` read back.

An error or a crash never leaves a half-written file or directory where a good one was.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     file = write_atomically(Path(tmp) / "numbers.json", lambda partial: partial.write_text('{"x": 1}'))
...     folder = write_directory(Path(tmp) / "run", lambda staging: (staging / "a.txt").write_text("a"), "a run")
...     print(read_json(file), sorted(p.name for p in Path(tmp).iterdir()), (folder / "a.txt").read_text())
...     print(sha256(folder / "a.txt")[:16])
{'x': 1} ['numbers.json', 'run'] a
ca978112ca1bbdca
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compinterp.errors import FormatError


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object], verb: str = "write") -> Path:
    """Call ``write`` on a partial file beside ``path``, flush it to disk, then rename it into place, so an
    error or a crash leaves what was at ``path``; an ``OSError`` becomes a FormatError naming ``path``."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        write(partial)
        fsync(partial)
        os.replace(partial, path)
        fsync(path.parent)
    except OSError as err:
        raise FormatError(f"cannot {verb} {path}: {err.strerror or err}") from None
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_directory(path: str | os.PathLike[str], write: Callable[[Path], object], what: str) -> Path:
    """Call ``write`` on a new, empty staging directory beside ``path``, flush everything in it to disk,
    then swap it in for ``path`` (see :func:`swap_in`); the staging directory never outlives the call.

    An ``OSError`` becomes ``FormatError("cannot save <what> to <path>: <reason>")``; any other error
    passes through. Checking that ``path`` may be replaced is the caller's business.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.saving-{uuid.uuid4().hex}")
        staging.mkdir()
    except OSError as err:
        raise FormatError(f"cannot save {what} to {path}: {err.strerror or err}") from None
    try:
        write(staging)
        fsync_tree(staging)
        swap_in(staging, path)
    except OSError as err:
        raise FormatError(f"cannot save {what} to {path}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def swap_in(staging: Path, path: Path) -> None:
    """Rename ``staging`` to ``path``; a directory already there is first renamed aside to
    ``.<name>.old-*``, restored if the rename fails and deleted once the new one is in place (a crash
    between the two renames leaves it there, whole)."""
    if not path.exists():
        os.rename(staging, path)
        fsync(path.parent)
        return
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
    os.rename(path, old)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old, path)
        raise
    fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk; a file system that cannot is let be."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """:func:`fsync` every file and directory under ``folder``, the directories after their entries."""
    for root, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            fsync(Path(root) / name)
        fsync(Path(root))


def sha256(file: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in chunks."""
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_json(file: Path) -> Any:
    """Parse a JSON file; a missing file, undecodable bytes or invalid JSON is a :class:`FormatError` naming
    the file (and the line)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FormatError(f"{file} is missing") from None
    except UnicodeDecodeError as err:
        raise FormatError(f"{file} is not UTF-8 text (byte {err.start}): the file is corrupted") from None
    except OSError as err:
        raise FormatError(f"cannot read {file}: {err.strerror or err}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FormatError(f"{file}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def declares_format(folder: str | os.PathLike[str], manifest: str, format: str) -> bool:
    """Whether ``folder/manifest`` is a JSON object whose ``format`` is ``format`` (the rest unchecked)."""
    try:
        obj = json.loads((Path(folder) / manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and obj.get("format") == format
