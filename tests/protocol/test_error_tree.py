"""The error tree drawn in protocol/errors.py's docstring is the tree the module defines."""

from __future__ import annotations

import inspect

from protocol import errors


def test_every_error_class_is_drawn_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    classes = [
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.ProtocolError)
    ]
    assert len(classes) >= 9
    assert [name for name in classes if name not in doc] == []


def test_every_error_code_has_a_status_hint() -> None:
    assert set(errors.STATUS) == set(errors.ErrorCode)
    assert all(400 <= status < 600 for status in errors.STATUS.values())
