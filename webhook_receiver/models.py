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


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
