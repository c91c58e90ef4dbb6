"""Every limit of the protocol in one frozen object.

Sizes, counts and windows live here and nowhere else, so that an operator's config can override them
in one place and a reviewer can read them in one place. The defaults are what the three cities run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied while decoding, sealing and opening.

    Attributes:
        max_envelope_bytes: the largest sealed envelope accepted, checked before decoding.
        max_body_bytes: the largest signed body (the typed message) inside an envelope.
        max_document_bytes: the largest agreement, key bundle or key-log object decoded.
        max_clock_skew_s: how far in the future a timestamp may lie.
        max_message_age_s: how old a timestamp may be; also how long a message id is remembered.
        attachment_chunk_bytes: plaintext size of one attachment chunk.
        max_attachment_chunks: the largest number of chunks in one attachment.
        min_attachment_chunk_bytes: the smallest chunk size a stream may declare (a floor on the
            per-chunk overhead a peer can make us pay); ``attachment_chunk_bytes`` is also the
            largest one a reader accepts.
        max_receipt_bytes: the largest signed receipt accepted, checked before decoding.
        max_keylog_entries: the most entries a key-history log (ours or a peer's) may hold; also
            the largest size a key-log checkpoint may claim.
        max_keylog_bytes: the largest encoded key-history log or equivocation proof decoded.
        max_key_successions: the most identity-key succession statements followed for one city.
    """

    max_envelope_bytes: int = 256 * 1024
    max_body_bytes: int = 200 * 1024
    max_document_bytes: int = 256 * 1024
    max_clock_skew_s: int = 300
    max_message_age_s: int = 7 * 24 * 3600
    attachment_chunk_bytes: int = 64 * 1024
    max_attachment_chunks: int = 2**32 - 1
    min_attachment_chunk_bytes: int = 64
    max_receipt_bytes: int = 1024
    max_keylog_entries: int = 10_000
    max_keylog_bytes: int = 8 * 1024 * 1024
    max_key_successions: int = 64


DEFAULT_LIMITS: Final = Limits()
