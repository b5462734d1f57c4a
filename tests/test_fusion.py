"""Fusion taggers: side inputs from Feast in training, evaluation and serving; CUPED's covariate from Feast."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from personal import PSEUDONYMS
from PIL import Image
from torch import nn

from components.data.ingest import ingest, read_labels
from components.data.predlog import PredictionLog
from components.data.snapshot import Store
from components.errors import ConfigError
from components.features import captions
from components.features.side import SideReader, encode, group_slices, side_columns, side_refs
from components.features.store import Features
from components.features.sync import sync
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger, extend_labels, load_tagger, save_tagger
from components.model.train import Base, TrainConfig, train
from serving.report import StoredFeature, covariate_from
from serving.tagging import ArmModel, PostContext
from tests.test_features import profiles

SMALL = Preprocessing(image_size=32, resize=36)
LABELS = ("cat", "dog", "food")
DAY0 = datetime(2026, 1, 5, tzinfo=UTC)


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, "PNG")
    return buf.getvalue()


# --- the model ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_a_fusion_tagger_needs_its_side_inputs_and_saves_them_in_its_spec(tmp_path: Path) -> None:
    spec = TaggerSpec("resnet18", LABELS, SMALL, ("caption", "user"))
    tagger = build_tagger(spec).eval()
    width = len(spec.side_columns)
    assert width == (1 + captions.DIM) + (3 + len(LABELS))
    x, side = torch.zeros(2, 3, 32, 32), torch.randn(2, width)
    logits, emb = tagger.forward_with_embeddings(x, side)
    assert logits.shape == (2, 3) and emb.shape == (2, tagger.image_dim + 128) == (2, tagger.embedding_dim)
    with pytest.raises(ConfigError, match="reads side inputs"):
        tagger(x)
    with pytest.raises(ConfigError, match="shape"):
        tagger(x, side[:, :-1])
    with pytest.raises(ConfigError, match="canonical"):
        build_tagger(TaggerSpec("resnet18", LABELS, SMALL, ("user", "caption")))
    loaded = load_tagger(save_tagger(tagger, tmp_path / "t"))
    assert loaded.spec == spec
    torch.testing.assert_close(loaded(x, side), tagger(x, side))
    # a tagger saved before side inputs existed reads back image-only
    raw = json.loads((tmp_path / "t" / "tagger.json").read_text())
    assert raw.pop("side") == ["caption", "user"]
    assert TaggerSpec.from_json(json.dumps(raw)).side == ()


@pytest.mark.unit
def test_growing_a_fusion_taggers_labels_keeps_its_answers_on_the_old_ones() -> None:
    torch.manual_seed(0)
    tagger = build_tagger(TaggerSpec("resnet18", LABELS, SMALL, ("caption", "user"))).eval()
    grown = extend_labels(tagger, (*LABELS, "meme")).eval()
    before, after = tagger.spec.side_columns, grown.spec.side_columns
    assert after == [*before, "user:interest=meme"]
    x, side = torch.randn(4, 3, 32, 32), torch.randn(4, len(before))
    wide = torch.cat([side, torch.randn(4, 1)], 1)  # whatever the new label's interest is
    torch.testing.assert_close(grown(x, wide)[:, :3], tagger(x, side))


@pytest.mark.model
def test_side_inputs_are_learned_where_the_image_says_nothing() -> None:
    """Every image is the same grey; the caption group carries the class. Fusion learns it, image-only cannot."""
    torch.manual_seed(0)
    n, width = 96, len(side_columns(("caption",), LABELS))
    y = torch.arange(n) % 3
    x = torch.zeros(n, 3, 32, 32)
    side = torch.zeros(n, width)
    side[:, 0] = 1.0  # caption known
    side[torch.arange(n), 1 + y] = 1.0  # a caption embedding that names the class
    accuracy = {}
    for name, groups in (("image", ()), ("fusion", ("caption",))):
        torch.manual_seed(1)
        tagger = build_tagger(TaggerSpec("resnet18", LABELS, SMALL, groups))
        optimiser = torch.optim.Adam(tagger.parameters(), lr=1e-3)
        for _ in range(40):
            tagger.train()
            loss = nn.functional.cross_entropy(tagger(x, side if groups else None), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        tagger.eval()
        held_out = torch.zeros(30, 3, 32, 32)
        y2 = torch.arange(30) % 3
        side2 = torch.zeros(30, width)
        side2[:, 0] = 1.0
        side2[torch.arange(30), 1 + y2] = 1.0
        with torch.no_grad():
            found = tagger(held_out, side2 if groups else None).argmax(1)
        accuracy[name] = float((found == y2).float().mean())
    assert accuracy["fusion"] == 1.0
    assert accuracy["image"] < 0.7


# --- encoding -------------------------------------------------------------------------------------


@pytest.mark.unit
def test_encoding_marks_unknown_groups_and_puts_interests_under_their_labels() -> None:
    found = pd.DataFrame(
        {
            "caption_embedding": [np.full(captions.DIM, 0.5, np.float32), None, None],
            "posts_28d": [3, np.nan, 0],
            "engagement_rate_28d": [0.05, np.nan, 0.0],
            "interest_tags": [["dog", "meme"], None, []],
            "interest_shares": [[0.75, 0.25], None, []],
        }
    )
    out = encode(found, ("caption", "user"), LABELS)
    columns = side_columns(("caption", "user"), LABELS)
    assert out.shape == (3, len(columns)) and out.dtype == np.float32
    row = dict(zip(columns, out[0], strict=True))
    assert row["caption:known"] == 1.0 and row["caption:embedding[7]"] == 0.5
    assert row["user:known"] == 1.0 and row["user:log1p_posts_28d"] == pytest.approx(np.log1p(3))
    assert row["user:engagement_rate_28d"] == pytest.approx(0.5)
    assert (row["user:interest=dog"], row["user:interest=cat"]) == (0.75, 0.0)  # meme is no label: dropped
    assert not out[1].any()  # no caption stored, no profile: every column, flags included, is 0
    third = dict(zip(columns, out[2], strict=True))
    assert third["user:known"] == 1.0 and third["caption:known"] == 0.0
    caption_cols, user_cols = group_slices(("caption", "user"), LABELS)
    assert (caption_cols.stop - caption_cols.start, user_cols.stop - user_cols.start) == (385, 6)
    assert side_refs(("user", "caption"))[0] == "post_meta_fv:caption_embedding"  # canonical order
    with pytest.raises(ConfigError, match="unknown side input"):
        side_refs(("weather",))


# --- with the real feature store ----------------------------------------------------------------


@pytest.fixture
def fed(small_feed: Path, tmp_path: Path) -> tuple[Store, Features, PredictionLog]:
    """The small feed ingested (all labelled), its features written, and an image-only champion's scores."""
    store = Store(tmp_path / "store")
    ingest(small_feed, store, PSEUDONYMS, labels=read_labels(small_feed / "oracle" / "labels"), label_source="seed")
    features = Features.open(tmp_path / "features")
    features.apply()
    log = PredictionLog(tmp_path / "predictions")
    sync(features, store.head(), log)
    return store, features, log


