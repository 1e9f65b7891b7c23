"""Voluptuous validators shared by the route schemas.

Each is a small callable object rather than a closure, so that what it
accepts can be read back: ``json_schema()`` is what the OpenAPI document
(``server.apidoc``) says about the parameter, from the same numbers the
check uses.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import voluptuous as vol

from storage.records import MAX_ID

# Longer digit strings are past MAX_ID anyway; int() of thousands of digits is slow.
MAX_INTEGER_DIGITS = 20


@dataclasses.dataclass(frozen=True)
class Integer:
    """An integer in range: a JSON number, or its decimal digits (query and form values)."""

    min_value: int = 0
    max_value: int = MAX_ID

    def __call__(self, value: Any) -> int:
        out_of_range = f"expected an integer {self.min_value}..{self.max_value}"
        if isinstance(value, bool):
            raise vol.Invalid("expected an integer")
        if isinstance(value, str) and value.isascii() and value.isdigit():
            if len(value) > MAX_INTEGER_DIGITS:
                raise vol.Invalid(out_of_range)
            value = int(value)
        if not isinstance(value, int):
            raise vol.Invalid("expected an integer")
        if not self.min_value <= value <= self.max_value:
            raise vol.Invalid(out_of_range)
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.min_value, "maximum": self.max_value}


@dataclasses.dataclass(frozen=True)
class Text:
    """A string of ``min_length``-``max_length`` characters that is not only whitespace.

    It must be valid Unicode: JSON can carry a lone surrogate (``"\\ud800"``),
    which no UTF-8 column stores and no answer could encode.
    """

    min_length: int
    max_length: int
    strip: bool = False  # surrounding whitespace is dropped, then the length is checked

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str):
            raise vol.Invalid("expected a string")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise vol.Invalid("must be valid Unicode text (it holds a lone surrogate)") from None
        checked = value.strip() if self.strip else value
        if not value.strip():
            raise vol.Invalid("must not be empty or only whitespace")
        if not self.min_length <= len(checked) <= self.max_length:
            raise vol.Invalid(f"length must be {self.min_length}-{self.max_length} characters")
        return checked

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "minLength": self.min_length, "pattern": r"\S"}
        if self.strip:
            schema["description"] = (
                f"{self.min_length}-{self.max_length} characters once surrounding whitespace is stripped"
            )
        else:
            schema["maxLength"] = self.max_length
        return schema


@dataclasses.dataclass(frozen=True)
class HttpUrl:
    """An http(s) URL of at most ``max_length`` characters."""

    max_length: int

    def __call__(self, value: Any) -> str:
        if not isinstance(value, str) or len(value) > self.max_length or not value.startswith(("http://", "https://")):
            raise vol.Invalid(f"expected an http(s) URL of at most {self.max_length} characters")
        return value

    def json_schema(self) -> dict[str, Any]:
        return {"type": "string", "maxLength": self.max_length, "pattern": "^https?://"}


CONVERSATION_ID = Integer(1)  # a path id
