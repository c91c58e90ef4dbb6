"""Fixtures for the federation transport tests: three cities' certificates and a live listener.

Stockholm serves; Göteborg is its pinned peer; Malmö's certificate is in Stockholm's SSL trust
store but not in its pin table (a retired pin); an outsider's certificate is trusted by nobody.
Helpers live in ``federation_support.py`` beside this file; this directory is put on
``sys.path`` here so that ``from federation_support import ...`` works whatever the import mode.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from federation_support import (  # noqa: E402
    Listener,
    certificate,
    peer_session,
    start_listener,
)

from node.federation.tls import PinTable  # noqa: E402
from node.tls_material import TlsMaterial  # noqa: E402


@pytest.fixture(scope="session")
def stockholm() -> TlsMaterial:
    return certificate("stockholm")


@pytest.fixture(scope="session")
def goteborg() -> TlsMaterial:
    return certificate("goteborg")


@pytest.fixture(scope="session")
def malmo() -> TlsMaterial:
    return certificate("malmo")


@pytest.fixture(scope="session")
def outsider() -> TlsMaterial:
    return certificate("goteborg")  # claims a member's name; its key is pinned nowhere


@pytest.fixture
async def listener(
    stockholm: TlsMaterial, goteborg: TlsMaterial, malmo: TlsMaterial
) -> AsyncIterator[Listener]:
    pins = PinTable.from_certificates({"goteborg": [goteborg.certificate_pem]})
    running = await start_listener(stockholm, [goteborg, malmo], pins)
    yield running
    await running.runner.cleanup()


@pytest.fixture
async def session(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial
) -> AsyncIterator[aiohttp.ClientSession]:
    client = peer_session(goteborg, stockholm)
    yield client
    await client.close()
