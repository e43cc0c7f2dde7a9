"""``catalog:`` settings -> a Catalog."""

from __future__ import annotations

from streamrec.data.catalog import Catalog
from streamrec.data.movielens import load_movielens
from streamrec.data.synthetic import SyntheticWorld
from streamrec.data.table import load_table_catalog

__all__ = ["load_catalog"]


def load_catalog(settings) -> Catalog:
    """Build the catalog the ``catalog`` section of the settings names."""
    if settings.source == "synthetic":
        return SyntheticWorld(settings.num_items, settings.num_users, settings.seed).catalog()
    if settings.source == "movielens":
        return load_movielens(settings.path)
    return load_table_catalog(settings.path, id_column=settings.id_column, text_columns=settings.text_columns)
