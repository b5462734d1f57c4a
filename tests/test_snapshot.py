"""Snapshots: content addressing, immutability, diff, references and verification."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import files
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from personal import PSEUDONYMS

from components.data.ingest import ingest
from components.data.posts import SNAPSHOT_SCHEMA
from components.data.snapshot import Store, content_id
from components.errors import SnapshotError

pytestmark = pytest.mark.unit


def post(post_id: str, label: str | None = None, sha: str = "ab" * 32) -> dict:
    return {
        "post_id": post_id,
        "user_id": "u1",
        "created_at": datetime(2026, 1, 5, tzinfo=UTC),
        "image_sha256": sha,
        "image": f"images/{sha[:2]}/{sha}.png",
        "width": 64,
        "height": 64,
        "caption": None,
        "hashtags": [],
        "views": None,
        "likes": None,
        "comments": None,
        "shares": None,
        "label": label,
        "label_source": "seed" if label else None,
        "source": "b-1",
    }


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA)


def test_id_is_the_content_hash_whatever_the_row_order(store: Store) -> None:
    rows = [post("p2", "food"), post("p1", "cars"), post("p3")]
    snap, new = store.commit(table(rows), None, [])
    assert new and snap.id == content_id(table(rows))
    again, new_again = store.commit(table(list(reversed(rows))), snap.id, [{"kind": "again"}])
    assert again.id == snap.id and not new_again
    assert again.sources == [] and again.parent is None  # the existing snapshot is returned untouched
    assert content_id(table([post("p2", "pets"), post("p1", "cars"), post("p3")])) != snap.id


def test_snapshot_files_are_read_only_and_never_rewritten(store: Store) -> None:
    snap, _ = store.commit(table([post("p1", "food")]), None, [])
    manifest = snap.path / "manifest.parquet"
    assert not os.stat(manifest).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    before = manifest.read_bytes()
    child, _ = store.commit(table([post("p1", "food"), post("p2", "cars")]), snap.id, [])
    assert manifest.read_bytes() == before and child.parent == snap.id
    assert store.resolve(snap.id).posts == 1 and store.head().id == child.id


def test_diff_reports_added_removed_and_relabelled(store: Store) -> None:
    a, _ = store.commit(table([post("p1", "food"), post("p2", "food"), post("p3")]), None, [])
    b, _ = store.commit(table([post("p1", "food"), post("p2", "pets"), post("p4", "pets")]), a.id, [])
    diff = store.diff(a, b)
    assert diff.added == ["p4"] and diff.removed == ["p3"]
    assert diff.relabelled == [("p2", "food", "pets")]
    assert diff.label_counts == {"food": (2, 1), "pets": (0, 2)}


def test_references_head_parents_and_prefixes(store: Store) -> None:
    with pytest.raises(SnapshotError, match="no snapshots yet"):
        store.resolve("HEAD")
    a, _ = store.commit(table([post("p1")]), None, [])
    b, _ = store.commit(table([post("p1"), post("p2")]), a.id, [])
    c, _ = store.commit(table([post("p1"), post("p2"), post("p3")]), b.id, [])
    assert store.resolve("HEAD").id == c.id
    assert store.resolve("HEAD~").id == b.id and store.resolve("HEAD~2").id == a.id
    assert store.resolve(b.id[:6]).id == b.id
    assert [s.id for s in store.list()] == [a.id, b.id, c.id]
    with pytest.raises(SnapshotError, match="past the first snapshot"):
        store.resolve("HEAD~3")
    with pytest.raises(SnapshotError, match="no snapshot matches"):
        store.resolve("zzzz")
    with pytest.raises(SnapshotError, match="whole number"):
        store.resolve("HEAD~x")


def test_an_ambiguous_prefix_is_refused(store: Store) -> None:
    # 17 snapshots: two of them must share a first hex digit
    ids = [store.commit(table([post(f"p{n}")]), None, [])[0].id for n in range(17)]
    first_digits = [i[0] for i in ids]
    shared = next(d for d in first_digits if first_digits.count(d) > 1)
    with pytest.raises(SnapshotError, match="ambiguous"):
        store.resolve(shared)


def test_one_post_id_twice_is_refused(store: Store) -> None:
    with pytest.raises(SnapshotError, match="twice"):
        store.commit(table([post("p1"), post("p1", "food")]), None, [])


def test_verify_finds_tampering(tmp_path: Path, store: Store) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for seed in range(3):
        (folder / f"{seed}.png").write_bytes(files.encode(files.noise_rgb(seed=seed), "PNG"))
    ingest(folder, store, PSEUDONYMS)
    snap = store.head()
    assert store.verify(snap) == []
    image = store.root / snap.manifest().column("image")[0].as_py()
    image.write_bytes(files.encode(files.noise_rgb(seed=99), "PNG"))  # an image swapped behind our back
    (store.root / snap.manifest().column("image")[1].as_py()).unlink()
    problems = store.verify(snap)
    assert len(problems) == 2
    assert any("does not match its hash" in p for p in problems) and any("missing image" in p for p in problems)

    manifest = snap.path / "manifest.parquet"
    manifest.chmod(0o644)
    rows = snap.manifest().to_pylist()
    rows[0]["label"] = "smuggled"
    pq.write_table(table(rows), manifest)
    assert any("content hashes to" in p for p in store.verify(snap, images=False))
