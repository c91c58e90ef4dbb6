"""Where the operator secret comes from: the environment, a secret file, or a prompt.

Owns the one way the node obtains the secret that unlocks its keystore. Invariants:

* Sources are tried in a fixed order: an explicit secret file (``--secret-file``), then
  ``CITYNODE_SECRET``, then the file named by ``CITYNODE_SECRET_FILE`` (suits systemd credentials
  and container secrets), then an interactive prompt — only when standard input is a terminal.
  With none of them, :class:`SecretUnavailable` says how to provide one; the node never waits on
  a prompt nobody can see.
* A secret file must be a regular file of the node's user, readable by that user only (mode
  ``0600`` or ``0400``): the rule of :mod:`node.private_files`, as for the key files it unlocks.
  One trailing newline is dropped.
* The secret travels as an :class:`OperatorSecret`, whose ``repr`` hides it, so it cannot leak
  into a log line or a traceback by accident.
* A secret for a *new* keystore is at least :data:`MIN_NEW_SECRET_CHARS` characters, and a
  prompted one is asked twice.
* The environment, the prompt and the terminal test are injected, so tests need no patching.
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import ClassVar, Final

from node.errors import NodeError
from node.private_files import InsecurePermissions, read_private

SECRET_ENV: Final = "CITYNODE_SECRET"  # noqa: S105  (a variable name, not a secret)
SECRET_FILE_ENV: Final = "CITYNODE_SECRET_FILE"  # noqa: S105
MIN_NEW_SECRET_CHARS: Final = 12
MAX_SECRET_BYTES: Final = 4096


class SecretUnavailable(NodeError):
    """No usable operator secret: none given, unreadable, too open, empty or too short."""

    code: ClassVar[str] = "secret_unavailable"


class OperatorSecret:
    """The operator secret as bytes, hidden from ``repr`` and ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    @property
    def value(self) -> bytes:
        """The secret's bytes (UTF-8 when it came from text)."""
        return self._value

    def __repr__(self) -> str:
        return "OperatorSecret(<hidden>)"

    __str__ = __repr__


def read_operator_secret(
    *,
    secret_file: Path | None = None,
    new: bool = False,
    environ: Mapping[str, str] = os.environ,
    prompt: Callable[[str], str] = getpass.getpass,
    is_interactive: Callable[[], bool] | None = None,
) -> OperatorSecret:
    """Obtain the operator secret from the first source that is given.

    Args:
        secret_file: a file holding the secret (``--secret-file``); tried first.
        new: the secret will protect a new keystore: require :data:`MIN_NEW_SECRET_CHARS` and
            ask twice when prompting.
        environ: the process environment.
        prompt: reads a line without echo (``getpass.getpass``).
        is_interactive: whether a person can answer a prompt (default: stdin is a terminal).

    Returns:
        The secret.

    Raises:
        SecretUnavailable: no source given, or the source is unreadable, too open, empty,
            too long, too short for a new keystore, or the two prompted entries differ.
    """
    if secret_file is not None:
        secret = _read_secret_file(secret_file, "--secret-file")
    elif environ.get(SECRET_ENV):
        secret = _checked_bytes(environ[SECRET_ENV].encode(), SECRET_ENV)
    elif environ.get(SECRET_FILE_ENV):
        secret = _read_secret_file(Path(environ[SECRET_FILE_ENV]), SECRET_FILE_ENV)
    elif (is_interactive or _stdin_is_terminal)():
        secret = _prompt(prompt, new=new)
    else:
        raise SecretUnavailable(
            f"no operator secret: set {SECRET_ENV}, or {SECRET_FILE_ENV} to a file readable by "
            "this user only, or pass --secret-file, or run on a terminal to be prompted"
        )
    if new and len(secret.decode(errors="replace")) < MIN_NEW_SECRET_CHARS:
        raise SecretUnavailable(
            f"the operator secret for a new keystore must be at least {MIN_NEW_SECRET_CHARS} "
            "characters long"
        )
    return OperatorSecret(secret)


def _stdin_is_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _read_secret_file(path: Path, source: str) -> bytes:
    try:
        data = read_private(path, max_bytes=MAX_SECRET_BYTES)
    except InsecurePermissions as e:
        raise SecretUnavailable(f"the secret file (from {source}) is refused: {e}") from e
    except ValueError as e:
        raise SecretUnavailable(
            f"the secret file {path} (from {source}) is longer than {MAX_SECRET_BYTES} bytes"
        ) from e
    except OSError as e:
        raise SecretUnavailable(
            f"the secret file {path} (from {source}) cannot be read ({e.strerror})"
        ) from e
    return _checked_bytes(_strip_newline(data), f"the secret file {path}")


def _strip_newline(data: bytes) -> bytes:
    for ending in (b"\r\n", b"\n"):
        if data.endswith(ending):
            return data[: -len(ending)]
    return data


def _checked_bytes(secret: bytes, source: str) -> bytes:
    if not secret:
        raise SecretUnavailable(f"the operator secret from {source} is empty")
    if len(secret) > MAX_SECRET_BYTES:
        raise SecretUnavailable(
            f"the operator secret from {source} is longer than {MAX_SECRET_BYTES} bytes"
        )
    return secret


def _prompt(prompt: Callable[[str], str], *, new: bool) -> bytes:
    first = _checked_bytes(prompt("Operator secret: ").encode(), "the prompt")
    if new and prompt("Repeat the operator secret: ").encode() != first:
        raise SecretUnavailable("the two entries of the operator secret differ")
    return first
