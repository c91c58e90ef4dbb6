"""`protocol` is sans-IO: no clock, network, disk, randomness or database inside.

These tests read the source of every module of the package and refuse any import or call that
could reach the outside world, so a slip shows up in CI rather than in a review.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import protocol

PACKAGE_DIR = Path(protocol.__file__).parent
SOURCES = sorted(PACKAGE_DIR.glob("*.py"))

# Modules whose import alone gives access to I/O, time or randomness.
FORBIDDEN_MODULES = {
    "asyncio",
    "socket",
    "ssl",
    "os",
    "io",
    "pathlib",
    "shutil",
    "subprocess",
    "tempfile",
    "time",
    "random",
    "secrets",
    "uuid",
    "sqlite3",
    "sqlalchemy",
    "aiohttp",
    "urllib",
    "http",
    "logging",
    "threading",
    "multiprocessing",
}
# Calls that read the clock, the RNG or the disk even through allowed modules.
FORBIDDEN_ATTRIBUTES = {"now", "today", "utcnow", "urandom", "generate", "fromtimestamp"}
FORBIDDEN_NAMES = {"open", "input", "print", "exec", "eval", "__import__"}


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_protocol_package_has_modules() -> None:
    assert len(SOURCES) >= 3


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_protocol_module_imports_nothing_that_does_io(source: Path) -> None:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    assert not (_imports(tree) & FORBIDDEN_MODULES), f"{source.name} imports an I/O module"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_protocol_module_reads_no_clock_rng_or_disk(source: Path) -> None:
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                assert func.attr not in FORBIDDEN_ATTRIBUTES, (
                    f"{source.name}:{node.lineno} calls .{func.attr}()"
                )
            elif isinstance(func, ast.Name):
                assert func.id not in FORBIDDEN_NAMES, (
                    f"{source.name}:{node.lineno} calls {func.id}()"
                )


def test_every_protocol_module_imports_cleanly() -> None:
    names = [m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)])]
    for name in names:
        importlib.import_module(f"protocol.{name}")
    assert "errors" in names
