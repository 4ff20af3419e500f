"""Every file the project writes goes through :func:`atomic_write`.

A write goes to a temporary file in the target's own directory (so the final rename stays on one
file system), is flushed and fsynced, then ``os.replace``d onto the target. A process killed at
any instant leaves either the old file or the complete new one, never a truncated mix.
:func:`resolve_output` checks a target before any work starts: the name that will really be
written (suffixes a library appends included), a regular file or a new name, in an existing
writable directory, and none of the command's inputs. Every file the project reads from a user's
path is opened with :func:`open_regular`, which refuses anything but a regular file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

from .errors import SnncError


def resolve_output(
    path: str | os.PathLike, flag: str, inputs: Iterable[str | os.PathLike | None] = (), suffix: str | None = None
) -> str:
    """The path that will really be written for ``path``, checked before any work.

    ``suffix``: a suffix the writing library appends when the name lacks it (numpy's ``.npz``),
    so the check looks at the file that would be replaced. Refused, each as a one-line
    :class:`SnncError` naming ``flag``: a directory, a missing or unwritable directory, a target
    that exists but is not a regular file (a FIFO would block, a device would swallow the data),
    and a target that is one of ``inputs`` (same inode counts, through links or other spellings).
    """
    given = os.fspath(path)
    text = given + suffix if suffix and not given.endswith(suffix) else given
    if text != given and os.path.exists(given) and not os.path.isfile(given):
        # `-o /dev/full` or `-o results/`: the user named that very thing, not `<it>.npz` next to it
        raise SnncError(f"{flag} {given}: exists and is not a regular file; write to a file name")
    target = os.path.abspath(text)
    if os.path.isdir(target):
        raise SnncError(f"{flag} {text}: is a directory, expected a file name")
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise SnncError(f"{flag} {text}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SnncError(f"{flag} {text}: directory {parent} is not writable")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise SnncError(f"{flag} {text}: cannot check the target ({exc.strerror or exc})") from None
    if info is not None and not stat.S_ISREG(info.st_mode):
        raise SnncError(f"{flag} {text}: exists and is not a regular file; write to a file name")
    for given in inputs:  # a new file inside an input folder could still be read as an input
        if given is not None and given != "" and os.path.isdir(given):
            folder = os.path.realpath(given)
            if os.path.commonpath([folder, os.path.realpath(target)]) == folder:
                raise SnncError(f"{flag} {text}: is inside the input folder {os.fspath(given)}; write it elsewhere")
    if info is not None:
        for given in inputs:
            if given is None or given == "":
                continue
            try:
                other = os.stat(os.fspath(given))
            except OSError:
                continue
            if (other.st_dev, other.st_ino) == (info.st_dev, info.st_ino):
                raise SnncError(
                    f"{flag} {text}: is the input {os.fspath(given)} itself; write the result to another file"
                )
    return text


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", flag: str = "output") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is untouched. An ``OSError``
    (disk full, permissions) becomes a one-line :class:`SnncError` naming ``flag`` and ``path``.
    The new file gets the usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    target = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(target)
    try:  # every writer, checked or not: a device or FIFO at the path is never replaced by a file
        existing = os.stat(target)
    except OSError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise SnncError(f"{flag} {os.fspath(path)}: exists and is not a regular file; write to a file name")
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
        with contextlib.suppress(OSError):  # the rename itself durable where the OS allows
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except OSError as exc:
        raise SnncError(f"{flag} {os.fspath(path)}: cannot write ({exc.strerror or exc})") from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)


def write_bytes(path: str | os.PathLike, data: bytes, flag: str = "output") -> None:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    with atomic_write(path, "wb", flag) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str, flag: str = "output") -> None:
    """Atomically write ``text`` (UTF-8) to ``path`` (see :func:`atomic_write`)."""
    with atomic_write(path, "w", flag) as handle:
        handle.write(text)


def open_regular(path: str | os.PathLike, label: str | None = None) -> IO[bytes]:
    """Open ``path`` for binary reading if it is a regular file; anything else is a one-line
    :class:`SnncError` naming ``label`` (default: the path): a FIFO would block the read (it is
    opened non-blocking to find out), a device such as /dev/zero would be read without end, and
    a directory is not a file."""
    label = os.fspath(path) if label is None else label
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise SnncError(f"{label}: no such file") from None
    except OSError as exc:
        raise SnncError(f"{label}: cannot open it ({exc.strerror or exc})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        raise SnncError(f"{label}: is {kind}, expected a file")
    return os.fdopen(fd, "rb")


def read_regular(path: str | os.PathLike, label: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`)."""
    with open_regular(path, label) as handle:
        try:
            return handle.read()
        except OSError as exc:
            raise SnncError(f"{label or os.fspath(path)}: cannot read ({exc.strerror or exc})") from None
