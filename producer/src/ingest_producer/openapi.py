"""OpenAPI corrections for what Litestar cannot infer.

Litestar documents a request body only when the handler takes a ``data`` argument, which
would also make it decode the body through its signature model. Our routes decode with
msgspec themselves, so their Operation states the body schema, taken from the same Struct
the decoder uses. And Litestar documents a 400 for parameter errors, which we answer with 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import Operation

_REF_TEMPLATE = "#/components/schemas/{name}"


def json_body_operation(struct: type[msgspec.Struct], description: str) -> type[Operation]:
    """An Operation class whose requestBody is ``struct``'s JSON schema (a flat Struct)."""
    _, components = msgspec.json.schema_components([struct], ref_template=_REF_TEMPLATE)
    if len(components) != 1:
        msg = f"{struct.__name__} refers to other Structs; inline schemas cannot hold them"
        raise TypeError(msg)
    request_body = {
        "description": description,
        "required": True,
        "content": {"application/json": {"schema": components[struct.__name__]}},
    }

    @dataclass
    class JsonBodyOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            schema = super().to_schema()
            schema["requestBody"] = request_body
            return schema

    return JsonBodyOperation


@dataclass
class ParameterOperation(Operation):
    """For routes with query parameters: their errors are 422 (see ``errors.py``), not 400."""

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        schema.get("responses", {}).pop("400", None)
        return schema
