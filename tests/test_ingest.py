"""Ingestion: sources, quarantine, duplicates, labels, idempotence and crash safety."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import files
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_FEED
from personal import PSEUDONYMS
from PIL import Image

from components.data import ingest as ingest_module
from components.data import snapshot as snapshot_module
from components.data.ingest import ingest, read_labels
from components.data.snapshot import Store
from components.errors import SourceError

pytestmark = pytest.mark.unit


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Labelled class folders with good photos, every kind of bad file, and a copy."""
    root = tmp_path / "uploads"
    write(root / "cats" / "a.png", files.encode(files.noise_rgb(seed=1), "PNG"))
    write(root / "cats" / "b.jpg", files.exif_rotated_jpeg(6))
    write(root / "dogs" / "c.jpg", files.gps_jpeg())
    write(root / "dogs" / "d.jpg", files.cmyk_jpeg())
    write(root / "dogs" / "e.png", files.rgba_png())
    write(root / "dogs" / "f.png", files.png_16bit())
    write(root / "dogs" / "copy-of-a.png", (root / "cats" / "a.png").read_bytes())
    write(root / "bad" / "empty.jpg", b"")
    write(root / "bad" / "cut.jpg", files.truncated_jpeg())
    write(root / "bad" / "notes.png", b"shopping list: milk, eggs\n")
    write(root / "bad" / "bomb.png", files.png_claiming(30_000, 30_000))
    write(root / "README.txt", b"not an image, not by name either")
    return root


def test_a_bad_file_never_stops_the_batch(mixed_folder: Path, store: Store) -> None:
    report = ingest(mixed_folder, store, PSEUDONYMS, folder_labels=True)
    assert report.offered == 11 and report.skipped == 1
    assert report.accepted == 6
    assert report.duplicates == 1  # copy-of-a.png has a.png's pixels
    assert report.rejected == {"empty_file": 1, "truncated": 1, "not_an_image": 1, "too_many_pixels": 1}
    assert report.fixes["exif-rotated"] == 1 and report.fixes["cmyk-to-rgb"] == 1

    quarantine = Path(report.quarantine)
    rejections = pq.read_table(quarantine / "rejections.parquet").to_pandas()
    assert sorted(rejections.reason) == ["empty_file", "not_an_image", "too_many_pixels", "truncated"]
    for row in rejections.itertuples():  # each bad file kept byte for byte beside its reason
        assert (quarantine / row.quarantined_as).read_bytes() == Path(row.path).read_bytes()
        assert row.detail

    snap = store.head()
    assert snap is not None and snap.id == report.snapshot and snap.posts == 6
    assert snap.labels == {"cats": 2, "dogs": 4}
    manifest = snap.manifest().to_pandas()
    assert set(manifest.label_source) == {"folder"}
    for ref in manifest.image:  # stored images are normalised RGB PNGs without metadata
        with Image.open(store.root / ref) as im:
            assert im.format == "PNG" and im.mode == "RGB" and not im.getexif() and "exif" not in im.info
    saved = json.loads((store.root / "ingests" / f"{report.run_id}.json").read_text())
    assert saved["accepted"] == 6 and saved["rejected"]["truncated"] == 1


def test_reingesting_the_same_files_adds_nothing(mixed_folder: Path, store: Store) -> None:
    first = ingest(mixed_folder, store, PSEUDONYMS, folder_labels=True)
    images = sorted(store.images.rglob("*.png"))
    second = ingest(mixed_folder, store, PSEUDONYMS, folder_labels=True)
    assert second.accepted == 0 and second.duplicates == first.accepted + first.duplicates
    assert not second.new_snapshot and second.snapshot == first.snapshot
    assert len(store.list()) == 1
    assert sorted(store.images.rglob("*.png")) == images


