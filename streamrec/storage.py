"""Where artifacts live: a directory named by a local path or a URI, behind one small API.

Every persisted artifact (embedding runs, policy versions, trainer checkpoints, profile
snapshots) is written through :class:`Location`, so it may sit in

- a local directory (``.streamrec/policies``, ``/mnt/shared/policies``, ``file:///mnt/...``):
  the right choice for one machine, or for a cluster whose nodes mount one shared volume;
- object storage (``s3://bucket/prefix``): what a multi-node cluster uses when its nodes share
  no disk. The endpoint and credentials come from the environment, as every AWS client reads
  them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_DEFAULT_REGION``), so MinIO, Ceph or any S3-protocol server works like S3. Any other
  scheme pyarrow knows (``gs://``, ``hdfs://``) goes the same way.

Atomicity is per object: :meth:`Location.write_bytes` makes a file appear whole or not at all
(a temporary name and a rename on a local disk; one PUT on object storage, where an object is
never visible half written). Multi-file artifacts build on that: they write their parts first
and the small file that points at them last (the embedding manifest, a policy version's
``manifest.json``, the store's ``LATEST``), so a reader never sees a half-written run or version.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

__all__ = ["Location", "LineLog", "absolute", "is_uri"]


def is_uri(where: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``file://`` included); False for a plain path."""
    return "://" in str(where)


def absolute(where: str | os.PathLike) -> str:
    """A URI as given; a plain path made absolute (so it means the same on every process of this host)."""
    s = str(where)
    return s if is_uri(s) else str(Path(s).expanduser().resolve())


class Location:
    """A directory on a local disk or in object storage.

    Names passed to the methods are relative, ``/``-separated (``"v000012/manifest.json"``).
    Reads of a missing file raise :class:`FileNotFoundError`.
    """

    def __init__(self, where: str | os.PathLike):
        self.uri = absolute(where)
        if is_uri(self.uri):
            self.fs, root = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, root = pafs.LocalFileSystem(), self.uri
        self.root = root.rstrip("/") or "/"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __reduce__(self):  # pickles by URI (filesystems are rebuilt on the receiving process)
        return (Location, (self.uri,))

    # -- names ---------------------------------------------------------------------------------
    def path(self, name: str = "") -> str:
        """The filesystem path of ``name`` (what ``self.fs`` and Ray Data's ``filesystem=`` take)."""
        return posixpath.join(self.root, name) if name else self.root

    def uri_of(self, name: str = "") -> str:
        return f"{self.uri.rstrip('/')}/{name}" if name else self.uri

    def child(self, name: str) -> "Location":
        return Location(self.uri_of(name))

    # -- reading -------------------------------------------------------------------------------
    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(name)) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri_of(name)}: no such file") from None
        except OSError as e:  # object stores say "not found" as a generic OSError
            if self.fs.get_file_info(self.path(name)).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"{self.uri_of(name)}: no such file") from None
            raise OSError(f"{self.uri_of(name)}: {e}") from e

    def read_json(self, name: str, default: Any = FileNotFoundError) -> Any:
        """The parsed JSON file; ``default`` when it is missing (raises when no default is given)."""
        try:
            return json.loads(self.read_bytes(name))
        except FileNotFoundError:
            if default is FileNotFoundError:
                raise
            return default

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def listdir(self, name: str = "") -> list[str]:
        """Names of the entries directly under ``name`` (files and directories); [] when it is missing."""
        sel = pafs.FileSelector(self.path(name), recursive=False, allow_not_found=True)
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in self.fs.get_file_info(sel))

    def files(self, name: str = "", suffix: str = "") -> list[str]:
        """Paths (for ``self.fs``) of the files below ``name`` ending in ``suffix``, recursively."""
        sel = pafs.FileSelector(self.path(name), recursive=True, allow_not_found=True)
        return sorted(i.path for i in self.fs.get_file_info(sel)
                      if i.type == pafs.FileType.File and i.path.endswith(suffix)
                      and not posixpath.basename(i.path).startswith("."))

    # -- writing -------------------------------------------------------------------------------
    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` whole: readers see the old content or the new, never a part."""
        target = self.path(name)
        parent = posixpath.dirname(target)
        if self.local:
            os.makedirs(parent, exist_ok=True)
            tmp = posixpath.join(parent, f".{posixpath.basename(target)}.{uuid.uuid4().hex[:8]}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
            return
        with self.fs.open_output_stream(target) as f:  # one object PUT: visible only when complete
            f.write(data)

    def write_json(self, name: str, data: Any, indent: int | None = 1) -> None:
        self.write_bytes(name, json.dumps(data, indent=indent).encode())

    def append_line(self, name: str, line: str) -> None:
        """Append one line to a log file (a single writer owns it; object storage rewrites the object)."""
        if self.local:
            os.makedirs(posixpath.dirname(self.path(name)), exist_ok=True)
            with open(self.path(name), "a") as f:
                f.write(line.rstrip("\n") + "\n")
            return
        try:
            old = self.read_bytes(name)
        except FileNotFoundError:
            old = b""
        self.write_bytes(name, old + line.rstrip("\n").encode() + b"\n")

    def remove(self, name: str) -> None:
        """Delete a file or a directory tree; nothing when it is missing."""
        info = self.fs.get_file_info(self.path(name))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(name))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(name))


class LineLog:
    """An append-only log of text lines kept as numbered segments (``<folder>/000000000.jsonl``,
    ``segment_lines`` lines each), so that an append rewrites at most one small segment (object
    storage has no append: :meth:`Location.append_line` rewrites the object) and reading the
    newest lines reads only the segments that hold them. A single writer owns it; any process
    may read it.
    """

    def __init__(self, loc: Location, folder: str, segment_lines: int = 1000):
        if segment_lines < 1:
            raise ValueError(f"segment_lines must be >= 1, got {segment_lines}")
        self.loc, self.folder, self.segment_lines = loc, folder.strip("/"), segment_lines
        self._tail: tuple[int, int] | None = None  # the writer's (newest segment, its lines)

    def segments(self) -> list[int]:
        """The segments' numbers, oldest first."""
        return sorted(int(n[:-6]) for n in self.loc.listdir(self.folder) if n.endswith(".jsonl") and n[:-6].isdigit())

    def _name(self, segment: int) -> str:
        return f"{self.folder}/{segment:09d}.jsonl"

    def _lines(self, segment: int) -> list[str]:
        try:
            return [x for x in self.loc.read_bytes(self._name(segment)).decode().splitlines() if x.strip()]
        except FileNotFoundError:
            return []

    def append(self, line: str) -> None:
        if "\n" in line.rstrip("\n"):
            raise ValueError("a log line must not contain a newline")
        if self._tail is None:
            segs = self.segments()
            self._tail = (segs[-1], len(self._lines(segs[-1]))) if segs else (0, 0)
        segment, count = self._tail
        if count >= self.segment_lines:
            segment, count = segment + 1, 0
        self.loc.append_line(self._name(segment), line)
        self._tail = (segment, count + 1)

    def tail(self, limit: int) -> list[str]:
        """The newest ``limit`` lines, oldest first."""
        out: list[str] = []
        for segment in reversed(self.segments()):
            if len(out) >= limit:
                break
            out = self._lines(segment) + out
        return out[-limit:] if limit > 0 else []
