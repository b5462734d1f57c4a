"""Where posts come from: the simulator's output, a folder of images, or a manifest.

``read_source`` turns any of them into ``Candidate`` posts (an image file plus the
post's fields). A record that cannot become a post (no id, unreadable date, image
missing) comes back as a ``BadRecord`` with its reason instead of stopping the batch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from components.data.posts import ENGAGEMENT, TIMESTAMP
from components.data.pseudonyms import Pseudonyms
from components.errors import SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif"}
MANIFEST_SUFFIXES = {".jsonl", ".json", ".parquet"}


@dataclass(frozen=True)
class Candidate:
    """A post a source offers, before its image is validated."""

    post_id: str
    image_path: Path
    user_id: str | None = None
    created_at: datetime | None = None
    caption: str | None = None
    hashtags: tuple[str, ...] = ()
    engagement: dict[str, int] = field(default_factory=dict)
    label: str | None = None
    label_source: str | None = None


@dataclass(frozen=True)
class BadRecord:
    where: str  # the record's position or file, for the quarantine record
    reason: str  # "bad_record" or "missing_file"
    detail: str


@dataclass(frozen=True)
class Source:
    kind: str  # "simulator", "folder" or "manifest"
    uri: str
    records: list[Candidate | BadRecord]
    skipped: int = 0  # files a folder holds that are not images by name (README.txt, .DS_Store)
    forgotten: int = 0  # posts of users who asked to be forgotten: not read


def fingerprint(path: Path) -> str:
    """What a source holds, cheaply: a hash of its files' names, sizes and modification times.

    Two reads of an unchanged source give the same fingerprint, so a pipeline may reuse
    an earlier ingest of it; a file added, removed or rewritten changes it.
    """
    if not path.exists():
        raise SourceError(f"no such file or folder: {path}")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(
            f"{file.relative_to(path) if file != path else file.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode()
        )
    return digest.hexdigest()[:16]


def read_source(
    path: Path,
    pseudonyms: Pseudonyms,
    *,
    folder_labels: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Source:
    """Read the posts ``path`` offers. ``since`` (inclusive) and ``until`` (exclusive) filter by ``created_at``.

    This is where user ids enter: each becomes its pseudonym here, and a forgotten user's posts are left out
    (counted in ``Source.forgotten``), so no raw id reaches a batch, a snapshot or a pipeline artifact.
    """
    if not path.exists():
        raise SourceError(f"no such file or folder: {path}")
    if path.is_file():
        if path.suffix.lower() not in MANIFEST_SUFFIXES:
            raise SourceError(f"{path}: a manifest must be .jsonl, .json or .parquet")
        frame, forgotten = _users(_read_manifest(path), pseudonyms)
        records = _records(frame, path.parent, path.name, "manifest")
        return Source("manifest", str(path), _window(records, since, until), forgotten=forgotten)
    if (path / "simulation.json").exists():
        posts = path / "posts"
        if not posts.is_dir():
            raise SourceError(f"{path} is a simulation without posts/; run `trendloop simulate` first")
        dataset = ds.dataset(posts, format="parquet", partitioning="hive")
        when = ds.field("created_at")
        scan = None  # the window is pushed into the scan: a daily ingest reads one day, not all
        if since is not None:
            scan = when >= pa.scalar(since, TIMESTAMP)
        if until is not None:
            scan = (when < pa.scalar(until, TIMESTAMP)) if scan is None else scan & (when < pa.scalar(until, TIMESTAMP))
        frame = dataset.to_table(filter=scan).to_pandas()
        frame = frame.drop(columns=["day"], errors="ignore").sort_values(["created_at", "post_id"], kind="stable")
        frame, forgotten = _users(frame, pseudonyms)
        return Source("simulator", str(path), _records(frame, path, "posts", None), forgotten=forgotten)
    return _read_folder(path, folder_labels, since, until)


def _users(frame: pd.DataFrame, pseudonyms: Pseudonyms) -> tuple[pd.DataFrame, int]:
    """``frame`` with each user id replaced by its pseudonym and forgotten users' rows dropped; how many were."""
    if "user_id" not in frame.columns or frame.empty:
        return frame, 0
    raw = [str(u) if _present(u) else None for u in frame["user_id"]]
    keep = [u is None or not pseudonyms.is_forgotten(u) for u in raw]
    frame = frame.assign(user_id=[None if u is None else pseudonyms.of(u) for u in raw])[keep]
    return frame, len(keep) - sum(keep)


