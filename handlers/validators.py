"""Voluptuous validators shared by the route schemas."""

from __future__ import annotations

from typing import Any, Callable

import voluptuous as vol

from storage.records import MAX_ID

# Longer digit strings are past MAX_ID anyway; int() of thousands of digits is slow.
MAX_INTEGER_DIGITS = 20


def Integer(min_value: int = 0, max_value: int = MAX_ID) -> Callable[[Any], int]:
    """An integer in range: a JSON number, or its decimal digits (query and form values)."""
    out_of_range = f"expected an integer {min_value}..{max_value}"

    def validate(value: Any) -> int:
        if isinstance(value, bool):
            raise vol.Invalid("expected an integer")
        if isinstance(value, str) and value.isascii() and value.isdigit():
            if len(value) > MAX_INTEGER_DIGITS:
                raise vol.Invalid(out_of_range)
            value = int(value)
        if not isinstance(value, int):
            raise vol.Invalid("expected an integer")
        if not min_value <= value <= max_value:
            raise vol.Invalid(out_of_range)
        return value

    return validate


def Text(min_length: int, max_length: int, strip: bool = False) -> Callable[[Any], str]:
    """A string of ``min_length``-``max_length`` characters that is not only whitespace.

    It must be valid Unicode: JSON can carry a lone surrogate (``"\\ud800"``),
    which no UTF-8 column stores and no answer could encode.
    """

    def validate(value: Any) -> str:
        if not isinstance(value, str):
            raise vol.Invalid("expected a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise vol.Invalid("must be valid Unicode text (it holds a lone surrogate)") from None
        checked = value.strip() if strip else value
        if not value.strip():
            raise vol.Invalid("must not be empty or only whitespace")
        if not min_length <= len(checked) <= max_length:
            raise vol.Invalid(f"length must be {min_length}-{max_length} characters")
        return checked

    return validate


def conversation_id_from_path(value: str) -> int:
    """A path id: a positive integer."""
    return Integer(1)(value)
