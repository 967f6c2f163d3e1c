"""File input and output that every part of compinterp shares: atomic writes, bounded reads, checksums, JSON.

This is a leaf module: it imports nothing from compinterp but :mod:`compinterp.errors`,
so models, interpretations, drawings, reports and runs can all write and read through it.

Writing:

* :func:`write_atomically` writes one file beside its target, flushes it to disk and
  renames it into place;
* :func:`write_directory` does the same for a directory: it is filled in a staging
  directory beside the target, flushed, then swapped in (:func:`swap_in`). Where the
  system can (Linux ``renameat2``), the swap is one atomic exchange: the target holds
  the old or the new directory at every instant. Elsewhere the old one is renamed
  aside first; a writer killed between the two renames leaves it whole as
  ``.<name>.old-<pid>-*``, and :func:`recover` (run by every load and save) puts it back.
  Temporaries carry their writer's pid, and the next save deletes those of dead writers.

Reading (a directory given to compinterp may be hostile):

* :class:`Folder` opens a directory once and reads the files in it as regular files only,
  without following links or blocking, each capped in size (:data:`MAX_JSON_BYTES`,
  :data:`MAX_FILE_BYTES`);
* :func:`parse_json` bounds what JSON may hold (:data:`MAX_JSON_DEPTH`,
  :data:`MAX_JSON_DIGITS`); every failure is a one-line :class:`~compinterp.errors.FormatError`
  naming the file, quoting at most :data:`MAX_SHOWN` characters of it.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     file = write_atomically(Path(tmp) / "numbers.json", lambda partial: partial.write_text('{"x": 1}'))
...     folder = write_directory(Path(tmp) / "run", lambda staging: (staging / "a.txt").write_text("a"), "a run")
...     print(read_json(file), sorted(p.name for p in Path(tmp).iterdir()), (folder / "a.txt").read_text())
...     print(sha256(folder / "a.txt")[:16])
{'x': 1} ['numbers.json', 'run'] a
ca978112ca1bbdca
>>> parse_json(b"[" * 100_000, "deep.json")
Traceback (most recent call last):
...
compinterp.errors.FormatError: deep.json: JSON nested deeper than 64 levels
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from compinterp.errors import FormatError

MAX_JSON_BYTES = 64 * 2 ** 20
"""The largest JSON file compinterp reads (``diagram.json``, ``meta.json``, manifests, ``train.json``)."""
MAX_FILE_BYTES = 2 ** 40
"""The largest file compinterp reads at all (weights, pickles), whatever a manifest declares."""
MAX_JSON_DEPTH = 64
"""The deepest nesting of arrays and objects a JSON file may have."""
MAX_JSON_DIGITS = 40
"""The most digits an integer in a JSON file may have."""
MAX_SHOWN = 200
"""The most characters of a file's content an error message quotes."""
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<kind>saving|old|trash|partial)-(?P<pid>\d{1,10})-[0-9a-f]{32}")


class Moved(FormatError):
    """A directory was replaced (by a concurrent save) while it was being read: read it again."""


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters (and ``...``), for error messages that quote a file.

    >>> shown("x" * 1000, 12)
    "'xxxxxxxxxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], object], verb: str = "write") -> Path:
    """Call ``write`` on a partial file beside ``path``, flush it to disk, then rename it into place, so an
    error or a crash leaves what was at ``path``; an ``OSError`` becomes a FormatError naming ``path``.
    Partial files of killed writers are deleted first."""
    path = Path(path)
    partial = _temporary(path, "partial")
    try:
        _clean(path, {"partial"})
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
    First puts back a directory a killed save left aside (:func:`recover`) and deletes the temporaries
    of killed saves.

    An ``OSError`` becomes ``FormatError("cannot save <what> to <path>: <reason>")``; any other error
    passes through. Checking that ``path`` may be replaced is the caller's business.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        recover(path)
        _clean(path, {"saving", "old", "trash"})
        staging = _temporary(path, "saving")
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
        discard(staging)
    return path


def swap_in(staging: Path, path: Path) -> None:
    """Put directory ``staging`` at ``path``: if ``path`` is a directory, exchange the two atomically
    where the system can (``staging`` then holds the old one, for the caller to delete); else rename
    ``path`` aside to ``.<name>.old-<pid>-*``, rename ``staging`` to ``path`` (putting the old one back
    if that fails) and delete the old one (renamed to ``.<name>.trash-*`` first, so that an ``old``
    directory is always whole)."""
    if path.is_dir() and _exchange(staging, path):
        fsync(path.parent)
        return
    if not path.exists():
        os.rename(staging, path)
        fsync(path.parent)
        return
    old = _temporary(path, "old")
    os.rename(path, old)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(old, path)
        raise
    fsync(path.parent)
    discard(old)