@pytest.mark.integration
def test_training_reads_side_inputs_as_of_each_post_and_serves_them_online(
    fed: tuple[Store, Features, PredictionLog], tmp_path: Path
) -> None:
    store, features, log = fed
    head = store.head()
    reader = SideReader(features)
    config = TrainConfig(arch="resnet18", preprocessing=SMALL, epochs=1, side=["caption", "user"], seed=0)
    with pytest.raises(ConfigError, match="needs the feature store"):
        train(store, head, config, tmp_path / "no-reader")
    image_only = train(store, head, config.model_copy(update={"side": ()}), tmp_path / "image")
    with pytest.raises(ConfigError, match="same"):
        train(store, head, config, tmp_path / "mismatch", Base(image_only.tagger, head), side_reader=reader)

    # the champion scores the feed: its tags become the users' interests, as in the loop
    from components.monitor.batch import log_batch_predictions  # noqa: PLC0415

    log_batch_predictions(store, head, Predictor(image_only.tagger), 1, log)
    sync(features, head, log)
    result = train(store, head, config, tmp_path / "fusion", side_reader=reader)
    tagger = result.tagger
    assert tagger.spec.side == ("caption", "user") and result.history[0].val_loss < 10

    # point in time: a post's user inputs are the profile of the midnight before it, which never counts the post
    manifest = head.manifest().to_pandas()
    posts = manifest.sort_values("created_at").groupby("user_id").nth(2).head(8)  # each user's third post
    side = reader.historical(tagger.spec.side, tagger.labels, posts)
    columns = tagger.spec.side_columns
    expected_posts = []
    for _, post in posts.iterrows():
        midnight = post.created_at.normalize()
        mine = manifest[(manifest.user_id == post.user_id) & (manifest.created_at < midnight)]
        expected_posts.append(len(mine[mine.created_at >= midnight - timedelta(days=28)]))
    known = side[:, columns.index("user:known")]
    log_posts = side[:, columns.index("user:log1p_posts_28d")]
    np.testing.assert_allclose(known, [1.0 if n else 0.0 for n in expected_posts])
    np.testing.assert_allclose(log_posts, np.log1p(expected_posts), rtol=1e-6)
    assert (side[:, columns.index("caption:known")] == 1).all()

    # the predictor reads them itself for evaluation and batch scoring; without posts it says what it needs
    predictor = Predictor(tagger, side_reader=reader)
    with pytest.raises(ConfigError, match="posts being scored"):
        predictor.predict([png((9, 9, 9))])
    with pytest.raises(ConfigError, match="SideReader"):
        Predictor(tagger).predict([png((9, 9, 9))], posts)

    # serving: the arm reads the user online and encodes a new post's caption on the fly
    features.materialize()
    arm = ArmModel(lambda v: Predictor(tagger), side_reader=reader)
    assert arm.use(2)
    user = str(posts.user_id.iloc[0])
    context = PostContext(user_id=user, caption="my cat again", hashtags=("cat",))
    tagged = arm.predict([png((10, 200, 10))], [context])[0]
    assert tagged.side == "online"
    online = reader.online(tagger.spec.side, tagger.labels, [user], [None], [context.text])
    np.testing.assert_allclose(online[0, 1 : 1 + captions.DIM], captions.encode([context.text])[0], atol=1e-6)
    assert online[0, columns.index("user:known")] == 1.0
    direct = Predictor(tagger).predict([png((10, 200, 10))], side=online)
    np.testing.assert_allclose(tagged.probabilities, direct.probabilities[0], atol=1e-5)

    # a store that goes down while serving: the batch is still tagged, from the image alone, and says so
    failing = Features.open(features.data_dir)

    def down(*args: object) -> pd.DataFrame:
        raise ConnectionError("redis:6379 refused the connection")

    failing.online = down  # type: ignore[method-assign]
    degraded = ArmModel(lambda v: Predictor(tagger), side_reader=SideReader(failing))
    assert degraded.use(2)
    out = degraded.predict([png((10, 200, 10)), b"not an image"], [context, context])
    assert out[0].side == "unavailable" and out[1].reason == "not_an_image"
    blank = Predictor(tagger).predict([png((10, 200, 10))], side=np.zeros((1, len(columns)), np.float32))
    np.testing.assert_allclose(out[0].probabilities, blank.probabilities[0], atol=1e-5)

    # an arm with no feature store, or one it cannot open, refuses a fusion version and keeps what it serves
    plain = ArmModel(lambda v: Predictor(image_only.tagger) if v == 1 else Predictor(tagger))
    assert plain.use(1) and not plain.use(2)
    assert plain.version == 1 and "no feature store" in (plain.load_error or "")

    def unconfigured() -> Features:
        return Features.open(tmp_path, "/nowhere/feature_store.yaml")

    broken = ArmModel(lambda v: Predictor(tagger), side_reader=SideReader(unconfigured))
    assert not broken.use(2) and not broken.ready and "does not exist" in (broken.load_error or "")

    # its feature service names exactly what it reads
    assert features.register_model(7, head.id, side_refs(tagger.spec.side)) == "tagger_v7"
    assert features.service_features("tagger_v7") == side_refs(("caption", "user"))


