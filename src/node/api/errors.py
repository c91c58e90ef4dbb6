"""How the case API answers a failure: one JSON shape, a stable code, the right 4xx.

Owns the mapping from the node's and the protocol's errors to HTTP. Invariants:

* Every error answer is ``{"error": {"code": ..., "message": ...}}`` with ``Content-Type:
  application/json``; the code is the error's stable code, the message its human sentence, which
  never holds a value from the request (a name, a personnummer, a document's text).
* Bad input is a 4xx and changes nothing: 400 ``malformed`` (not JSON), 401 ``unauthenticated``
  (missing, unknown, expired or revoked token), 403 ``forbidden`` (the role may not), 404
  ``unknown_case`` (no such case — or a case of another unit: its existence is not revealed), 409
  ``invalid_transition`` / ``quota_exceeded``, 413 ``oversized``, 415
  ``unsupported_media_type``, 422 for a field or a rule of the agreement (``invalid_field``,
  ``invalid_personnummer``, ``not_a_member``, ``unknown_unit``, ``outside_period``,
  ``not_eligible``, ``invalid_purpose``).
* What the node cannot do now is a 503 with ``Retry-After`` (no agreement, no keys from the peer
  yet, a full outbox, the database down). Anything else is a 500 ``internal_error``, logged with
  its traceback; its details never reach the client.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
from aiohttp import web

from node.access import Forbidden, Unauthenticated
from node.audit import InvalidPurpose
from node.delivery import Overloaded
from node.errors import NodeError
from node.storage.case_store import CaseNotFound
from node.storage.database import StorageError
from node.storage.vault import CaseShredded
from node.trust import UnknownPeer
from protocol.errors import STATUS, ErrorCode, ProtocolError

logger = logging.getLogger(__name__)

RETRY_AFTER_S: Final = "5"
JSON: Final = "application/json"

# The protocol's status hints are written for peers; a case worker's request that names a city
# outside the agreement is a validation failure of the request, not an authentication one.
_API_STATUS: Final[dict[str, int]] = {ErrorCode.NOT_A_MEMBER.value: 422}

# ``node.service.NoAgreement`` (matched by code: the service module mounts this API).
_NO_AGREEMENT: Final = "no_agreement"

_NODE_STATUS: Final[tuple[tuple[type[NodeError], int], ...]] = (
    (Forbidden, 403),
    (InvalidPurpose, 422),
    (CaseShredded, 410),
)

_HTTP_CODES: Final[dict[int, str]] = {
    404: "not_found",
    405: "method_not_allowed",
    413: ErrorCode.OVERSIZED.value,
}


class ErrorDetail(msgspec.Struct, frozen=True):
    """The error: a stable code and a human sentence."""

    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    """Every error answer of the case API."""

    error: ErrorDetail


class ApiError(Exception):
    """A refusal made by the API layer itself (request shape, media type, size).

    Attributes:
        status: the HTTP status.
        code: the stable code.
        message: the sentence (no request value in it).
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The JSON error answer."""
    body = msgspec.json.encode(ErrorBody(ErrorDetail(code=code, message=message)))
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


def answer_error(error: Exception) -> web.Response:
    """Turn any exception raised by a handler into the JSON answer.

    Args:
        error: what the handler raised.

    Returns:
        The response (4xx for a refusal, 503 for an unavailable dependency, 500 otherwise).
    """
    if isinstance(error, ApiError):
        return error_response(error.status, error.code, error.message)
    if isinstance(error, web.HTTPException):
        return _http_error(error)
    if isinstance(error, ProtocolError):
        status = _API_STATUS.get(error.code.value, STATUS.get(error.code, 400))
        if status >= 500:
            return error_response(status, error.code.value, error.message, _retry())
        return error_response(status, error.code.value, error.message)
    if isinstance(error, NodeError):
        return _node_error(error)
    logger.error("case API: unexpected failure", exc_info=error)
    return internal_error()


def _node_error(error: NodeError) -> web.Response:
    if isinstance(error, Unauthenticated):
        return error_response(
            401, error.code, error.message, {"WWW-Authenticate": 'Bearer realm="citynode"'}
        )
    if isinstance(error, CaseNotFound):  # also a case of another unit: the same answer
        return error_response(404, CaseNotFound.code, "no case with this id is held by this node")
    for kind, status in _NODE_STATUS:
        if isinstance(error, kind):
            return error_response(status, error.code, error.message)
    if isinstance(error, UnknownPeer | Overloaded | StorageError) or error.code == _NO_AGREEMENT:
        logger.warning("case API: unavailable: %s", error.code)
        return error_response(503, error.code, error.message, _retry())
    logger.error("case API: node error %s", error.code, exc_info=error)
    return internal_error()


def internal_error() -> web.Response:
    """The answer to a failure that is not the client's: no details (they are in the log)."""
    return error_response(500, "internal_error", "the node failed to answer; see its log")


def _http_error(error: web.HTTPException) -> web.Response:
    headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
    code = _HTTP_CODES.get(error.status, "bad_request" if error.status < 500 else "internal_error")
    return error_response(error.status, code, error.reason, headers)


def _retry() -> dict[str, str]:
    return {"Retry-After": RETRY_AFTER_S}