def recover(path: str | os.PathLike[str]) -> Path | None:
    """If ``path`` is missing but a save killed between its two renames left the old directory aside
    (``.<name>.old-<pid>-*``, its writer dead), put it back; returns the directory put back, if any.
    A directory that cannot be renamed back is returned where it is."""
    path = Path(path)
    if os.path.lexists(path):
        return None
    try:
        stranded = max((entry for entry, kind in _stale(path) if kind == "old"),
                       key=lambda entry: entry.lstat().st_mtime_ns, default=None)
    except OSError:                                     # another reader put it back meanwhile
        return None
    if stranded is None:
        return None
    try:
        os.rename(stranded, path)
    except OSError:
        return path if os.path.isdir(path) else stranded
    fsync(path.parent)
    return path


def discard(folder: Path) -> None:
    """Delete directory ``folder`` if it exists: renamed to ``.<name>.trash-*`` first, so a kill midway
    never leaves a half-deleted directory under a name that :func:`recover` would put back."""
    if not folder.is_dir() or folder.is_symlink():
        return
    match = _TEMPORARY.fullmatch(folder.name)
    trash = _temporary(folder.with_name(match["name"]) if match else folder, "trash")
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def _temporary(path: Path, kind: str) -> Path:
    """A fresh temporary name beside ``path``: ``.<name>.<kind>-<pid>-<random>``."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex}")


def _stale(path: Path) -> Iterator[tuple[Path, str]]:
    """The temporaries of ``path`` (see :func:`_temporary`) whose writer is no longer running, and their kinds."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match and match["name"] == path.name and not _alive(int(match["pid"])):
            yield path.parent / name, match["kind"]


