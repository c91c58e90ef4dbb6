"""The documents promise only what exists: the spec is assembled, and names every code."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from protocol.errors import ErrorCode
from protocol.signing import Purpose

ROOT = Path(__file__).resolve().parents[1]


def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "build_protocol", ROOT / "docs" / "build_protocol.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_md_is_the_assembly_of_its_chapters() -> None:
    assert (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8") == _builder().assemble()


def test_protocol_md_names_every_error_code() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    missing = [code.value for code in ErrorCode if f"`{code.value}`" not in text]
    assert missing == []


def test_protocol_md_names_every_signature_purpose() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    missing = [p.value for p in Purpose if f"`{p.value}`" not in text]
    assert missing == []


def test_readme_links_only_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#:]+)\)", readme)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == []


def test_every_make_target_the_readme_and_developers_guide_name_exists() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    named = set()
    for doc in ("README.md", "DEVELOPERS.md"):
        named |= set(re.findall(r"`make ([a-z][a-z-]*)", (ROOT / doc).read_text(encoding="utf-8")))
    assert {"demo", "test"} <= named
    assert named - targets == set()
