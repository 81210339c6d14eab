"""Files of a run directory that cannot be turned against their reader.

Run directories travel (CI artifacts, shared results), so whoever made one may have left
a symlink where a run file belongs (`report.html.tmp -> ~/.bashrc`), or a FIFO where an
outputs file belongs (which blocks a plain `open` forever). So:

- a file is written whole to a fresh temporary file created in its own directory
  (`O_CREAT | O_EXCL | O_NOFOLLOW`: never an existing name, never through a link), fsynced,
  then renamed over its name; a failed write (a full disk) removes the temporary file,
  leaves the old file as it was, and is one line;
- a file is appended to only when it is a regular file reached without a link;
- a file is read only when it is a regular file reached without a link (opened
  non-blocking, so a FIFO is seen for what it is instead of waiting for a writer);
- a symlink where one of these files belongs is refused in one line (`UnsafeFile`).

`inside` (the run directory) extends the link check to the folders between it and the
file (`outputs/`, `previews/`): a linked folder would carry writes out of the run.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path
from typing import IO

from dqar_bench.core.errors import DqarError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeFile(DqarError):
    """A run file that is a symlink, or not a regular file; the message names it and the fix."""


def write_atomic(path: str | Path, data: bytes | str, inside: str | Path | None = None) -> Path:
    """`data` as the whole content of `path`, replaced in one rename; never through a link."""
    path = Path(path)
    check_no_links(path, inside)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:  # a folder that is not writable, or missing
        raise DqarError(f"{path}: not written ({exc.strerror or exc}); choose a path in a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota: the old file stands, no temporary file is left
        tmp.unlink(missing_ok=True)
        raise DqarError(f"{path}: not written ({exc.strerror or exc}); free some space or choose another path, and run again") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def open_append(path: str | Path, inside: str | Path | None = None) -> IO[bytes]:
    """`path` opened to append (and read back), created if missing; a regular file only, never through a link."""
    path = Path(path)
    check_no_links(path, inside)
    fd = _open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    return os.fdopen(_regular(fd, path, "written to"), "a+b")


def open_regular(path: str | Path, inside: str | Path | None = None) -> IO[bytes]:
    """`path` opened to read: a regular file only (a FIFO or device is refused at once), never through a link."""
    path = Path(path)
    check_no_links(path, inside)
    fd = _open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    fd = _regular(fd, path, "read")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, inside: str | Path | None = None) -> bytes:
    with open_regular(path, inside) as fh:
        return fh.read()


def read_text(path: str | Path, inside: str | Path | None = None) -> str:
    return read_bytes(path, inside).decode("utf-8")


def check_no_links(path: Path, inside: str | Path | None = None) -> None:
    """Refuse a symlink at `path`, or at any folder between `inside` and it."""
    steps = [path]
    if inside is not None:
        try:
            rel = path.relative_to(inside)
        except ValueError:
            rel = None
        if rel is not None:
            steps += [Path(inside) / p for p in rel.parents if str(p) != "."]
    for step in steps:
        if step.is_symlink():
            raise UnsafeFile(f"{step}: is a symlink where a run file belongs; remove it (run files are never written or read through links)")


def check_tree(root: str | Path, folders: tuple[str, ...] = ()) -> None:
    """Refuse a directory that holds a link or a special file (FIFO, device, socket) at its
    top level or in `folders`: checked before a run writes into it again, so nothing blocks
    or is redirected halfway."""
    root = Path(root)
    for folder in (root, *(root / f for f in folders)):
        if folder != root:
            check_no_links(folder)
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISLNK(mode):
                    check_no_links(Path(entry.path))
                elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    raise UnsafeFile(f"{entry.path}: is {_kind(mode)}, not a regular file, where run files live; remove it")


def _open(path: Path, flags: int, mode: int = 0o644) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(f"{path}: is a symlink where a run file belongs; remove it (run files are never written or read through links)") from None
        if exc.errno == errno.EEXIST:
            raise UnsafeFile(f"{path}: already exists; remove it") from None
        raise


def _regular(fd: int, path: Path, how: str) -> int:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFile(f"{path}: is {_kind(mode)}, not a regular file, so it is not {how}; remove it or replace it with the file a run writes there")
    return fd


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _fsync_dir(path: Path) -> None:
    """The rename itself made durable; a platform or filesystem that cannot sync a folder is let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