def _clean(path: Path, kinds: set[str]) -> None:
    """Delete the temporaries of ``path`` of these ``kinds`` left by writers that were killed (an ``old``
    directory only once ``path`` holds another: it may be the only copy)."""
    for entry, kind in list(_stale(path)):
        if kind not in kinds or (kind == "old" and not os.path.lexists(path)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (this one, another user's, or where it cannot be told)."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True
    return True


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """libc's ``renameat2``, where there is one (Linux, glibc 2.28 or later)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Exchange two directories in one atomic step (``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    system or the file system cannot (the caller then renames in two steps)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


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


def sha256(file: str | os.PathLike[str] | IO[bytes] | bytes) -> str:
    """The hex sha256 of a file (a path, or a binary file open at its start, read in chunks) or of bytes."""
    if isinstance(file, bytes):
        return hashlib.sha256(file).hexdigest()
    if not isinstance(file, (str, os.PathLike)):
        return hashlib.file_digest(file, "sha256").hexdigest()
    with open(file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Folder:
    """A directory opened once: every file is then read from that directory, even if its path is
    swapped for another meanwhile (a concurrent save), as a regular file only (no link followed, no
    FIFO or device opened, nothing that blocks), its size capped.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = Path(tmp, "a.json").write_text('[1, 2]')
    ...     os.symlink("/dev/zero", Path(tmp, "zero"))
    ...     with Folder(tmp) as folder:
    ...         found = folder.json("a.json"), folder.exists("b.json")
    ...         try:
    ...             folder.read("zero", 10)
    ...         except FormatError as err:
    ...             refused = str(err).endswith("zero is a symbolic link: compinterp reads only regular files")
    >>> found, refused
    (([1, 2], False), True)
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        if os.open in os.supports_dir_fd:
            flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC
            try:
                self._fd = os.open(self.path, flags)
            except FileNotFoundError:
                raise FormatError(f"{self.path} does not exist") from None
            except NotADirectoryError:
                raise FormatError(f"{self.path} is a file, not a directory") from None
            except OSError as err:
                raise FormatError(f"cannot read {self.path}: {err.strerror or err}") from None

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the directory."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def exists(self, name: str) -> bool:
        """Whether the directory has an entry ``name`` (of any type; links not followed)."""
        try:
            os.stat(name if self._fd is not None else self.path / name, dir_fd=self._fd, follow_symlinks=False)
        except OSError:
            return False
        return True

    def open(self, name: str, limit: int) -> IO[bytes]:
        """File ``name`` opened for reading, checked to be a regular file of at most ``limit`` bytes."""
        file = self.path / name
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | os.O_CLOEXEC
        try:
            fd = os.open(name if self._fd is not None else file, flags, dir_fd=self._fd)
        except FileNotFoundError:
            self.check_moved()
            raise FormatError(f"{file} is missing") from None
        except OSError as err:
            if os.path.islink(file):
                raise FormatError(f"{file} is a symbolic link: compinterp reads only regular files") from None
            raise FormatError(f"cannot read {file}: {err.strerror or err}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise FormatError(f"{file} is {_file_type(info.st_mode)}, not a regular file")
            if info.st_size > limit:
                raise FormatError(f"{file} is too large: {info.st_size:,} bytes, more than the {limit:,} "
                                  "compinterp reads")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def read(self, name: str, limit: int) -> bytes:
        """The bytes of file ``name`` (a regular file of at most ``limit`` bytes)."""
        with self.open(name, limit) as f:
            try:
                data = f.read(limit + 1)
            except OSError as err:
                raise FormatError(f"cannot read {self.path / name}: {err.strerror or err}") from None
        if len(data) > limit:
            raise FormatError(f"{self.path / name} grew past {limit:,} bytes while it was read")
        return data

    def json(self, name: str, limit: int = MAX_JSON_BYTES) -> Any:
        """File ``name`` parsed as JSON (see :func:`parse_json`)."""
        return parse_json(self.read(name, limit), str(self.path / name))

    def check_moved(self) -> None:
        """Raise :class:`Moved` if the path now names another directory than the one opened."""
        if self._fd is None:
            return
        try:
            now, opened = os.stat(self.path), os.fstat(self._fd)
        except OSError:
            now, opened = None, None
        if now is None or (now.st_dev, now.st_ino) != (opened.st_dev, opened.st_ino):
            raise Moved(f"{self.path} was replaced while it was read")


def descriptor_path(f: IO[bytes], file: str | os.PathLike[str]) -> str:
    """A path that opens the very file open as ``f`` (``/dev/fd/N``), for a library that takes only
    paths (safetensors); ``file`` where the system has no such paths."""
    path = f"/dev/fd/{f.fileno()}"
    return path if os.path.exists(path) else str(file)


def _file_type(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


class _TooLong(ValueError):
    """An integer in a JSON file has more than :data:`MAX_JSON_DIGITS` digits."""


def _integer(text: str) -> int:
    """A JSON integer, refused past :data:`MAX_JSON_DIGITS` digits (before Python parses it)."""
    if len(text.lstrip("-")) > MAX_JSON_DIGITS:
        raise _TooLong(len(text.lstrip("-")))
    return int(text)


def parse_json(data: bytes, where: str) -> Any:
    """Parse JSON bytes from ``where`` (a file name, for messages), bounded: at most
    :data:`MAX_JSON_DEPTH` levels of nesting and :data:`MAX_JSON_DIGITS` digits per integer; any
    failure is a one-line :class:`~compinterp.errors.FormatError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"{where} is not UTF-8 text (byte {err.start}): the file is corrupted") from None
    try:
        obj = json.loads(text, parse_int=_integer)
    except json.JSONDecodeError as err:
        raise FormatError(f"{where}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except _TooLong as err:
        raise FormatError(f"{where}: an integer of {err.args[0]:,} digits; compinterp reads integers of up to "
                          f"{MAX_JSON_DIGITS} digits") from None
    except RecursionError:
        raise FormatError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:
        raise FormatError(f"{where}: invalid JSON: {shown(str(err))}") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise FormatError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _depth(obj: Any) -> int:
    """The nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def read_json(file: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file (a regular file of at most ``limit`` bytes, see :class:`Folder`); a missing file,
    undecodable bytes or invalid JSON is a :class:`FormatError` naming the file (and the line)."""
    file = Path(file)
    if not file.parent.is_dir():
        raise FormatError(f"{file} is missing")
    with Folder(file.parent) as folder:
        return folder.json(file.name, limit)


def declares_format(folder: str | os.PathLike[str], manifest: str, format: str) -> bool:
    """Whether ``folder/manifest`` is a JSON object whose ``format`` is ``format`` (the rest unchecked)."""
    try:
        obj = read_json(Path(folder) / manifest)
    except FormatError:
        return False
    return isinstance(obj, dict) and obj.get("format") == format
