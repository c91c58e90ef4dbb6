"""Fixtures of the fuzz harness tests: the protocol and node test fixtures on ``sys.path``.

The seeds are built from the deterministic keys of ``tests/protocol`` (``sealing_fixtures``,
``agreement_fixtures``, ``keylog_fixtures``, ``strategies``) and the HTTP target from the
in-process nodes of ``tests/node`` (``node_fixtures``); both directories and this one are put on
``sys.path`` here, whatever pytest's import mode, exactly as ``run.py`` does for ``make fuzz``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "protocol", _HERE.parent / "node"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
