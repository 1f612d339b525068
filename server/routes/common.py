"""Path parameter types shared by the routers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel

from server.tables import ID_PATTERN

__all__ = ["IdPath", "IdPathLate", "IdQuery", "json_body"]

IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An id such as rnd_<32 hex>.")]
# The same in the OpenAPI schema, checked by the route after the key (server.deps.unit_of_work)
IdPathLate = Annotated[
    str, Path(description="An id such as rnd_<32 hex>.", json_schema_extra={"pattern": ID_PATTERN})
]


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a required JSON body of ``model`` that the route parses itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }
IdQuery = Annotated[str | None, Query(pattern=ID_PATTERN)]
