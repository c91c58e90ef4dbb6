"""Shared fixtures of the protocol tests.

The Hypothesis strategies for the message catalogue live in ``strategies.py`` beside this file;
test modules import them as ``from strategies import ...``. This directory is put on ``sys.path``
here so that the import works whatever pytest's import mode.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

REFERENCE_DAY = datetime.date(2026, 1, 1)
"""The "today" of tests that need one: the start of the extended agreement period."""


@pytest.fixture
def today() -> datetime.date:
    """A fixed reference date (protocol code never reads the clock)."""
    return REFERENCE_DAY