def test_simulator_source_end_to_end(small_feed: Path, store: Store) -> None:
    oracle = pd.read_parquet(small_feed / "oracle" / "labels").set_index("post_id")
    report = ingest(
        small_feed, store, PSEUDONYMS, labels=read_labels(small_feed / "oracle" / "labels"), label_source="seed"
    )
    manifest = store.head().manifest().to_pandas().set_index("post_id")

    # every broken upload is refused for the reason its breakage implies
    broken = oracle[oracle.corruption.notna()]
    expected = {
        "zero_byte": "empty_file",
        "truncated": "truncated",
        "not_an_image": "not_an_image",
        "pixel_bomb": "too_many_pixels",
    }
    want = broken.corruption.map(expected).value_counts().to_dict()
    assert report.rejected == want
    assert not set(broken.index) & set(manifest.index)

    # a repost of an accepted post is a duplicate; everything else intact is in the snapshot
    reposts = oracle[oracle.corruption.isna() & oracle.repost_of.notna() & oracle.repost_of.isin(manifest.index)]
    assert len(reposts) > 0 and not set(reposts.index) & set(manifest.index)
    assert report.duplicates == len(reposts)
    assert report.accepted == len(oracle) - len(broken) - len(reposts)
    assert (manifest.label == oracle.loc[manifest.index, "label"]).all()
    assert (manifest.label_source == "seed").all()
    assert report.fixes["exif-rotated"] == int(
        ((oracle.orientation != 1) & oracle.corruption.isna() & oracle.index.isin(manifest.index)).sum()
    )


def test_parallel_validation_gives_the_same_snapshot(small_feed: Path, tmp_path: Path) -> None:
    one = ingest(small_feed, Store(tmp_path / "one"), PSEUDONYMS, workers=1)
    two = ingest(small_feed, Store(tmp_path / "two"), PSEUDONYMS, workers=2)
    assert one.offered >= 4  # enough files for the process pool
    assert one.snapshot == two.snapshot and one.rejected == two.rejected


def test_time_window_selects_days(small_feed: Path, store: Store) -> None:
    day1 = datetime.combine(SMALL_FEED.day_date(1), datetime.min.time(), tzinfo=UTC)
    day3 = datetime.combine(SMALL_FEED.day_date(3), datetime.min.time(), tzinfo=UTC)
    report = ingest(small_feed, store, PSEUDONYMS, since=day1, until=day3)
    assert report.offered == 2 * SMALL_FEED.posts_per_day
    created = store.head().manifest().column("created_at").to_pylist()
    assert min(created) >= day1 and max(created) < day3


def test_jsonl_manifest_with_bad_records(tmp_path: Path, store: Store) -> None:
    write(tmp_path / "img" / "1.png", files.encode(files.noise_rgb(seed=1), "PNG"))
    write(tmp_path / "img" / "2.png", files.encode(files.noise_rgb(seed=2), "PNG"))
    lines = [
        {
            "post_id": "p1",
            "user_id": "u1",
            "created_at": "2026-01-05T10:00:00+02:00",
            "image": "img/1.png",
            "caption": "hi",
            "hashtags": ["#a"],
            "likes": 3,
            "label": "food",
        },
        {"post_id": "p2", "image": "img/2.png", "created_at": "2026-01-05 11:00:00"},
        {"post_id": "p3", "image": "img/missing.png"},
        {"image": "img/1.png"},
        {"post_id": "p4", "image": "img/2.png", "created_at": "the day after tomorrow"},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    manifest = write(tmp_path / "posts.jsonl", text.encode())
    report = ingest(manifest, store, PSEUDONYMS)
    assert report.accepted == 2
    assert report.rejected == {"bad_record": 3, "missing_file": 1}
    rows = store.head().manifest().to_pandas().set_index("post_id")
    assert rows.loc["p1", "created_at"] == pd.Timestamp("2026-01-05T08:00:00Z")  # converted to UTC
    assert rows.loc["p2", "created_at"] == pd.Timestamp("2026-01-05T11:00:00Z")  # naive read as UTC
    assert rows.loc["p1", "label"] == "food" and rows.loc["p1", "label_source"] == "manifest"
    assert list(rows.loc["p1", "hashtags"]) == ["#a"] and rows.loc["p1", "likes"] == 3
    reasons = pq.read_table(Path(report.quarantine) / "rejections.parquet").to_pandas()
    assert any("not a date" in d for d in reasons.detail) and any("not JSON" in d for d in reasons.detail)


def test_parquet_manifest_and_post_id_conflict(tmp_path: Path, store: Store) -> None:
    write(tmp_path / "1.png", files.encode(files.noise_rgb(seed=1), "PNG"))
    write(tmp_path / "2.png", files.encode(files.noise_rgb(seed=2), "PNG"))
    pd.DataFrame({"post_id": ["p1"], "image": ["1.png"]}).to_parquet(tmp_path / "a.parquet")
    pd.DataFrame({"post_id": ["p1", "p9", "p9", "p9"], "image": ["2.png", "1.png", "1.png", "2.png"]}).to_parquet(
        tmp_path / "b.parquet"
    )
    assert ingest(tmp_path / "a.parquet", store, PSEUDONYMS).accepted == 1
    report = ingest(tmp_path / "b.parquet", store, PSEUDONYMS)
    # p1 now names another image: refused. p9 shows p1's image: a duplicate, twice.
    # Then p9 with another image: refused.
    assert report.rejected == {"post_id_conflict": 2} and report.duplicates == 2 and report.accepted == 0


def test_labels_relabel_existing_posts_in_a_new_snapshot(small_feed: Path, store: Store, tmp_path: Path) -> None:
    first = ingest(small_feed, store, PSEUDONYMS)
    assert store.head().labelled == 0
    post_ids = store.head().manifest().column("post_id").to_pylist()[:5]
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"post_id": post_ids, "label": ["food"] * 5}).to_csv(labels, index=False)
    second = ingest(small_feed, store, PSEUDONYMS, labels=read_labels(labels), label_source="annotators")
    assert second.accepted == 0 and second.relabelled == 5 and second.new_snapshot
    assert store.head().parent == first.snapshot
    diff = store.diff(store.resolve(first.snapshot), store.head())
    assert diff.relabelled == [(p, None, "food") for p in sorted(post_ids)] and not diff.added
    assert store.head().labels == {"food": 5}


