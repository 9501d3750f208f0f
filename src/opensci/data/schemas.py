"""Wire shapes of the data domain (tables and statistics of a dataset revision)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ColumnOut(BaseModel):
    name: str
    type: str = Field(description="Arrow type, e.g. int64, double, string, timestamp[us].")


class TableOut(BaseModel):
    name: str
    num_rows: int
    columns: list[ColumnOut]
    sources: list[str] = Field(description="Repository paths of the table's files, in row order.")
    notes: list[str] = []


class FileErrorOut(BaseModel):
    path: str
    reason: str


class TablesOut(BaseModel):
    commit: str | None = Field(
        description="The commit the tables were read from; null for an empty repository."
    )
    tables: list[TableOut]
    errors: list[FileErrorOut] = Field(description="Files that look like tables but cannot be read, and why.")


class RowsOut(BaseModel):
    rows: list[dict[str, Any]]
    num_rows: int
    offset: int
    limit: int
    commit: str


class StatsOut(BaseModel):
    table: str
    num_rows: int
    commit: str
    columns: list[dict[str, Any]] = Field(
        description="Per column: name, type, count, nulls, distinct (estimate); min, max, mean, std, "
        "non_finite and histogram {edges, counts} for numbers; top [{value, count}] for text and booleans."
    )
