"""Snapshots: immutable, content-addressed sets of posts over a content-addressed image store.

Layout under the store root::

    images/ab/<sha256>.png          normalised images, named by the hash of their pixels
    snapshots/<id>/manifest.parquet the posts (SNAPSHOT_SCHEMA), sorted by post_id
    snapshots/<id>/snapshot.json    id, parent, sources, counts, when it was made
    snapshots/HEAD                  the id of the newest snapshot

A snapshot's id is the hash of its manifest's content (every column, rows in
post_id order), so the same posts with the same labels give the same id wherever
they are made. A snapshot is written into a temporary folder and renamed into
place in one step, its files are read-only, and an existing id is never written
again: a reader sees a whole snapshot or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from components.data.posts import SNAPSHOT_SCHEMA
from components.data.validate import pixel_hash
from components.errors import SnapshotError
from components.files import write_atomic, write_table

ID_LENGTH = 16  # hex digits of the content hash kept as the id


@dataclass(frozen=True)
class Snapshot:
    id: str
    parent: str | None
    created_at: datetime
    sources: list[dict]  # how its new posts and labels arrived (batch, run, uri, kind)
    posts: int
    labels: dict[str, int]  # label -> posts carrying it
    path: Path

    @property
    def labelled(self) -> int:
        return sum(self.labels.values())

    def manifest(self) -> pa.Table:
        return pq.read_table(self.path / "manifest.parquet", schema=SNAPSHOT_SCHEMA)


@dataclass(frozen=True)
class SnapshotDiff:
    old: str
    new: str
    added: list[str]  # post ids only in new
    removed: list[str]  # post ids only in old
    relabelled: list[tuple[str, str | None, str | None]]  # (post id, old label, new label)
    label_counts: dict[str, tuple[int, int]]  # label -> (count in old, count in new)


class Store:
    """The content-addressed image store and the snapshots over it, rooted at one folder."""

    def __init__(self, root: Path):
        self.root = root
        self.images = root / "images"
        self.snapshots = root / "snapshots"

    def image_path(self, sha256: str) -> Path:
        return self.root / self.image_ref(sha256)

    def image_ref(self, sha256: str) -> str:
        """The image's path relative to the store root, as manifests record it."""
        return f"images/{sha256[:2]}/{sha256}.png"

    def put_image(self, sha256: str, data: bytes) -> bool:
        """Store normalised image bytes under their hash; False if they were there already."""
        path = self.image_path(sha256)
        if path.exists():
            return False
        write_atomic(path, data)  # concurrent writers of one hash write the same bytes
        return True

    # -- snapshots -------------------------------------------------------------------------

    def head(self) -> Snapshot | None:
        ref = self.snapshots / "HEAD"
        return self.load(ref.read_text().strip()) if ref.exists() else None

    def set_head(self, snapshot_id: str) -> None:
        write_atomic(self.snapshots / "HEAD", snapshot_id + "\n")

    def load(self, snapshot_id: str) -> Snapshot:
        meta_path = self.snapshots / snapshot_id / "snapshot.json"
        if not meta_path.exists():
            raise SnapshotError(f"no snapshot {snapshot_id}")
        meta = json.loads(meta_path.read_text())
        return Snapshot(
            id=meta["id"],
            parent=meta["parent"],
            created_at=datetime.fromisoformat(meta["created_at"]),
            sources=meta["sources"],
            posts=meta["posts"],
            labels=meta["labels"],
            path=meta_path.parent,
        )

    def list(self) -> list[Snapshot]:
        """Every snapshot, oldest first."""
        if not self.snapshots.exists():
            return []
        found = [self.load(p.name) for p in self.snapshots.iterdir() if (p / "snapshot.json").exists()]
        return sorted(found, key=lambda s: (s.created_at, s.id))

    def resolve(self, ref: str) -> Snapshot:
        """A snapshot by ``HEAD``, ``HEAD~N`` (N parents back), its id or a unique id prefix."""
        base, tilde, back = ref.partition("~")
        if base == "HEAD":
            snap = self.head()
            if snap is None:
                raise SnapshotError("there are no snapshots yet; ingest something first")
            if tilde and not (back or "1").isdigit():
                raise SnapshotError(f"{ref!r}: write HEAD~N with a whole number N")
            for _ in range(int(back or 1) if tilde else 0):
                if snap.parent is None:
                    raise SnapshotError(f"{ref} goes back past the first snapshot")
                snap = self.load(snap.parent)
            return snap
        matches = (
            [p.name for p in self.snapshots.glob(f"{ref}*") if (p / "snapshot.json").exists()]
            if ref and self.snapshots.exists()
            else []
        )
        if not matches:
            raise SnapshotError(f"no snapshot matches {ref!r}")
        if len(matches) > 1:
            raise SnapshotError(f"{ref!r} is ambiguous: {', '.join(sorted(matches))}")
        return self.load(matches[0])

    def commit(self, posts: pa.Table, parent: str | None, sources: list[dict]) -> tuple[Snapshot, bool]:
        """Make the snapshot holding exactly ``posts`` and point HEAD at it.

        Returns the snapshot and whether it is new; content that exists already
        gives back the existing snapshot untouched.
        """
        table = posts.select(SNAPSHOT_SCHEMA.names).cast(SNAPSHOT_SCHEMA)
        table = table.sort_by("post_id")
        ids = table.column("post_id")
        if len(pc.unique(ids)) != len(ids):
            raise SnapshotError("a snapshot cannot hold one post_id twice")
        snapshot_id = content_id(table)
        final = self.snapshots / snapshot_id
        if (final / "snapshot.json").exists():
            self.set_head(snapshot_id)
            return self.load(snapshot_id), False
        labels = Counter(label for label in table.column("label").to_pylist() if label is not None)
        meta = {
            "id": snapshot_id,
            "parent": parent,
            "created_at": datetime.now(UTC).isoformat(),
            "sources": sources,
            "posts": table.num_rows,
            "labels": dict(sorted(labels.items())),
        }
        tmp = self.snapshots / f".tmp-{snapshot_id}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write_table(table, tmp / "manifest.parquet")
            (tmp / "snapshot.json").write_text(json.dumps(meta, indent=2))
            for f in tmp.iterdir():
                f.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.set_head(snapshot_id)
        return self.load(snapshot_id), True

    def verify(self, snapshot: Snapshot, images: bool = True) -> list[str]:
        """What no longer matches: the manifest's content hash, and each image's presence and hash."""
        problems = []
        table = snapshot.manifest()
        if content_id(table) != snapshot.id:
            problems.append(f"manifest content hashes to {content_id(table)}, not {snapshot.id}")
        if images:
            for sha, ref in zip(
                table.column("image_sha256").to_pylist(), table.column("image").to_pylist(), strict=True
            ):
                path = self.root / ref
                if not path.exists():
                    problems.append(f"missing image {ref}")
                    continue
                with Image.open(path) as im:
                    if pixel_hash(im.convert("RGB")) != sha:
                        problems.append(f"image {ref} does not match its hash")
        return problems

    def diff(self, old: Snapshot, new: Snapshot) -> SnapshotDiff:
        a = {r["post_id"]: r["label"] for r in old.manifest().select(["post_id", "label"]).to_pylist()}
        b = {r["post_id"]: r["label"] for r in new.manifest().select(["post_id", "label"]).to_pylist()}
        ca, cb = Counter(v for v in a.values() if v), Counter(v for v in b.values() if v)
        return SnapshotDiff(
            old=old.id,
            new=new.id,
            added=sorted(b.keys() - a.keys()),
            removed=sorted(a.keys() - b.keys()),
            relabelled=sorted((p, a[p], b[p]) for p in a.keys() & b.keys() if a[p] != b[p]),
            label_counts={k: (ca.get(k, 0), cb.get(k, 0)) for k in sorted(ca.keys() | cb.keys())},
        )


def content_id(table: pa.Table) -> str:
    """The hash of a manifest's content: every column, rows in post_id order.

    Each row is hashed as canonical JSON so the id does not depend on Parquet's
    encoding or the pyarrow version.
    """
    table = table.select(SNAPSHOT_SCHEMA.names).cast(SNAPSHOT_SCHEMA).sort_by("post_id")
    digest = hashlib.sha256()
    for batch in table.to_batches(max_chunksize=8192):
        for row in batch.to_pylist():
            digest.update(json.dumps(row, default=_canonical, separators=(",", ":")).encode())
            digest.update(b"\n")
    return digest.hexdigest()[:ID_LENGTH]


def _canonical(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    raise TypeError(f"cannot hash {type(value).__name__}")