def test_a_crash_while_committing_leaves_nothing_half_written(
    mixed_folder: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest(mixed_folder / "cats", store, PSEUDONYMS)
    head_before = store.head()
    real_write = snapshot_module.write_table

    def write_then_die(table, path):
        real_write(table, path)
        raise OSError("disk full")

    monkeypatch.setattr(snapshot_module, "write_table", write_then_die)
    with pytest.raises(OSError, match="disk full"):
        ingest(mixed_folder / "dogs", store, PSEUDONYMS)
    assert store.head() == head_before
    assert [p.name for p in store.snapshots.iterdir() if p.name != "HEAD"] == [head_before.id]

    monkeypatch.undo()
    report = ingest(mixed_folder / "dogs", store, PSEUDONYMS)
    assert report.new_snapshot and report.accepted == 4 and store.head().parent == head_before.id


def test_a_file_that_crashes_the_decoder_is_quarantined(
    mixed_folder: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ingest_module.validate_image
    poison = (mixed_folder / "dogs" / "f.png").read_bytes()

    def validate_or_crash(data: bytes, limits=None):
        if data == poison:
            raise MemoryError("decoder ran out of memory")
        return real(data, limits)

    monkeypatch.setattr(ingest_module, "validate_image", validate_or_crash)
    report = ingest(mixed_folder / "dogs", store, PSEUDONYMS)
    assert report.rejected == {"corrupt": 1} and report.accepted == 4  # the other four dogs/ files
    rejections = pq.read_table(Path(report.quarantine) / "rejections.parquet").to_pandas()
    assert rejections.detail[0] == "validation failed: MemoryError: decoder ran out of memory"


def test_unreadable_sources_fail_with_a_clear_message(tmp_path: Path, store: Store) -> None:
    with pytest.raises(SourceError, match="no such file or folder"):
        ingest(tmp_path / "nope", store, PSEUDONYMS)
    write(tmp_path / "posts.csv", b"post_id,image\n")
    with pytest.raises(SourceError, match=r"must be \.jsonl, \.json or \.parquet"):
        ingest(tmp_path / "posts.csv", store, PSEUDONYMS)
    pd.DataFrame({"id": ["x"]}).to_parquet(tmp_path / "m.parquet")
    with pytest.raises(SourceError, match="lacks column"):
        ingest(tmp_path / "m.parquet", store, PSEUDONYMS)
    with pytest.raises(SourceError, match="no such labels file"):
        read_labels(tmp_path / "labels.parquet")
