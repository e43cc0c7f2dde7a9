"""Datasets: item catalogs, users and interactions, as Arrow tables with a fixed core schema.

* items: ``item_id`` (string), ``text`` (what gets embedded), plus whatever else the source has
* users: ``user_id`` (string), ``text`` when the source has user-side text, demographics
* interactions: ``user_id``, ``item_id`` (strings), ``rating`` (float), ``ts`` (unix seconds)

Sources: MovieLens-100K in the GroupLens (``u.data``...) or RecBole atomic (``ml-100k.inter``...)
layout, any CSV/Parquet table, and the seeded synthetic catalog and population (the default).
"""

from streamrec.data.catalog import Catalog, CatalogError, content_hash, validate_items
from streamrec.data.movielens import load_movielens
from streamrec.data.synthetic import SyntheticWorld, synthetic_items
from streamrec.data.table import load_table_catalog
from streamrec.data.load import load_catalog

__all__ = [
    "Catalog",
    "CatalogError",
    "content_hash",
    "validate_items",
    "load_movielens",
    "load_table_catalog",
    "SyntheticWorld",
    "synthetic_items",
    "load_catalog",
]
