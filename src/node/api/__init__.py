"""The case API: JSON over HTTP for case workers, coordinators and tools, with bearer tokens.

* :mod:`~node.api.app` — :func:`~node.api.app.create_case_api`, the routes and the token check.
* :mod:`~node.api.requests` — parsing at the edge: bounded JSON bodies, case ids, the purpose.
* :mod:`~node.api.errors` — the one error shape and the status of every refusal.
* :mod:`~node.api.openapi` — the OpenAPI 3.1 description, generated from the handlers' types.
"""