@pytest.mark.integration
def test_the_cuped_covariate_from_feast_is_the_value_at_the_tests_start(tmp_path: Path) -> None:
    features = Features.open(tmp_path / "features")
    features.apply()
    features.write("user_profile", profiles([("u1", DAY0, 4), ("u1", DAY0 + timedelta(days=2), 9)]), "p")
    covariate = StoredFeature(lambda: features)  # opened on first use
    start = DAY0 + timedelta(days=1, hours=6)
    values = covariate(["u1", "u2"], start)
    assert values["u1"] == pytest.approx(0.04)  # as of day 0; the day-2 profile came after the start
    assert np.isnan(values["u2"])  # no history: abtest imputes the pooled mean
    assert "engagement_rate_28d" in covariate.name
    assert covariate(["u1"], DAY0 + timedelta(days=3))["u1"] == pytest.approx(0.09)
    with pytest.raises(ConfigError, match="not a user feature"):
        StoredFeature(features, "post_meta_fv:engagement_rate")(["u1"], start)
    with pytest.raises(ConfigError, match="not a number"):
        StoredFeature(features, "user_profile_fv:interest_shares")(["u1"], start)
    with pytest.raises(ConfigError, match="serving_log or"):
        covariate_from("engagement", PredictionLog(tmp_path / "p"), None, 14.0, lambda: features)  # type: ignore[arg-type]
