"""The catalog record every source produces, and the checks every source passes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Catalog", "CatalogError", "content_hash", "validate_items"]


class CatalogError(ValueError):
    """A catalog cannot be read as asked; the message names the file and the problem."""


@dataclass
class Catalog:
    name: str
    items: pa.Table
    """item_id: string, text: string, + source columns."""
    users: pa.Table | None = None
    interactions: pa.Table | None = None
    """user_id: string, item_id: string, rating: float64, ts: float64."""


def content_hash(text: str) -> str:
    """What decides whether an item must be re-embedded (16 hex chars of sha256)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def validate_items(items: pa.Table, where: str) -> pa.Table:
    """Check the core schema: ids present and unique, text present and non-empty."""
    for col in ("item_id", "text"):
        if col not in items.column_names:
            raise CatalogError(f"{where}: missing column {col!r} (have: {', '.join(items.column_names)})")
    ids = items.column("item_id")
    if ids.null_count:
        raise CatalogError(f"{where}: {ids.null_count} item(s) have no id")
    counts = pc.value_counts(ids)
    dup = [v["values"].as_py() for v in counts if v["counts"].as_py() > 1]
    if dup:
        raise CatalogError(f"{where}: duplicate item ids: {', '.join(map(str, dup[:5]))}"
                           + (f" and {len(dup) - 5} more" if len(dup) > 5 else ""))
    text = items.column("text")
    empty = pc.or_(pc.is_null(text), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text.fill_null(""))), 0))
    n_empty = pc.sum(empty).as_py() or 0
    if n_empty:
        first = pc.filter(ids, empty)[0].as_py()
        raise CatalogError(f"{where}: {n_empty} item(s) have empty text (first: item_id {first!r})")
    return items
