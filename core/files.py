"""Files read and written safely: text that is not UTF-8 is an error naming the file, and a write
either lands whole or not at all.

An atomic write goes to a temporary file beside the target, is flushed to the disk (``fsync``),
renamed over the target (``os.replace``, atomic on POSIX) and the folder is synced, so a crash or
a full disk leaves the previous file, never a truncated one. A failed write removes its temporary
file and is a UserError naming the target and the cause (e.g. "No space left on device").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from core.errors import UserError

__all__ = ["read_utf8", "atomic_write", "atomic_write_text", "fsync_file", "DAMAGED"]

DAMAGED = ".damaged"  # suffix of a damaged file set aside (a checkpoint), kept for inspection


def read_utf8(path: str | os.PathLike, what: str = "") -> str:
    """The text of ``path``, decoded as UTF-8.

    Args:
        path: the file.
        what: how the caller names the file in messages (e.g. ``data.annotations``).

    Raises:
        UserError: the file is missing, unreadable, or not UTF-8 (naming the first bad byte).
    """
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{label}: cannot read ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise UserError(
            f"{label}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}, line {line});"
            " re-save the file as UTF-8"
        ) from None


def fsync_file(path: Path) -> None:
    """Flush ``path``'s content to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Replace ``path`` with what ``write`` writes into a temporary file, atomically.

    Args:
        path: the target file (its folder is created).
        write: writes the whole content to the path it is given.

    Raises:
        UserError: the write failed (disk full, read-only file system, ...); the target is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
