"""``forget``: remove users from everything the loop stored, on request (GDPR art. 17, CCPA 1798.105).

A user is named by their raw id; what is found is theirs by pseudonym (every record the
loop keeps holds only that) and by post: the posts any snapshot, quarantine record or
served request says they posted. Then, in this order:

1. The registry is read (which versions were trained on their posts) and Label Studio's
   tasks of those posts are deleted (through its API). If either cannot be reached,
   nothing else is touched: the command fails and can simply run again.
2. Every file under the places given is scrubbed of their rows: Parquet files with a
   ``user_id``, ``post_id`` or ``post`` column (snapshot manifests, the prediction and
   feedback logs, Feast's sources, pipeline artifacts, quarantine tables), JSON files
   (drift checks and evaluations: rows naming a post, and columns of per-post values),
   text logs (their ids redacted), the label queue's rows; Feast's online rows of the
   users and posts; image files no remaining post uses, and quarantined copies.
3. HEAD is committed again without them (a new snapshot, the old one its parent). Older
   snapshots keep their id, counts and lineage in ``snapshot.json`` (plus the redaction),
   lose the rows and files.
4. One line is appended to the audit (``audit.jsonl``): when, how many users, what was
   removed where, the snapshots, the model versions trained on their posts (to retrain),
   and each user's receipt (``Pseudonyms.receipt``), not their id or pseudonym. Ingest
   leaves out posts of users with a receipt there.

Each step is safe to repeat: running ``forget`` again finishes what a crash left.
SQLite files are written with ``secure_delete`` (freed pages are zeroed, so deleted rows
cannot be read back from the file).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data.pseudonyms import Pseudonyms
from components.data.snapshot import Store
from components.errors import TrendloopError
from components.files import write_atomic, write_table

if TYPE_CHECKING:
    from components.features.store import Features
    from components.model.registry import VersionInfo

AUDIT = "audit.jsonl"
KEYS = ("user_id", "post_id", "post")  # columns that name a user or a post, in Parquet files and JSON rows
REDACTED = "[forgotten]"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")


class Tasks(Protocol):
    """Where annotators see posts (active_learning.labelstudio.LabelingProject)."""

    def tasks_for(self, post_ids: Sequence[str]) -> dict[str, int]: ...

    def delete_tasks(self, task_ids: Sequence[int]) -> int: ...


class PrivacyError(TrendloopError):
    """A deletion that cannot go ahead (a service it must reach is down): nothing was deleted."""


@dataclass(frozen=True)
class Places:
    """Where one installation keeps data: what ``forget`` looks through."""

    store: Store  # snapshots, images, quarantine
    folders: Sequence[Path]  # every file under these is scrubbed: logs, feature sources, artifacts, checks
    label_queue: Path | None = None  # the labelling queue's SQLite file
    features: Callable[[], Features] | None = None  # Feast, for its online store (offline files are in folders)
    label_studio: Tasks | None = None
    versions: Callable[[], list[VersionInfo]] | None = None  # the registry's model versions
    audit: Path | None = None  # the folder of the audit log


@dataclass
class Forgotten:
    """What one ``forget`` did."""

    audit_id: str
    users: int
    posts: int  # posts found to be theirs
    removed: dict[str, int] = field(default_factory=dict)  # where -> rows, files or tasks removed
    snapshot_before: str | None = None
    snapshot_after: str | None = None
    retrain: list[int] = field(default_factory=list)  # model versions trained on a snapshot that held their posts


def forget(users: Sequence[str], pseudonyms: Pseudonyms, places: Places) -> Forgotten:
    """Remove ``users`` (raw ids) from ``places``; returns what was removed, as the audit records it."""
    raw = sorted({u.strip() for u in users if u.strip()})
    if not raw:
        raise PrivacyError("name at least one user id to forget")
    people = {pseudonyms.of(u) for u in raw}
    store = places.store
    head = store.head()
    snapshots = store.list()
    posts, holding = _posts_of(people, snapshots, places)
    removed: Counter[str] = Counter()
    now = datetime.now(UTC)
    audit_id = f"{now:%Y%m%dT%H%M%S%fZ}"

    # the services first (the registry read, then Label Studio): when one is down, nothing has been touched
    retrain = sorted(v.version for v in places.versions() if v.snapshot in holding) if places.versions else []
    if places.label_studio is not None and posts:
        tasks = places.label_studio.tasks_for(sorted(posts))
        removed["label studio tasks"] = places.label_studio.delete_tasks(sorted(tasks.values()))

    if places.features is not None:
        removed["online feature rows"] = places.features().forget(sorted(people), sorted(posts))
    if places.label_queue is not None and places.label_queue.exists():
        removed["label queue rows"] = _scrub_sqlite(places.label_queue, people, posts)
    removed["quarantined files"] = _scrub_quarantine(store, people, posts)
    images = _images_of(snapshots, posts)
    skip = [store.snapshots, store.root / "quarantine"]
    for folder in places.folders:
        for where, n in _scrub_tree(folder, people, posts, set(raw), skip).items():
            removed[where] += n
    # snapshots last: their manifests are where a repeated run finds the posts again
    redaction = {"at": now.isoformat(), "audit": audit_id}
    for snap in snapshots:
        n = _scrub_manifest(snap.path, people, posts, redaction)
        removed["snapshot rows"] += n
    head_after = None
    if head is not None:  # HEAD's manifest was scrubbed above: its rows are what the new snapshot holds
        rows = pq.read_table(head.path / "manifest.parquet")
        if len(rows) < head.posts:
            sources = [{"kind": "forget", "audit": audit_id, "removed": head.posts - len(rows)}]
            head_after = store.commit(rows, head.id, sources)[0].id
        else:
            head_after = head.id
    removed["image files"] = _remove_unused(store, images)
    result = Forgotten(
        audit_id=audit_id,
        users=len(raw),
        posts=len(posts),
        removed={k: v for k, v in sorted(removed.items()) if v},
        snapshot_before=head.id if head else None,
        snapshot_after=head_after,
        retrain=retrain,
    )
    if places.audit is not None:
        _append_audit(places.audit, result, [pseudonyms.receipt(u) for u in raw], now)
    return result


def forgotten(audit_folder: Path) -> frozenset[str]:
    """The receipts of every user the audit says was forgotten."""
    path = audit_folder / AUDIT
    if not path.exists():
        return frozenset()
    receipts: set[str] = set()
    for line in path.read_text().splitlines():
        if line.strip():
            receipts.update(json.loads(line).get("receipts", []))
    return frozenset(receipts)


def audit_records(audit_folder: Path) -> list[dict]:
    path = audit_folder / AUDIT
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# -- finding what is theirs ------------------------------------------------------------------------------


def _posts_of(people: set[str], snapshots: list, places: Places) -> tuple[set[str], set[str]]:
    """(their post ids, the snapshots holding any of them): from manifests, quarantine and served requests."""
    posts: set[str] = set()
    holding: set[str] = set()
    for snap in snapshots:
        table = pq.read_table(snap.path / "manifest.parquet", columns=["post_id", "user_id"])
        mine = table.filter(pc.is_in(table["user_id"], pa.array(sorted(people), pa.string())))
        if len(mine):
            posts.update(mine["post_id"].to_pylist())
            holding.add(snap.id)
    for path in (places.store.root / "quarantine").glob("*/rejections.parquet"):
        table = pq.read_table(path)
        if "user_id" in table.column_names:
            mine = table.filter(pc.is_in(table["user_id"], pa.array(sorted(people), pa.string())))
            posts.update(p for p in mine["post"].to_pylist() if p)
    for folder in places.folders:
        for path in folder.rglob("*.parquet"):
            names = pq.read_schema(path).names
            if "user_id" in names and "post_id" in names:
                table = pq.read_table(path, columns=["user_id", "post_id"])
                mine = table.filter(pc.is_in(table["user_id"], pa.array(sorted(people), pa.string())))
                posts.update(p for p in mine["post_id"].to_pylist() if p)
    # a snapshot holding one of their posts under another user's row (a repost) is not theirs: only rows say
    for snap in snapshots:
        if snap.id not in holding:
            ids = pq.read_table(snap.path / "manifest.parquet", columns=["post_id"])["post_id"]
            if posts and pc.any(pc.is_in(ids, pa.array(sorted(posts), pa.string()))).as_py():
                holding.add(snap.id)
    return posts, holding


def _images_of(snapshots: list, posts: set[str]) -> set[str]:
    """The image paths (relative to the store) of ``posts``."""
    images: set[str] = set()
    for snap in snapshots:
        table = pq.read_table(snap.path / "manifest.parquet", columns=["post_id", "image"])
        mine = table.filter(pc.is_in(table["post_id"], pa.array(sorted(posts), pa.string())))
        images.update(mine["image"].to_pylist())
    return images


def _keep(table: pa.Table, people: set[str], posts: set[str]) -> pa.Array:
    """True for the rows of ``table`` that name neither one of ``people`` nor one of ``posts``."""
    keep = pa.array([True] * len(table), pa.bool_())
    for key, values in (("user_id", people), ("post_id", posts), ("post", posts)):
        if key in table.column_names and pa.types.is_string(table.schema.field(key).type):
            hit = pc.fill_null(pc.is_in(table[key], pa.array(sorted(values), pa.string())), False)
            keep = pc.and_(keep, pc.invert(hit))
    return keep


# -- scrubbing files -------------------------------------------------------------------------------------


def _scrub_tree(folder: Path, people: set[str], posts: set[str], raw: set[str], skip: list[Path]) -> Counter[str]:
    removed: Counter[str] = Counter()
    if not folder.exists():
        return removed
    skipped = [s.resolve() for s in skip]
    tokens = people | posts | raw
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        if any(path.resolve().is_relative_to(s) for s in skipped) or path.name.startswith("."):
            continue
        kind = _kind(path)
        if kind == "parquet":
            removed["parquet rows"] += _scrub_parquet(path, people, posts)
        elif kind == "json":
            removed["json rows"] += _scrub_json_file(path, people, posts)
        elif kind == "text":
            removed["log lines redacted"] += _redact_text(path, tokens)
        elif kind == "sqlite":
            removed["sqlite rows"] += _scrub_sqlite(path, people, posts)
    return removed


def _kind(path: Path) -> str | None:
    with path.open("rb") as f:
        head = f.read(16)
    if head[:4] == b"PAR1":
        return "parquet"
    if head.startswith(b"SQLite format 3"):
        return "sqlite"
    if path.suffix == ".json":
        return "json"
    if path.suffix in (".log", ".txt", ".jsonl", ".out", ".err"):
        return "text"
    return None


def _scrub_parquet(path: Path, people: set[str], posts: set[str]) -> int:
    schema = pq.read_schema(path)
    if not set(KEYS) & set(schema.names):
        return 0
    table = pq.read_table(path)
    keep = _keep(table, people, posts)
    dropped = len(table) - pc.sum(keep).as_py() if len(table) else 0
    if dropped:
        _rewrite(path, lambda: write_table(table.filter(keep).replace_schema_metadata(schema.metadata), path))
    return dropped


def _scrub_json_file(path: Path, people: set[str], posts: set[str]) -> int:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return 0
    data, dropped = _scrub_json(data, people | posts)
    if dropped:
        _rewrite(path, lambda: write_atomic(path, json.dumps(data, indent=2)))
    return dropped


def _scrub_json(value: Any, ids: set[str]) -> tuple[Any, int]:
    """``value`` without the rows naming one of ``ids``: a dict with such a ``post_id``/``user_id`` leaves its
    list; a dict of columns (a ``post_id`` list and lists as long) loses those positions in every column."""
    if isinstance(value, list):
        kept, dropped = [], 0
        for item in value:
            if isinstance(item, dict) and any(item.get(k) in ids for k in KEYS if isinstance(item.get(k), str)):
                dropped += 1
                continue
            scrubbed, n = _scrub_json(item, ids)
            kept.append(scrubbed)
            dropped += n
        return kept, dropped
    if isinstance(value, dict):
        for key in KEYS:
            column = value.get(key)
            if isinstance(column, list) and column and all(isinstance(v, str | None) for v in column):
                gone = {i for i, v in enumerate(column) if v in ids}
                if gone:
                    return _drop_positions(value, len(column), gone), len(gone)
        out, dropped = {}, 0
        for k, v in value.items():
            if k in ids:  # keyed by a post id
                dropped += 1
                continue
            out[k], n = _scrub_json(v, ids)
            dropped += n
        return out, dropped
    return value, 0


def _drop_positions(columns: dict, length: int, gone: set[int]) -> dict:
    out = {}
    for k, v in columns.items():
        if isinstance(v, list) and len(v) == length:
            out[k] = [x for i, x in enumerate(v) if i not in gone]
        elif isinstance(v, dict):
            out[k] = _drop_positions(v, length, gone)
        else:
            out[k] = v
    return out


def _redact_text(path: Path, tokens: set[str]) -> int:
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return 0
    count = 0

    def redact(match: re.Match) -> str:
        nonlocal count
        if match.group(0) in tokens:
            count += 1
            return REDACTED
        return match.group(0)

    new = _TOKEN.sub(redact, text)
    if count:
        _rewrite(path, lambda: write_atomic(path, new))
    return count


def _scrub_sqlite(path: Path, people: set[str], posts: set[str]) -> int:
    """Delete the rows naming them from every table with a key column; freed pages are zeroed."""
    removed = 0
    db = sqlite3.connect(path, timeout=30)
    try:
        db.execute("PRAGMA secure_delete = ON")
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        with db:
            for table in tables:
                columns = {r[1] for r in db.execute(f'PRAGMA table_info("{table}")')}
                for key, values in (("user_id", people), ("post_id", posts)):
                    if key in columns and values:
                        marks = ",".join("?" * len(values))
                        cur = db.execute(f'DELETE FROM "{table}" WHERE "{key}" IN ({marks})', sorted(values))
                        removed += cur.rowcount
    finally:
        db.close()
    return removed


def _scrub_quarantine(store: Store, people: set[str], posts: set[str]) -> int:
    """Quarantine rows of their posts, and the copies of their rejected files."""
    files = 0
    for path in (store.root / "quarantine").glob("*/rejections.parquet"):
        table = pq.read_table(path)
        keep = _keep(table, people, posts)
        if pc.all(keep).as_py():
            continue
        for name in table.filter(pc.invert(keep))["quarantined_as"].to_pylist():
            if name and (path.parent / name).exists():
                (path.parent / name).unlink()
                files += 1
        write_table(table.filter(keep), path)
    return files


def _scrub_manifest(folder: Path, people: set[str], posts: set[str], redaction: dict) -> int:
    """A snapshot without their rows: its id, counts and parents stay, with the redaction noted beside them."""
    manifest, meta_path = folder / "manifest.parquet", folder / "snapshot.json"
    table = pq.read_table(manifest)
    keep = _keep(table, people, posts)
    dropped = len(table) - pc.sum(keep).as_py() if len(table) else 0
    if not dropped:
        return 0
    meta = json.loads(meta_path.read_text())
    meta.setdefault("redactions", []).append({**redaction, "posts_removed": dropped})
    _rewrite(manifest, lambda: write_table(table.filter(keep).replace_schema_metadata(table.schema.metadata), manifest))
    _rewrite(meta_path, lambda: write_atomic(meta_path, json.dumps(meta, indent=2)))
    return dropped


def _remove_unused(store: Store, images: set[str]) -> int:
    """Delete the image files among ``images`` that no snapshot's remaining posts use."""
    used: set[str] = set()
    for snap in store.list():
        used.update(pq.read_table(snap.path / "manifest.parquet", columns=["image"])["image"].to_pylist())
    gone = 0
    for ref in sorted(images - used):
        path = store.root / ref
        if path.exists():
            path.unlink()
            gone += 1
    return gone


def _rewrite(path: Path, write: Callable[[], None]) -> None:
    """Write ``path`` anew (atomically) even when it and its folder are read-only; their modes are kept."""
    folder = path.parent
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (path, folder)}
    folder.chmod(modes[folder] | stat.S_IWUSR)
    try:
        write()
        path.chmod(modes[path])
    finally:
        folder.chmod(modes[folder])


def _append_audit(folder: Path, result: Forgotten, receipts: list[str], at: datetime) -> None:
    """One JSON line, appended (O_APPEND: an earlier line is never rewritten)."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"id": result.audit_id, "at": at.isoformat(), **asdict(result), "receipts": sorted(receipts)}
    record.pop("audit_id")
    fd = os.open(folder / AUDIT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")
        out.flush()
        os.fsync(out.fileno())


def counts_line(result: Forgotten) -> str:
    return ", ".join(f"{n:,} {where}" for where, n in result.removed.items()) or "nothing was stored"


__all__ = ["Forgotten", "Places", "PrivacyError", "audit_records", "counts_line", "forget", "forgotten"]