def _read_manifest(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        lines = path.read_text().splitlines() if path.suffix.lower() == ".jsonl" else None
        if lines is None:
            data = json.loads(path.read_text())
            rows = data if isinstance(data, list) else data.get("posts", [])
            return pd.DataFrame(rows)
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                row = {"__error__": f"line {n}: not JSON ({err.msg})"}
            rows.append(row if isinstance(row, dict) else {"__error__": f"line {n}: not a JSON object"})
        return pd.DataFrame(rows)
    except (OSError, ValueError) as err:
        raise SourceError(f"{path}: cannot read manifest: {err}") from None


def _records(frame: pd.DataFrame, root: Path, where: str, label_source: str | None) -> list[Candidate | BadRecord]:
    if frame.empty:
        return []
    missing = {"post_id", "image"} - set(frame.columns)
    if missing:
        raise SourceError(f"{where}: manifest lacks column(s) {', '.join(sorted(missing))}")
    return [_record(row, root, f"{where}:{n}", label_source) for n, row in enumerate(frame.to_dict("records"), 1)]


def _record(row: dict[str, Any], root: Path, where: str, label_source: str | None) -> Candidate | BadRecord:
    if _present(row.get("__error__")):
        return BadRecord(where, "bad_record", str(row["__error__"]))
    post_id, image = row.get("post_id"), row.get("image")
    if not _present(post_id) or not str(post_id).strip():
        return BadRecord(where, "bad_record", "no post_id")
    if not _present(image) or not isinstance(image, str):
        return BadRecord(f"{where} ({post_id})", "bad_record", "no image path")
    path = Path(image) if Path(image).is_absolute() else root / image
    if not path.is_file():
        return BadRecord(f"{where} ({post_id})", "missing_file", f"image {image} does not exist")
    try:
        created = _timestamp(row.get("created_at"))
        engagement = {k: int(row[k]) for k in ENGAGEMENT if _present(row.get(k))}
    except (TypeError, ValueError) as err:
        return BadRecord(f"{where} ({post_id})", "bad_record", str(err))
    hashtags = row.get("hashtags")
    label = row.get("label")
    return Candidate(
        post_id=str(post_id),
        image_path=path,
        user_id=str(row["user_id"]) if _present(row.get("user_id")) else None,
        created_at=created,
        caption=str(row["caption"]) if _present(row.get("caption")) else None,
        hashtags=tuple(str(t) for t in hashtags) if isinstance(hashtags, list | tuple | np.ndarray) else (),
        engagement=engagement,
        label=str(label) if _present(label) and str(label).strip() else None,
        label_source=label_source if _present(label) else None,
    )


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and arrays are present
        return True


def _timestamp(value: Any) -> datetime | None:
    """A UTC datetime from whatever the manifest holds; naive times are taken as UTC."""
    if not _present(value):
        return None
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise ValueError(f"created_at {value!r} is not a date and time") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.to_pydatetime()


def _window(
    records: list[Candidate | BadRecord], since: datetime | None, until: datetime | None
) -> list[Candidate | BadRecord]:
    if since is None and until is None:
        return records

    def inside(r: Candidate | BadRecord) -> bool:
        if isinstance(r, BadRecord) or r.created_at is None:
            return True  # judged (and reported) by ingestion, not silently dropped by the window
        return (since is None or r.created_at >= since) and (until is None or r.created_at < until)

    return [r for r in records if inside(r)]


def _read_folder(root: Path, folder_labels: bool, since: datetime | None, until: datetime | None) -> Source:
    """Every image-named file below ``root``; with ``folder_labels``, ``class_name/`` gives the label."""
    records: list[Candidate | BadRecord] = []
    skipped = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_SUFFIXES or any(part.startswith(".") for part in rel.parts):
            skipped += 1
            continue
        label = rel.parts[0] if folder_labels and len(rel.parts) == 2 else None
        records.append(
            Candidate(
                post_id="img-" + hashlib.sha256(rel.as_posix().encode()).hexdigest()[:16],
                image_path=path,
                created_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                label=label,
                label_source="folder" if label else None,
            )
        )
    return Source("folder", str(root), _window(records, since, until), skipped)
