"""Put this directory on ``sys.path`` so that the tests import the independent implementation
(``reference``, ``reference_messages``, ``reference_trust``) whatever pytest's import mode."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
