"""Files written whole: readers never see half a file, whatever stops the writer."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write through a unique temporary name and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_atomic(path, buf.getvalue().to_pybytes())


def write_rows(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    write_table(pa.Table.from_pylist(rows, schema=schema), path)


def create_secret(path: Path, data: bytes) -> None:
    """Make ``path`` holding ``data``, mode 0600 from the start, in a folder of mode 0700, unless it exists.

    Written through a temporary name and linked into place: a reader never sees an empty or half-written
    secret, and when two processes race, the first one's file stands (the other's is dropped).
    """
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
