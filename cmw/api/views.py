"""Small helpers views share to build response bodies."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema


def attributes(obj: Any, schema: type[Schema]) -> dict[str, Any]:
    """The object's values for the schema's fields, undumped, for a response schema."""
    return {name: getattr(obj, name) for name in schema().fields if hasattr(obj, name)}
