"""Find personal data in files: every file under a folder, opened the way its format hides text.

A raw user id in a Parquet file is inside compressed pages, in a zip (a torch checkpoint)
inside its members, in a gzip stream inside the stream: ``find`` decodes those (Parquet
through pyarrow, every cell as text) and reads every other file's bytes as they are
(SQLite pages, logs, JSON, images). It returns where each needle was found, so a
failing test names the file and the value.
"""

from __future__ import annotations

import contextlib
import gzip
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.data.pseudonyms import Pseudonyms

# needles are whole values (ids): a token is a run of these bytes, so u0012 is not found inside u00123
_TOKEN = re.compile(rb"[A-Za-z0-9_-]+")


def find(root: Path, needles: Iterable[str], skip: Iterable[Path] = ()) -> list[tuple[str, str]]:
    """(file relative to ``root``, needle) for every needle found in a file under ``root`` (not under ``skip``)."""
    words = {n.encode() for n in needles if n}
    if not words:
        return []
    skipped = [s.resolve() for s in skip]
    found: list[tuple[str, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        if any(path.resolve().is_relative_to(s) for s in skipped):
            continue
        hits = {w.decode() for blob in _contents(path) for w in words & set(_TOKEN.findall(blob))}
        found += [(str(path.relative_to(root)), hit) for hit in sorted(hits)]
    return found


def find_in_text(text: str, needles: Iterable[str]) -> list[str]:
    """The needles found in ``text`` (an export, a response), as whole values."""
    return sorted({n for n in needles if n} & {t.decode() for t in _TOKEN.findall(text.encode())})


def _contents(path: Path) -> list[bytes]:
    data = path.read_bytes()
    blobs = [data]
    if data[:4] == b"PAR1" and data[-4:] == b"PAR1":
        blobs.append(_parquet_text(path))
    elif data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            blobs.append(gzip.decompress(data))
    elif data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                blobs += [archive.read(name) for name in archive.namelist()]
        except (zipfile.BadZipFile, OSError):
            pass
    return blobs


def _parquet_text(path: Path) -> bytes:
    """Every value of every column, as text, one per line (the column names too)."""
    table = pq.read_table(path)
    lines = list(table.column_names)
    for column in table.columns:
        lines += [str(v) for v in _flat(column.combine_chunks())]
    return "\n".join(lines).encode()


def _flat(array: pa.Array) -> list:
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        array = array.flatten()
    if pa.types.is_struct(array.type):
        return [v for field in array.flatten() for v in _flat(field)]
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array.to_pylist()


# the tests' pseudonym key: fixed, so a test can compute what the store should hold for a user
PSEUDONYMS = Pseudonyms(b"trendloop tests' pseudonym key.")
