"""The case API: thin aiohttp handlers over the case service, behind bearer-token authentication.

Owns the routes of DESIGN.md's case API under ``/api/v1`` (mounted on the node's API listener
next to ``/healthz`` and ``/metrics``):

* ``GET /api/v1/openapi.json`` — the OpenAPI 3.1 description (no token needed);
* ``POST /api/v1/cases`` (201) and ``GET /api/v1/cases``;
* ``GET /api/v1/cases/{id}`` (``purpose`` parameter or ``X-Purpose`` header to see the person);
* ``POST /api/v1/cases/{id}/inquiry|reply|referral|intake|reports|close``.

Invariants:

* Every route but the description needs ``Authorization: Bearer <token>``, checked by
  :meth:`node.users.UserStore.authenticate` before the handler runs; the principal it returns is
  the only identity a handler acts as.
* Handlers parse at the edge (:mod:`node.api.requests`), call one service method, and encode the
  service's view; every failure becomes the one JSON error shape (:mod:`node.api.errors`).
* Not built yet, and therefore not routed: ``GET /api/v1/reports/balance`` (the balance report)
  and ``POST /api/v1/cases/{id}/attachments`` (documents): they answer 404 like any unknown path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from aiohttp import web

from node.access import Principal, Unauthenticated
from node.api.errors import JSON, ApiError, answer_error, internal_error
from node.api.openapi import CASE_ACTIONS, OPENAPI_PATH, PREFIX, openapi_document
from node.api.requests import (
    LIMIT_PARAMETER,
    PURPOSE_PARAMETER,
    case_id_of,
    limit_of,
    purpose_of,
    read_json,
    refuse_unknown_parameters,
)
from node.cases.commands import NewInquiry
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
) -> web.Application:
    """Build the case API, to mount at ``/api/v1/`` (``app.add_subapp``).

    Args:
        service: the case service.
        users: authenticates bearer tokens.
        city: this node's city (named in the description).
        max_body_bytes: the largest request body (``NodeLimits.max_api_request_bytes``).
        clock: Unix seconds now (token expiry).

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
    return app


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
