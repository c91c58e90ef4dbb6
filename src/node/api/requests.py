"""Reading a case API request at the edge: the bounded JSON body, the case id, the purpose.

Owns the parsing of everything a client sends, before any of it reaches the case service.
Invariants:

* The body is bounded **before** it is read: a declared ``Content-Length`` above the limit is
  refused at once (413), and a body without one is read in chunks and refused as soon as it
  passes the limit; it is never held whole beyond the limit.
* Only ``application/json`` bodies are read (415 otherwise); a body that is not JSON is 400
  ``malformed``; JSON of the wrong shape is 422 ``invalid_field`` naming the path (``$.needs[0]``),
  never the value sent.
* Query parameters an operation does not take are refused (422), like unknown JSON fields.
* A case id is a UUID (``8-4-4-4-12`` hex digits, or 32 hex digits); anything else names no case
  (404).
"""

from __future__ import annotations

import re
import uuid
from typing import Final, TypeVar

import msgspec
from aiohttp import web

from node.api.errors import JSON, ApiError
from node.storage.case_store import CaseNotFound

T = TypeVar("T")

CHUNK_BYTES: Final = 64 * 1024
PURPOSE_HEADER: Final = "X-Purpose"
PURPOSE_PARAMETER: Final = "purpose"
LIMIT_PARAMETER: Final = "limit"
_CASE_ID: Final = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)
_WHERE: Final = re.compile(r" - at `(\$[^`]*)`$")


async def read_json(request: web.Request, kind: type[T], *, max_bytes: int) -> T:
    """Read and decode the request's JSON body into ``kind``.

    Args:
        request: the request.
        kind: the command type (a ``msgspec.Struct``).
        max_bytes: the largest body accepted.

    Returns:
        The decoded command.

    Raises:
        ApiError: 415 not JSON by its media type, 413 too large, 400 malformed, 422 wrong shape.
    """
    if request.content_type != JSON:
        raise ApiError(415, "unsupported_media_type", "the request body must be application/json")
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise ApiError(413, "oversized", f"the request body is larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(CHUNK_BYTES):
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, "oversized", f"the request body is larger than {max_bytes} bytes")
    try:
        return msgspec.json.decode(bytes(body), type=kind)
    except msgspec.ValidationError as e:
        raise ApiError(422, "invalid_field", _describe(str(e))) from e
    except msgspec.DecodeError as e:
        raise ApiError(400, "malformed", "the request body is not valid JSON") from e


def _describe(problem: str) -> str:
    """msgspec's reason, without any value it may quote (an enum value, an unknown key)."""
    found = _WHERE.search(problem)
    where = found.group(1) if found else "$"
    reason = problem[: found.start()] if found else problem
    if reason.startswith("Invalid enum value"):
        reason = "Invalid enum value"
    elif reason.startswith("Object contains unknown field"):
        reason = "Object contains an unknown field"
    return f"the request body is not valid at {where}: {reason}"


def case_id_of(request: web.Request) -> bytes:
    """The case id in the path.

    Raises:
        CaseNotFound: not a UUID (it names no case).
    """
    text = request.match_info.get("case_id", "")
    if not _CASE_ID.fullmatch(text):
        raise CaseNotFound("no case with this id is held by this node")
    return uuid.UUID(hex=text.replace("-", "")).bytes


def purpose_of(request: web.Request) -> str | None:
    """The purpose of an identity read: the ``X-Purpose`` header or the ``purpose`` parameter.

    Raises:
        ApiError: 422 when both are given and differ.
    """
    header = request.headers.get(PURPOSE_HEADER)
    parameter = request.query.get(PURPOSE_PARAMETER)
    if header is not None and parameter is not None and header != parameter:
        raise ApiError(422, "invalid_field", "purpose given twice, differently")
    return header if header is not None else parameter


def refuse_unknown_parameters(request: web.Request, allowed: frozenset[str] = frozenset()) -> None:
    """Refuse a query parameter the operation does not take (a misspelt ``purpose`` would
    otherwise pass unnoticed).

    Raises:
        ApiError: 422 ``invalid_field``; the parameter's name is not quoted.
    """
    if any(name not in allowed for name in request.query):
        raise ApiError(422, "invalid_field", "the request has a query parameter it does not take")


def limit_of(request: web.Request, *, default: int, most: int) -> int:
    """The ``limit`` query parameter, 1..``most``.

    Raises:
        ApiError: 422 when it is not an integer in range.
    """
    text = request.query.get(LIMIT_PARAMETER)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 6 and 1 <= int(text) <= most):
        raise ApiError(422, "invalid_field", f"limit must be an integer from 1 to {most}")
    return int(text)
