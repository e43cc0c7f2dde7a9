"""MovieLens-100K in either layout users download or RecBole ships.

* GroupLens: ``u.data`` (user, item, rating, ts; tabs), ``u.item`` (``|``-separated, latin-1,
  19 genre flags), ``u.user`` (``|``-separated).
* RecBole atomic: ``ml-100k.inter``, ``ml-100k.item``, ``ml-100k.user`` (tabs, a header of
  ``name:type`` columns).

Item text = "title (year). genres", what the embedding job encodes.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from streamrec.data.catalog import Catalog, CatalogError, validate_items

__all__ = ["load_movielens", "GENRES"]

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _item_text(title: str, year: str, genres: list[str]) -> str:
    title = title.strip()
    head = f"{title} ({year})" if year and f"({year})" not in title else title
    return f"{head}. {', '.join(genres)}" if genres else head


def _read_lines(p: Path, encoding: str = "utf-8") -> list[str]:
    if not p.is_file():
        raise CatalogError(f"{p}: MovieLens file not found")
    return p.read_text(encoding=encoding, errors="replace").splitlines()


def _grouplens(d: Path) -> Catalog:
    items = {"item_id": [], "title": [], "year": [], "genres": [], "text": []}
    for n, line in enumerate(_read_lines(d / "u.item", "latin-1"), 1):
        f = line.split("|")
        if len(f) < 24:
            raise CatalogError(f"{d / 'u.item'}:{n}: expected 24 '|'-separated fields, got {len(f)}")
        title = f[1]
        year = f[2][-4:] if f[2] else ""
        genres = [g for g, flag in zip(GENRES, f[5:24]) if flag == "1"]
        items["item_id"].append(f[0])
        items["title"].append(title)
        items["year"].append(year)
        items["genres"].append(" ".join(genres))
        items["text"].append(_item_text(title, year, genres))
    inter = {"user_id": [], "item_id": [], "rating": [], "ts": []}
    for n, line in enumerate(_read_lines(d / "u.data"), 1):
        f = line.split("\t")
        if len(f) != 4:
            raise CatalogError(f"{d / 'u.data'}:{n}: expected 4 tab-separated fields, got {len(f)}")
        inter["user_id"].append(f[0])
        inter["item_id"].append(f[1])
        inter["rating"].append(float(f[2]))
        inter["ts"].append(float(f[3]))
    users = None
    if (d / "u.user").is_file():
        cols = {"user_id": [], "age": [], "gender": [], "occupation": [], "zip_code": []}
        for line in _read_lines(d / "u.user", "latin-1"):
            f = line.split("|")
            for k, v in zip(cols, f):
                cols[k].append(int(v) if k == "age" else v)
        users = pa.table(cols)
    return Catalog("ml-100k", validate_items(pa.table(items), str(d / "u.item")), users, pa.table(inter))


def _atomic_table(p: Path) -> dict[str, list]:
    lines = _read_lines(p)
    if not lines:
        raise CatalogError(f"{p}: empty file")
    names = [h.split(":")[0] for h in lines[0].split("\t")]
    cols: dict[str, list] = {n: [] for n in names}
    for n, line in enumerate(lines[1:], 2):
        f = line.split("\t")
        if len(f) != len(names):
            raise CatalogError(f"{p}:{n}: expected {len(names)} tab-separated fields, got {len(f)}")
        for k, v in zip(names, f):
            cols[k].append(v)
    return cols


def _need(cols: dict, names: list[str], p: Path) -> None:
    for c in names:
        if c not in cols:
            raise CatalogError(f"{p}: missing column {c!r} (have: {', '.join(cols)})")


def _atomic(d: Path, stem: str) -> Catalog:
    ip = d / f"{stem}.item"
    it = _atomic_table(ip)
    _need(it, ["item_id", "movie_title"], ip)
    years = it.get("release_year", [""] * len(it["item_id"]))
    genres = it.get("class", [""] * len(it["item_id"]))
    items = pa.table({
        "item_id": it["item_id"], "title": it["movie_title"], "year": years, "genres": genres,
        "text": [_item_text(t, y, g.split()) for t, y, g in zip(it["movie_title"], years, genres)],
    })
    xp = d / f"{stem}.inter"
    x = _atomic_table(xp)
    _need(x, ["user_id", "item_id", "rating", "timestamp"], xp)
    inter = pa.table({"user_id": x["user_id"], "item_id": x["item_id"],
                      "rating": [float(v) for v in x["rating"]], "ts": [float(v) for v in x["timestamp"]]})
    users = None
    up = d / f"{stem}.user"
    if up.is_file():
        u = _atomic_table(up)
        _need(u, ["user_id"], up)
        if "age" in u:
            u["age"] = [int(float(a)) for a in u["age"]]
        users = pa.table(u)
    return Catalog(stem, validate_items(items, str(ip)), users, inter)


def load_movielens(path: str | Path) -> Catalog:
    """Read MovieLens-100K from a directory in the GroupLens or the RecBole atomic layout."""
    d = Path(path)
    if not d.is_dir():
        raise CatalogError(f"{d}: MovieLens directory not found")
    if (d / "u.item").is_file() or (d / "u.data").is_file():
        return _grouplens(d)
    atomic = sorted(d.glob("*.inter"))
    if atomic:
        return _atomic(d, atomic[0].stem)
    raise CatalogError(f"{d}: neither the GroupLens layout (u.data, u.item) nor the RecBole layout (*.inter, *.item)")
