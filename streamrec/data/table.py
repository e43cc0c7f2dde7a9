"""Generic CSV/Parquet catalogs: an id column and text columns, named in config."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from streamrec.data.catalog import Catalog, CatalogError, validate_items

__all__ = ["load_table_catalog", "read_table", "join_text"]


def read_table(path: str | Path) -> pa.Table:
    p = Path(path)
    if not p.exists():
        raise CatalogError(f"{p}: catalog file not found")
    suffix = p.suffix.lower()
    try:
        if suffix in (".parquet", ".pq") or p.is_dir():
            import pyarrow.parquet as pq

            return pq.read_table(p)
        if suffix in (".csv", ".tsv", ".txt"):
            import pyarrow.csv as pcsv

            delim = "\t" if suffix == ".tsv" else ","
            return pcsv.read_csv(p, parse_options=pcsv.ParseOptions(delimiter=delim))
    except pa.ArrowInvalid as e:
        raise CatalogError(f"{p}: cannot be read: {e}") from None
    raise CatalogError(f"{p}: unsupported catalog format {suffix!r} (use .csv, .tsv or .parquet)")


def join_text(table: pa.Table, text_columns: Sequence[str], where: str) -> pa.Array:
    """Join text columns with '. ' (nulls skipped) into one string per row."""
    missing = [c for c in text_columns if c not in table.column_names]
    if missing:
        raise CatalogError(f"{where}: missing column {missing[0]!r} (have: {', '.join(table.column_names)})")
    parts = []
    for c in text_columns:
        col = pc.cast(table.column(c), pa.string())
        parts.append(pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), pa.scalar(None, pa.string()), col))
    if len(parts) == 1:
        return parts[0].combine_chunks()
    return pc.binary_join_element_wise(*parts, ". ", null_handling="skip").combine_chunks()


def load_table_catalog(path: str | Path, *, id_column: str = "item_id", text_columns: Sequence[str] = ("title",)) -> Catalog:
    t = read_table(path)
    where = str(path)
    if id_column not in t.column_names:
        raise CatalogError(f"{where}: missing column {id_column!r} (have: {', '.join(t.column_names)})")
    text = join_text(t, text_columns, where)
    ids = pc.cast(t.column(id_column), pa.string())
    rest = {c: t.column(c) for c in t.column_names if c not in (id_column, "item_id", "text")}
    items = pa.table({"item_id": ids, "text": text, **rest})
    return Catalog(name=Path(path).stem, items=validate_items(items, where))
