"""Files that only the node's user may reach: checked, read, written atomically and shredded.

Owns the one rule for secret-bearing paths on disk (key files, the operator secret file, the data
directory). Invariants:

* A private path is not a symbolic link, is owned by the effective user, and grants nothing to
  group or others (``0600`` files, ``0700`` directories). :class:`InsecurePermissions` names the
  path, its mode and the ``chmod``/``chown`` that fixes it.
* Reads open with ``O_NOFOLLOW`` and check the opened file (``fstat``), so a path cannot be
  swapped between the check and the read.
* Writes are atomic: a ``0600`` temporary file in the same directory, ``fsync``, then a hard link
  (never over an existing name) or a rename (on purpose), then an ``fsync`` of the directory.
  A crash leaves either the old state or the new one, plus at most a stray ``.tmp-*`` file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Final

from node.errors import NodeError

TEMP_PREFIX: Final = ".tmp-"


class InsecurePermissions(NodeError):
    """A private file or directory is open to other users, is a symlink, or is not ours."""

    code: ClassVar[str] = "insecure_permissions"


def check_private(path: Path, *, is_dir: bool) -> None:
    """Refuse a path that other users can reach, a symlink, or one owned by another user.

    Args:
        path: the file or directory.
        is_dir: whether it must be a directory (else a regular file).

    Raises:
        FileNotFoundError: it does not exist.
        InsecurePermissions: it is a link, of the wrong type, not ours, or open to others.
    """
    _check_stat(path, path.lstat(), is_dir=is_dir)


def _check_stat(path: Path, info: os.stat_result, *, is_dir: bool) -> None:
    what = "directory" if is_dir else "file"
    if stat.S_ISLNK(info.st_mode):
        raise InsecurePermissions(f"{path} is a symbolic link; a private {what} may not be one")
    if not (stat.S_ISDIR(info.st_mode) if is_dir else stat.S_ISREG(info.st_mode)):
        raise InsecurePermissions(f"{path} is not a {what}")
    me = os.geteuid()
    if info.st_uid != me:
        raise InsecurePermissions(
            f"{path} is owned by uid {info.st_uid}, not by this user (uid {me}): "
            f"run `chown {me} {path}` as root"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        fix = "700" if is_dir else "600"
        raise InsecurePermissions(
            f"{path} has mode {mode:04o}, which lets other users reach it; it must be accessible "
            f"by this user only: run `chmod {fix} {path}`"
        )


def read_private(path: Path, *, max_bytes: int) -> bytes:
    """Read a private file, checking the file actually opened.

    Args:
        path: the file.
        max_bytes: the largest size accepted.

    Returns:
        Its content.

    Raises:
        FileNotFoundError: it does not exist.
        InsecurePermissions: see :func:`check_private`.
        ValueError: it is larger than ``max_bytes``.
        OSError: it cannot be read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise InsecurePermissions(
                f"{path} is a symbolic link; a private file may not be one"
            ) from e
        raise
    with os.fdopen(fd, "rb") as f:
        _check_stat(path, os.fstat(f.fileno()), is_dir=False)
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{path} is larger than {max_bytes} bytes")
    return data


def write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write a ``0600`` file atomically.

    Args:
        path: the file to write.
        data: its whole content.
        replace: replace an existing file; when false an existing file is never touched.

    Raises:
        FileExistsError: ``path`` exists and ``replace`` is false.
        OSError: the write failed (the old state is intact).
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)  # atomic, and fails if the name exists
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_dir(path.parent)


@contextlib.contextmanager
def private_temp_file(directory: Path, data: bytes) -> Iterator[Path]:
    """Hold ``data`` in a ``0600`` temporary file in ``directory``, removed on exit.

    For libraries that read secrets from paths only (``ssl``): pass them data encrypted under a
    one-time password where they allow it.
    """
    fd, name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(name)
    finally:
        os.unlink(name)


def shred(path: Path) -> None:
    """Overwrite a file with random bytes, ``fsync``, then remove it.

    Journaling file systems and SSDs may keep old blocks: callers must not rely on this alone,
    only on it together with the file having been encrypted.

    Raises:
        FileNotFoundError: it does not exist.
    """
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.write(fd, secrets.token_bytes(os.fstat(fd).st_size))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a directory's entries (a new, renamed or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
