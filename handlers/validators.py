"""Voluptuous validators shared by the route schemas."""

from __future__ import annotations

from typing import Any, Callable

import voluptuous as vol


def Integer(min_value: int = 0, max_value: int | None = None) -> Callable[[Any], int]:
    """An integer in range: a JSON number, or its decimal digits (query and form values)."""

    def validate(value: Any) -> int:
        if isinstance(value, bool):
            raise vol.Invalid("expected an integer")
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
            value = int(value)
        if not isinstance(value, int):
            raise vol.Invalid("expected an integer")
        if value < min_value or (max_value is not None and value > max_value):
            bound = f"{min_value}..{max_value}" if max_value is not None else f">= {min_value}"
            raise vol.Invalid(f"expected an integer {bound}")
        return value

    return validate


def Text(min_length: int, max_length: int, strip: bool = False) -> Callable[[Any], str]:
    """A string of ``min_length``-``max_length`` characters that is not only whitespace."""

    def validate(value: Any) -> str:
        if not isinstance(value, str):
            raise vol.Invalid("expected a string")
        checked = value.strip() if strip else value
        if not value.strip():
            raise vol.Invalid("must not be empty or only whitespace")
        if not min_length <= len(checked) <= max_length:
            raise vol.Invalid(f"length must be {min_length}-{max_length} characters")
        return checked

    return validate


def conversation_id_from_path(value: str) -> int:
    """A path id: a positive integer."""
    return Integer(1, 2**63 - 1)(value)
