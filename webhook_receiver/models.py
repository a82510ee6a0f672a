"""Pydantic models at the edge: the parts of each vendor's payload we rely on."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ShopMonkeyRow(BaseModel):
    # ShopMonkey sends the whole row; we keep it all but need only these.
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    updatedDate: str | None = Field(default=None, max_length=40)


class ShopMonkeyWebhook(BaseModel):
    model_config = ConfigDict(extra="allow")
    apiVersion: str | None = Field(default=None, max_length=8)
    operation: Literal["INSERT", "UPDATE", "DELETE"]
    table: str = Field(min_length=1, max_length=64, pattern=r"^[a-z_]+$")
    data: ShopMonkeyRow
    diff: list[str] | None = Field(default=None, max_length=500)


class Accepted(BaseModel):
    status: Literal["accepted", "duplicate"]
    event_id: int | None = None


class TekmetricAnswer(BaseModel):
    # ignored: an event about no repair order of the shop (an inspection, another shop's order)
    status: Literal["accepted", "duplicate", "ignored"]
    event_id: int | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def inline_schema(model: type[BaseModel]) -> dict:
    """The model's JSON Schema with nested models written in place, for use in
    `openapi_extra` (a `#/$defs/...` reference would not resolve inside an OpenAPI file)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
