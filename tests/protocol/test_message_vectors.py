"""The known answers of ``tests/vectors/messages.json``, checked both ways with ``protocol``.

Each sample's body decodes to exactly its fields, and the message built from those fields encodes
to exactly its body; non-canonical bodies decode to their message; refused bodies are refused with
their code as the peer's fault. The file itself must be what ``generate_messages.py`` writes.
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from protocol import codec
from protocol.errors import RemoteProtocolError
from protocol.limits import Limits
from protocol.messages import MESSAGE_TYPES, decode_message, message_tag, message_type_name

VECTOR_DIR = Path(__file__).resolve().parents[1] / "vectors"
VECTORS: dict[str, Any] = json.loads((VECTOR_DIR / "messages.json").read_text("utf-8"))


@cache
def generator() -> ModuleType:
    """The generator script, loaded as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "generate_messages", VECTOR_DIR / "generate_messages.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def by_name(vectors: list[dict[str, Any]]) -> list[Any]:
    return [pytest.param(v, id=v["name"]) for v in vectors]


def test_messages_json_is_what_the_generator_writes() -> None:
    on_disk = (VECTOR_DIR / "messages.json").read_text("utf-8")
    assert generator().render(generator().build()) == on_disk, "run generate_messages.py"


def test_every_message_type_has_a_known_answer() -> None:
    covered = {v["message"]["type"] for v in VECTORS["messages"]}
    assert covered == {message_type_name(kind) for kind in MESSAGE_TYPES}
    assert {v["tag"] for v in VECTORS["messages"]} == {1, 2, 3, 4, 5, 6, 16, 17, 18, 19, 20}


@pytest.mark.parametrize("vector", by_name(VECTORS["messages"]))
def test_known_body_decodes_to_exactly_its_fields(vector: dict[str, Any]) -> None:
    message = decode_message(bytes.fromhex(vector["body"]))
    assert message_tag(message) == vector["tag"]
    assert generator().to_json(message) == vector["message"]


@pytest.mark.parametrize("vector", by_name(VECTORS["messages"]))
def test_message_built_from_its_fields_encodes_to_exactly_its_body(vector: dict[str, Any]) -> None:
    message = generator().from_json(vector["message"])
    assert codec.encode(message).hex() == vector["body"]


@pytest.mark.parametrize("vector", by_name(VECTORS["noncanonical"]))
def test_noncanonical_body_decodes_and_reencodes_canonically(vector: dict[str, Any]) -> None:
    message = decode_message(bytes.fromhex(vector["body"]))
    assert generator().to_json(message) == vector["message"]
    assert codec.encode(message).hex() == vector["canonical"]


@pytest.mark.parametrize("vector", by_name(VECTORS["refused"]))
def test_refused_body_is_the_peers_fault_with_its_code(vector: dict[str, Any]) -> None:
    limits = Limits(max_body_bytes=vector.get("max_body_bytes", Limits().max_body_bytes))
    with pytest.raises(RemoteProtocolError) as refused:
        decode_message(bytes.fromhex(vector["body"]), limits)
    assert str(refused.value.code) == vector["code"]
