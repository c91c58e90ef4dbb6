"""The node's error root: every error raised by ``node`` has a stable code and a human sentence.

Protocol errors (``protocol.errors.ProtocolError``) keep their own tree and codes; the node wraps
library and I/O failures at its boundaries into subclasses of :class:`NodeError`, each module
defining the few it needs (``ConfigError``, ``KeystoreError``, ``StorageError``...). Messages never
carry personal data, secrets or key material.
"""

from __future__ import annotations

from typing import ClassVar


class NodeError(Exception):
    """Root of every error raised by ``node``: a stable code and a human sentence.

    Attributes:
        code: stable string that tools and tests match on.
        message: a sentence without personal data or secrets.
    """

    code: ClassVar[str] = "node_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
