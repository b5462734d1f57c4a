"""Pseudonymous users and forgetting one: the key, ingest's edge, and a deletion across every store.

The deletion test builds a small home with each kind of place a user's data lands in
(snapshots and images, a quarantined upload, the prediction and feedback logs, Feast's
offline files and SQLite online store, the label queue, tasks in the session's Label
Studio, a drift check and an evaluation in JSON, a job log, a registered MLflow version)
and then looks for the user in every file, byte by byte and cell by cell.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from personal import PSEUDONYMS, find

from active_learning.labelstudio import LabelingProject
from active_learning.queue import LabelQueue, QueuedPost
from components.data.ingest import ingest, read_labels
from components.data.predlog import PREDICTION_SCHEMA, PredictionLog
from components.data.pseudonyms import Pseudonyms
from components.data.snapshot import Store
from components.errors import ConfigError, LabelingError
from components.features.store import Features
from components.features.sync import sync
from components.model.gate import PromotionGate
from components.model.preprocess import Preprocessing
from components.model.registry import Registry
from components.model.retrain import retrain
from components.model.train_config import TrainConfig
from components.privacy.forget import AUDIT, Places, audit_records, forget, forgotten
from infra.labelstudio import LocalLabelStudio
from serving.eventlog import FEEDBACK_SCHEMA, FeedbackLog
from tests.models import register_untrained


@pytest.mark.unit
def test_a_pseudonym_is_keyed_stable_and_reveals_neither_the_id_nor_the_key() -> None:
    one, other = Pseudonyms(b"k" * 32), Pseudonyms(b"q" * 32)
    assert one.of("u00001") == one.of("u00001") != one.of("u00002")
    assert one.of("u00001") != other.of("u00001")  # without the key, nobody can compute it
    assert one.of("u00001").startswith("p-") and len(one.of("u00001")) == 34 and "u00001" not in one.of("u00001")
    assert one.receipt("u00001") != one.of("u00001") and one.receipt("u00001").startswith("r-")
    assert "k" * 8 not in repr(one)
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        Pseudonyms(b"short")


@pytest.mark.unit
def test_the_key_file_is_made_once_with_mode_0600_and_refused_when_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "pseudonym.key"
    first = Pseudonyms.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_bytes()) == 32
    assert Pseudonyms.from_file(path).of("u1") == first.of("u1")  # made once: later opens read it
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"can be read by others \(mode 644\): chmod 600"):
        Pseudonyms.from_file(path)
    with pytest.raises(ConfigError, match="no pseudonym key"):
        Pseudonyms.from_file(tmp_path / "absent.key", create=False)


@pytest.mark.unit
def test_ingest_stores_only_pseudonyms_and_leaves_out_forgotten_users(small_feed: Path, tmp_path: Path) -> None:
    posts = pd.read_parquet(small_feed / "posts")
    raw = dict(zip(posts["post_id"], posts["user_id"], strict=True))
    report = ingest(small_feed, Store(tmp_path / "a"), PSEUDONYMS)
    manifest = Store(tmp_path / "a").head().manifest().to_pandas()
    assert report.accepted == len(manifest) > 0 and report.forgotten == 0
    assert list(manifest["user_id"]) == [PSEUDONYMS.of(raw[p]) for p in manifest["post_id"]]
    assert find(tmp_path / "a", set(raw.values())) == []
    someone = manifest["post_id"].map(raw).value_counts().index[0]  # the user with the most posts kept
    theirs = int((manifest["post_id"].map(raw) == someone).sum())
    forgetful = Pseudonyms(b"trendloop tests' pseudonym key.", frozenset({PSEUDONYMS.receipt(someone)}))
    again = ingest(small_feed, Store(tmp_path / "b"), forgetful)
    assert again.forgotten == int((posts["user_id"] == someone).sum())
    kept = Store(tmp_path / "b").head().manifest().to_pandas()
    assert PSEUDONYMS.of(someone) not in set(kept["user_id"])
    # every other post is kept (and a repost of theirs by someone else is no longer a duplicate: it comes in)
    assert set(manifest.loc[manifest["user_id"] != PSEUDONYMS.of(someone), "post_id"]) <= set(kept["post_id"])
    assert theirs > 0


@pytest.mark.integration
def test_a_forgotten_user_is_nowhere_afterwards_and_the_next_retrain_works(
    small_feed: Path, tmp_path: Path, label_studio: LocalLabelStudio
) -> None:
    home = tmp_path / "home"
    store = Store(home / "store")
    ingest(small_feed, store, PSEUDONYMS, labels=read_labels(small_feed / "oracle" / "labels"), label_source="seed")
    posts = pd.read_parquet(small_feed / "posts")
    manifest = store.head().manifest().to_pandas()
    counts = manifest["user_id"].value_counts()
    them = next(u for u in posts["user_id"].unique() if PSEUDONYMS.of(u) == counts.index[0])
    pseudonym = PSEUDONYMS.of(them)
    mine = set(manifest.loc[manifest["user_id"] == pseudonym, "post_id"])
    others = set(manifest["post_id"]) - mine
    their_images = set(manifest.loc[manifest["user_id"] == pseudonym, "image"])
    # a broken upload of theirs, quarantined with its copy
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a photo")
    (tmp_path / "m.jsonl").write_text(json.dumps({"post_id": "x-broken", "user_id": them, "image": "broken.jpg"}))
    assert ingest(tmp_path / "m.jsonl", store, PSEUDONYMS).rejected_total == 1
    before = store.head()
    rejected = pd.concat(pd.read_parquet(p) for p in (store.root / "quarantine").glob("*/rejections.parquet"))
    quarantined = set(rejected.loc[rejected["user_id"] == pseudonym, "post"])  # the feed's broken uploads too
    assert "x-broken" in quarantined

    # served requests and feedback: two of theirs (one about a post of theirs), one of someone else
    log = PredictionLog(home / "predictions")
    served = [("r1", sorted(mine)[0], pseudonym), ("r2", None, pseudonym), ("r3", sorted(others)[0], "p-someone")]
    rows = [{"request_id": r, "post_id": p, "user_id": u, "arm": "champion", "model_version": 1, "predicted": "food",
             "confidence": 0.5, "probabilities": [0.5], "embedding": [0.1], "latency_ms": 3.0,
             "time": pd.Timestamp("2026-01-06", tz="UTC"), "experiment": None, "source": "served"}
            for r, p, u in served]  # fmt: skip
    log.write(pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA), "serve-1")
    events = [{"request_id": r, "event": "click", "user_id": u, "arm": "champion", "model_version": 1,
               "experiment": None, "time": pd.Timestamp("2026-01-06", tz="UTC")} for r, _, u in served]  # fmt: skip
    FeedbackLog(home / "serving" / "feedback").write(pa.Table.from_pylist(events, schema=FEEDBACK_SCHEMA), "serve-1")
    # Feast: offline files and the SQLite online store, user profiles and post rows
    features = Features.open(home / "features")
    features.apply()
    sync(features, before, log)
    features.materialize()
    assert features.online(["user_profile_fv:posts_28d"], {"user_id": [pseudonym]}).iloc[0]["posts_28d"] > 0
    # the label queue and Label Studio tasks of two of theirs and one other post
    queued = sorted(mine)[:2] + sorted(others)[:1]
    LabelQueue(home / "labeling" / "queue.db").add(
        QueuedPost(p, f"images/{p}.png", "b1", "active", "entropy", 0.9, "food", 0.4, "1") for p in queued
    )
    project = LabelingProject(label_studio.url, label_studio.credentials().token, "privacy: forget")
    project.ensure(["food", "pets"])
    project.import_tasks(
        [{"data": {"post_id": p, "image": f"/data/{p}.png", "caption": "", "hashtags": ""}} for p in queued]
    )
    # JSON a drift check and an evaluation keep, a job log line, a registered version trained on the snapshot
    checks = home / "drift" / "c1"
    checks.mkdir(parents=True)
    outliers = [{"post_id": p, "novelty": 0.4} for p in queued]
    (checks / "drift.json").write_text(json.dumps({"verdict": {"drifted": True, "outliers": outliers}}))
    evaluation = {"overall": {"posts": len(queued)}, "outcomes": {"post_id": queued, "label": ["food"] * 3,
                  "unchanged": {"crop_90": [True, False, True]}}}  # fmt: skip
    (checks / "evaluation.json").write_text(json.dumps(evaluation))
    (home / "logs").mkdir()
    (home / "logs" / "job.log").write_text(f"INFO selected {queued[0]} for {pseudonym}\nINFO done\n")
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", artifact_location=(home / "art").as_uri(),
                        cache_dir=home / "models")  # fmt: skip
    version = register_untrained(registry, 1)
    registry.client.set_model_version_tag(registry.model_name, str(version), "snapshot", before.id)

    places = Places(
        store=store,
        folders=[home / "predictions", home / "serving", home / "features" / "sources", home / "drift", home / "logs"],
        label_queue=home / "labeling" / "queue.db",
        features=lambda: features,
        label_studio=project,
        versions=registry.versions,
        audit=home / "privacy",
    )
    done = forget([them], PSEUDONYMS, places)

    assert done.posts == len(mine | quarantined)  # their quarantined uploads are theirs too
    assert done.retrain == [version] and done.snapshot_before == before.id != done.snapshot_after
    head = store.head()
    assert head.id == done.snapshot_after and head.parent == before.id
    assert set(head.manifest()["post_id"].to_pylist()) == others
    old = store.load(before.id)  # lineage kept: id and counts; the rows and files gone
    assert old.posts == len(manifest) and set(old.manifest()["post_id"].to_pylist()) == others
    assert json.loads((old.path / "snapshot.json").read_text())["redactions"][0]["posts_removed"] == len(mine)
    assert not any((store.root / ref).exists() for ref in their_images - set(head.manifest()["image"].to_pylist()))
    assert project.tasks_for(queued) == {sorted(others)[0]: project.tasks_for(queued)[sorted(others)[0]]}
    assert features.online(["user_profile_fv:posts_28d"], {"user_id": [pseudonym]}).isna().iloc[0]["posts_28d"]
    assert log.read()["request_id"].to_pylist() == ["r3"]
    evaluated = json.loads((checks / "evaluation.json").read_text())["outcomes"]
    assert evaluated == {"post_id": [sorted(others)[0]], "label": ["food"], "unchanged": {"crop_90": [True]}}
    # nothing of theirs in any file: pseudonym, raw id, post ids (byte for byte, and every Parquet cell)
    assert find(home, {them, pseudonym, *mine, *quarantined}) == []
    [record] = audit_records(home / "privacy")
    assert record["receipts"] == [PSEUDONYMS.receipt(them)] and record["users"] == 1
    assert stat.S_IMODE((home / "privacy" / AUDIT).stat().st_mode) == 0o600
    assert forgotten(home / "privacy") == {PSEUDONYMS.receipt(them)}

    # forgetting again finds nothing more; a later ingest of the same feed leaves them out
    assert forget([them], PSEUDONYMS, places).removed == {}
    forgetful = Pseudonyms(b"trendloop tests' pseudonym key.", forgotten(home / "privacy"))
    again = ingest(small_feed, store, forgetful)
    assert again.forgotten == int((posts["user_id"] == them).sum())
    assert pseudonym not in set(store.head().manifest()["user_id"].to_pylist())  # others' reposts of theirs may come
    assert find(home / "store", {them, pseudonym, *mine}) == []
    # and the next retrain works on the snapshot without them
    quick = TrainConfig(epochs=1, patience=1, batch_size=32, preprocessing=Preprocessing(image_size=32, resize=36))
    lenient = PromotionGate(old_class_margin=1.0, newest_slice_gain=-1.0, stability_margin=1.0, min_stability=0.0)
    result = retrain(store, store.head(), quick, lenient, registry, home / "runs")
    assert result.placed is not None and registry.snapshot_of(result.placed.version) == store.head().id


@pytest.mark.integration
def test_forget_touches_nothing_when_label_studio_is_down(small_feed: Path, tmp_path: Path) -> None:
    from infra.processes import free_port  # noqa: PLC0415

    store = Store(tmp_path / "store")
    ingest(small_feed, store, PSEUDONYMS)
    before = store.head()
    them = pd.read_parquet(small_feed / "posts")["user_id"].iloc[0]
    down = LabelingProject(f"http://127.0.0.1:{free_port()}", "token", "privacy: down", timeout=5)
    places = Places(store=store, folders=[], label_studio=down, audit=tmp_path / "privacy")
    with pytest.raises(LabelingError, match="unreachable while trying to list projects"):
        forget([them], PSEUDONYMS, places)
    assert store.head().id == before.id and pq.read_table(before.path / "manifest.parquet").num_rows == before.posts
    assert not (tmp_path / "privacy").exists()
