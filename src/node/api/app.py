"""The case API: thin aiohttp handlers over the case service, behind bearer-token authentication.

Owns the routes of DESIGN.md's case API under ``/api/v1`` (mounted on the node's API listener
next to ``/healthz`` and ``/metrics``):

* ``GET /api/v1/openapi.json`` — the OpenAPI 3.1 description (no token needed);
* ``POST /api/v1/cases`` (201) and ``GET /api/v1/cases``;
* ``GET /api/v1/cases/{id}`` (``purpose`` parameter or ``X-Purpose`` header to see the person);
* ``POST /api/v1/cases/{id}/inquiry|reply|referral|intake|reports|close``;
* ``POST|GET /api/v1/cases/{id}/attachments`` (upload a document: the raw body, its media type
  as ``Content-Type`` or the ``media_type`` parameter, its name in the ``filename`` parameter;
  list them) and ``GET /api/v1/cases/{id}/attachments/{attachment_id}`` (download one, with a
  purpose): :mod:`node.cases.document_service`;
* ``GET /api/v1/reports/balance`` (``year`` parameter, else every year): the balance between the
  cities, :mod:`node.balance_report`.

Invariants:

* Every route but the description needs ``Authorization: Bearer <token>``, checked by
  :meth:`node.users.UserStore.authenticate` before the handler runs; the principal it returns is
  the only identity a handler acts as.
* Handlers parse at the edge (:mod:`node.api.requests`), call one service method, and encode the
  service's view; every failure becomes the one JSON error shape (:mod:`node.api.errors`).
* A document is streamed both ways, never read whole: an upload is encrypted as it arrives and
  bounded by ``max_document_bytes`` (a larger declared length is 413 before any of it is read),
  a download is decrypted into the response after its stream was verified in full.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import quote

import msgspec
from aiohttp import web

from node.access import Principal, Unauthenticated
from node.api.errors import JSON, ApiError, answer_error, internal_error
from node.api.openapi import (
    CASE_ACTIONS,
    FILENAME_PARAMETER,
    MEDIA_TYPE_PARAMETER,
    OPENAPI_PATH,
    PREFIX,
    YEAR_PARAMETER,
    openapi_document,
)
from node.api.requests import (
    CHUNK_BYTES,
    LIMIT_PARAMETER,
    PURPOSE_PARAMETER,
    case_id_of,
    limit_of,
    purpose_of,
    read_json,
    refuse_unknown_parameters,
)
from node.balance_report import FIRST_YEAR, LAST_YEAR, BalanceService
from node.cases.commands import NewInquiry
from node.cases.document_service import (
    DocumentNotFound,
    DocumentNotReady,
    DocumentService,
    DocumentTooLarge,
    DocumentUnreadable,
    Download,
    Upload,
    attachment_id_of,
)
from node.cases.records import MAX_LISTED
from node.cases.service import CaseService
from node.cases.views import CaseView
from node.errors import NodeError
from node.users import UserStore
from protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

PRINCIPAL: Final = web.RequestKey("principal", Principal)
DEFAULT_LISTED: Final = 100
_BEARER: Final = "bearer "
_MAX_TOKEN_CHARS: Final = 512

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_case_api(
    service: CaseService,
    users: UserStore,
    *,
    city: str,
    max_body_bytes: int,
    clock: Callable[[], float],
    documents: DocumentService | None = None,
    balance: BalanceService | None = None,
) -> web.Application:
    """Build the case API, to mount at ``/api/v1/`` (``app.add_subapp``).

    Args:
        service: the case service.
        users: authenticates bearer tokens.
        city: this node's city (named in the description).
        max_body_bytes: the largest request body (``NodeLimits.max_api_request_bytes``).
        clock: Unix seconds now (token expiry).
        documents: the case documents, or ``None``: the attachment routes are then not served.
        balance: the balance report, or ``None``: its route is then not served.

    Returns:
        The application.
    """
    description = msgspec.json.encode(openapi_document(city=city))
    public = frozenset({OPENAPI_PATH})

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path not in public:
                request[PRINCIPAL] = await users.authenticate(_token(request), clock())
            return await handler(request)
        except (NodeError, ProtocolError, ApiError, web.HTTPException) as e:
            return answer_error(e)
        except Exception:  # a bug: answered 500 without details, the traceback in the log
            logger.exception("case API: unexpected failure")
            return internal_error()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=description, content_type=JSON)

    async def open_case(request: web.Request) -> web.Response:
        refuse_unknown_parameters(request)
        command = await read_json(request, NewInquiry, max_bytes=max_body_bytes)
        view = await service.open_inquiry(request[PRINCIPAL], command)
        location = f"{PREFIX}/cases/{view.id}"
        return _json(view, status=201, headers={"Location": location})

    async def list_cases(request: web.Request) -> web.Response:
        refuse_unknown_parameters(request, frozenset({LIMIT_PARAMETER}))
        limit = limit_of(request, default=DEFAULT_LISTED, most=MAX_LISTED)
        return _json(await service.list_cases(request[PRINCIPAL], limit=limit))

    async def read_case(request: web.Request) -> web.Response:
        case_id = case_id_of(request)
        refuse_unknown_parameters(request, frozenset({PURPOSE_PARAMETER}))
        purpose = purpose_of(request)
        return _json(await service.read_case(request[PRINCIPAL], case_id, purpose))

    app = web.Application(middlewares=[guard])
    app.router.add_get("/openapi.json", openapi)
    app.router.add_post("/cases", open_case)
    app.router.add_get("/cases", list_cases)
    app.router.add_get("/cases/{case_id}", read_case)
    for action in CASE_ACTIONS:
        app.router.add_post(
            f"/cases/{{case_id}}/{action}", _action(service, action, max_body_bytes)
        )
    if documents is not None:
        _add_document_routes(app, documents)
    if balance is not None:
        app.router.add_get("/reports/balance", _balance_report(balance))
    return app


def _balance_report(balance: BalanceService) -> Handler:
    """The handler of ``GET /reports/balance``: one year (``year``), or every year."""

    async def handle(request: web.Request) -> web.StreamResponse:
        refuse_unknown_parameters(request, frozenset({YEAR_PARAMETER}))
        text = request.query.get(YEAR_PARAMETER)
        year = None
        if text is not None:
            if not (text.isascii() and text.isdigit() and len(text) == 4):
                raise ApiError(422, "invalid_field", "year must be a year of four digits")
            year = int(text)
            if not FIRST_YEAR <= year <= LAST_YEAR:
                raise ApiError(
                    422, "invalid_field", f"year must lie between {FIRST_YEAR} and {LAST_YEAR}"
                )
        return _json(await balance.report(request[PRINCIPAL], year))

    return handle


_DOCUMENT_ERRORS: Final[tuple[tuple[type[NodeError], int], ...]] = (
    (DocumentTooLarge, 413),
    (DocumentNotFound, 404),
    (DocumentNotReady, 409),
    (DocumentUnreadable, 409),
)


def _document_error(error: NodeError) -> ApiError | NodeError:
    for kind, status in _DOCUMENT_ERRORS:
        if isinstance(error, kind):
            return ApiError(status, error.code, error.message)
    return error


def _add_document_routes(app: web.Application, documents: DocumentService) -> None:
    """``POST|GET /cases/{case_id}/attachments`` and ``GET .../attachments/{attachment_id}``."""

    async def upload(request: web.Request) -> web.Response:
        case_id = case_id_of(request)
        refuse_unknown_parameters(request, frozenset({FILENAME_PARAMETER, MEDIA_TYPE_PARAMETER}))
        filename = request.query.get(FILENAME_PARAMETER)
        if filename is None:
            raise ApiError(422, "invalid_field", "the filename parameter is required")
        media_type = request.query.get(MEDIA_TYPE_PARAMETER) or request.content_type
        body = Upload(
            filename=filename,
            media_type=media_type,
            declared_bytes=request.content_length,
            pieces=request.content.iter_chunked(CHUNK_BYTES),
        )
        try:
            view = await documents.attach(request[PRINCIPAL], case_id, body)
        except NodeError as e:
            raise _document_error(e) from e
        location = f"{PREFIX}/cases/{request.match_info['case_id']}/attachments/{view.id}"
        return _json(view, status=201, headers={"Location": location})

    async def listing(request: web.Request) -> web.Response:
        case_id = case_id_of(request)
        refuse_unknown_parameters(request)
        return _json(await documents.list_documents(request[PRINCIPAL], case_id))

    async def download(request: web.Request) -> web.StreamResponse:
        case_id = case_id_of(request)
        refuse_unknown_parameters(request, frozenset({PURPOSE_PARAMETER}))
        try:
            attachment_id = attachment_id_of(request.match_info.get("attachment_id", ""))
            found = await documents.download(
                request[PRINCIPAL], case_id, attachment_id, purpose_of(request)
            )
        except NodeError as e:
            raise _document_error(e) from e
        return await _stream_document(request, found.view.filename, found)

    app.router.add_post("/cases/{case_id}/attachments", upload)
    app.router.add_get("/cases/{case_id}/attachments", listing)
    app.router.add_get("/cases/{case_id}/attachments/{attachment_id}", download)


async def _stream_document(
    request: web.Request, filename: str, found: Download
) -> web.StreamResponse:
    """Send a verified document; a failure mid-way cuts the connection (never a whole 200)."""
    response = web.StreamResponse(
        headers={
            "Content-Type": found.view.media_type,
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename, safe='')}",
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    response.content_length = found.view.size
    await response.prepare(request)
    try:
        async for piece in found.pieces:
            await response.write(piece)
    except Exception as e:  # noqa: BLE001 - the headers are sent: the only refusal left is to cut
        logger.warning("case API: document stream failed mid-way: %s", type(e).__name__)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def _action(service: CaseService, action: str, max_body_bytes: int) -> Handler:
    """The handler of ``POST /cases/{case_id}/<action>``."""
    kind, _ = CASE_ACTIONS[action]
    methods: dict[str, Callable[[Principal, bytes, Any], Awaitable[CaseView]]] = {
        "inquiry": service.update_inquiry,
        "reply": service.reply,
        "referral": service.send_referral,
        "intake": service.confirm_intake,
        "reports": service.send_report,
        "close": service.close,
    }
    method = methods[action]

    async def handle(request: web.Request) -> web.StreamResponse:
        case_id = case_id_of(request)
        refuse_unknown_parameters(request)
        command = await read_json(request, kind, max_bytes=max_body_bytes)
        return _json(await method(request[PRINCIPAL], case_id, command))

    return handle


def _token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    if not header[: len(_BEARER)].lower() == _BEARER or len(header) > _MAX_TOKEN_CHARS:
        raise Unauthenticated("a bearer token is required")
    token = header[len(_BEARER) :].strip()
    if not token:
        raise Unauthenticated("a bearer token is required")
    return token


def _json(
    view: msgspec.Struct, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(view), content_type=JSON, headers=headers
    )


__all__ = ["PRINCIPAL", "create_case_api"]
