"""The loop's features in Feast: writing the offline sources, materialising, and reading them back.

The definitions live in ``feature_repo/``; the store configuration is one of its YAML
files (``[features] config``), read with environment variables expanded, and Feast's
repo path is the data folder (``<home>/features``), so relative paths in the YAML and
the sources land there. Source layout under the data folder::

    sources/post_meta/<ingest batch>.parquet     caption, hashtag and engagement features
    sources/post_image/<day>-<log batch>.parquet the champion's embedding, tag, confidence
    sources/user_profile/as_of=<day>.parquet      trailing-window user features, end of a day
    sources/post_label/<push id>.parquet          labels as they were given

Every file is written whole and atomically under a name that its content decides,
so running a step again replaces a file rather than adding a copy, and Feast never
reads half a file. Each source folder holds an empty file with its schema, so a
fresh store answers queries before any data arrived.

Feast drops an entity row whose key has no feature row old enough, and returns rows
in its own order: ``historical`` hands back exactly the caller's rows, in the caller's
order, with nulls where nothing was known at the row's time.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from components.data.posts import TIMESTAMP
from components.errors import ConfigError, FeatureError
from components.files import write_table

ROW = "__trendloop_row"  # the caller's row number, carried through Feast's join
WINDOWS = (7, 28)  # days of the user profile's trailing windows
INTEREST_TAGS = 5  # tags kept in a user's interest profile

SOURCE_SCHEMAS: dict[str, pa.Schema] = {
    "post_meta": pa.schema(
        [
            ("post_id", pa.string()),
            ("created_at", TIMESTAMP),
            ("ingested_at", TIMESTAMP),
            ("caption_length", pa.int64()),
            ("hashtag_count", pa.int64()),
            ("hashtags", pa.list_(pa.string())),
            ("caption_embedding", pa.list_(pa.float32())),
            ("views", pa.int64()),
            ("likes", pa.int64()),
            ("comments", pa.int64()),
            ("shares", pa.int64()),
            ("engagement_rate", pa.float32()),
        ]
    ),
    "post_image": pa.schema(
        [
            ("post_id", pa.string()),
            ("created_at", TIMESTAMP),
            ("scored_at", TIMESTAMP),
            ("image_embedding", pa.list_(pa.float32())),
            ("predicted_tag", pa.string()),
            ("confidence", pa.float32()),
            ("model_version", pa.int64()),
        ]
    ),
    "user_profile": pa.schema(
        [
            ("user_id", pa.string()),
            ("as_of", TIMESTAMP),
            ("computed_at", TIMESTAMP),
            *((f"posts_{w}d", pa.int64()) for w in WINDOWS),
            *((f"engagement_rate_{w}d", pa.float32()) for w in WINDOWS),
            ("interest_tags", pa.list_(pa.string())),
            ("interest_shares", pa.list_(pa.float32())),
        ]
    ),
    "post_label": pa.schema(
        [
            ("post_id", pa.string()),
            ("labelled_at", TIMESTAMP),
            ("recorded_at", TIMESTAMP),
            ("label", pa.string()),
            ("label_source", pa.string()),
        ]
    ),
}
EPOCH = datetime(1970, 1, 2, tzinfo=UTC)  # before any data: where a first materialisation starts
EMPTY = "_empty.parquet"
SUMMARY_FEATURES = {  # what `trendloop features get` and the demo show of a post or a user
    "post_id": ["post_meta_fv:engagement_rate", "post_image_fv:predicted_tag", "post_label_fv:label"],
    "user_id": ["user_profile_fv:posts_28d", "user_profile_fv:engagement_rate_28d", "user_profile_fv:interest_tags"],
}


def repo_dir() -> Path:
    """The ``feature_repo`` package folder (definitions and store configurations)."""
    import feature_repo  # noqa: PLC0415

    return Path(feature_repo.__file__).parent


@dataclass
class Features:
    """A Feast store over trendloop's feature sources."""

    store: object  # feast.FeatureStore (imported lazily: importing feast takes seconds)
    data_dir: Path
    # resolved feature lists (a service name or a tuple of references) -> {view: (FeatureView, names)};
    # cleared when definitions change, so a read looks each view up once, not once per feature
    _plans: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, data_dir: Path, config: str | Path = "feature_store.yaml") -> Features:
        """The store configured by ``config`` (a file in ``feature_repo/`` or a path), rooted at ``data_dir``."""
        path = Path(config) if Path(config).is_absolute() else repo_dir() / config
        if not path.is_file():
            raise ConfigError(f"feature store configuration {path} does not exist")
        raw = yaml.safe_load(os.path.expandvars(path.read_text()))
        missing = _unset_variables(raw)
        if missing:
            raise ConfigError(f"{path.name} needs environment variables {', '.join(missing)}")
        warnings.filterwarnings("ignore", module="feast")
        from feast import FeatureStore, RepoConfig  # noqa: PLC0415

        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            repo_config = RepoConfig(repo_path=data_dir, **raw)
        except Exception as err:  # pydantic's ValidationError, as Feast raises it
            raise ConfigError(f"{path.name}: {err}") from err
        return cls(FeatureStore(repo_path=str(data_dir), config=repo_config), data_dir)

    # -- definitions ---------------------------------------------------------------------

    def source_dir(self, source: str) -> Path:
        return self.data_dir / "sources" / source

    def apply(self) -> None:
        """Register the repository's objects (feature services of model versions are kept)."""
        from feature_repo.definitions import OBJECTS  # noqa: PLC0415

        for name, schema in SOURCE_SCHEMAS.items():
            empty = self.source_dir(name) / EMPTY
            if not empty.exists():
                write_table(schema.empty_table(), empty)
        self.store.apply(OBJECTS, partial=True)
        self._plans.clear()

    # -- writing the offline store -------------------------------------------------------

    def write(self, source: str, table: pa.Table, name: str) -> int:
        """Write ``table`` as file ``name`` of ``source`` (replacing one of that name); returns its rows."""
        schema = SOURCE_SCHEMAS[source]
        write_table(table.select(schema.names).cast(schema), self.source_dir(source) / f"{name}.parquet")
        return len(table)

    def read(self, source: str, columns: list[str] | None = None) -> pa.Table:
        files = sorted(self.source_dir(source).glob("*.parquet"))
        schema = SOURCE_SCHEMAS[source]
        if not files:
            return schema.empty_table().select(columns or schema.names)
        return pa.concat_tables(pq.read_table(f, columns=columns, schema=schema) for f in files)

    def push_labels(self, labels: pd.DataFrame, source: str, at: datetime | None = None) -> int:
        """Record labels as given at ``at`` (now): offline as one file, then online through the push source.

        ``labels`` has ``post_id`` and ``label``. The file goes first, so a push that
        fails leaves the offline record, which the next materialisation carries online.
        """
        if labels.empty:
            return 0
        from feast.data_source import PushMode  # noqa: PLC0415

        at = at or datetime.now(UTC)
        table = pa.table(
            {
                "post_id": labels["post_id"].astype(str).tolist(),
                "labelled_at": pa.array([at] * len(labels), TIMESTAMP),
                "recorded_at": pa.array([datetime.now(UTC)] * len(labels), TIMESTAMP),
                "label": labels["label"].astype(str).tolist(),
                "label_source": [source] * len(labels),
            }
        )
        digest = hashlib.sha256(pd.util.hash_pandas_object(labels[["post_id", "label"]], index=False).values)
        self.write("post_label", table, f"{at:%Y%m%dT%H%M%S}-{digest.hexdigest()[:12]}")
        self.store.push("post_label_push", table.to_pandas(), to=PushMode.ONLINE)
        return len(table)

    # -- reading -------------------------------------------------------------------------

    def historical(self, entities: pd.DataFrame, features: Sequence[str] | str) -> pd.DataFrame:
        """``entities`` (join keys and ``event_timestamp``) with the features known at each row's time.

        ``features`` is a list of ``view:feature`` references or a feature service name.
        Rows come back one for one, in the caller's order and index; a feature with no
        value at a row's time is null there.
        """
        if "event_timestamp" not in entities.columns:
            raise FeatureError("the entity frame needs an event_timestamp column (when each row happened)")
        plan = self._plan(features)
        _check_keys(entities.columns, plan)
        frame = entities.reset_index(drop=True)
        stamps = pd.to_datetime(frame["event_timestamp"], utc=True)
        if stamps.isna().any():
            raise FeatureError(f"{int(stamps.isna().sum())} entity rows have no event_timestamp")
        columns = {}
        for view, names in plan.values():
            columns.update(self._historical_view(view, names, frame, stamps))
        values = pd.DataFrame({name: column.to_numpy() for name, column in columns.items()}, index=entities.index)
        return pd.concat([entities, values], axis=1)

    def _historical_view(self, view, names: list[str], frame: pd.DataFrame, stamps: pd.Series) -> dict:
        """One view's features for every row of ``frame`` (positional), nulls where none was known.

        Only rows whose key the view's source holds go to Feast: its Dask engine cannot
        sort the nulls a key without data would bring into the join.
        """
        keys = view.join_keys
        held = self.read(Path(view.batch_source.path).name, columns=keys)
        wanted = frame[keys].astype(str)
        mask = np.ones(len(frame), bool)
        for key in keys:
            mask &= wanted[key].isin(set(held.column(key).to_pylist())).to_numpy()
        out = {n: pd.Series([None] * len(frame), dtype=object) for n in names}
        if not mask.any():
            return out
        asked = wanted[mask].assign(event_timestamp=stamps[mask].to_numpy())
        # Feast answers each (key, time) once, dropping repeats of a pair: ask each pair once, hand it to every row
        query = asked.drop_duplicates().reset_index(drop=True)
        query[ROW] = np.arange(len(query))
        refs = [f"{view.name}:{n}" for n in names]
        found = self.store.get_historical_features(entity_df=query, features=refs).to_df()
        if found[ROW].duplicated().any():
            raise FeatureError(f"Feast returned one entity row twice for {view.name}: its source has duplicate rows")
        found = found.set_index(ROW)
        pair = np.full(len(frame), -1)  # each row's query row; -1: not asked (reads null)
        pair[mask] = asked.merge(query, how="left", on=[*keys, "event_timestamp"])[ROW].to_numpy()
        return {n: found[n].reindex(pair).reset_index(drop=True) for n in names}

    def online(self, features: Sequence[str] | str, rows: dict[str, Sequence[str]]) -> pd.DataFrame:
        """The newest materialised values for each entity row (in order); unknown keys read null."""
        plan = self._plan(features)
        _check_keys(rows.keys(), plan)
        refs = [f"{view.name}:{n}" for view, names in plan.values() for n in names]
        return self.store.get_online_features(features=refs, entity_rows=rows).to_df()

    def materialize(self, end: datetime | None = None, views: Sequence[str] | None = None) -> list[str]:
        """Bring the online store up to ``end`` (now), each view from where its last materialisation stopped.

        A view never materialised starts at its oldest row: Feast's own first window
        (``now - ttl``) would skip data whose event times lie in the past, as a
        replayed or simulated feed's do. Returns the views materialised.
        """
        end = end or datetime.now(UTC)
        names = list(views) if views else [v.name for v in self.store.list_feature_views() if v.online]
        for name in names:
            view = self.view(name)
            if view.materialization_intervals:
                self.store.materialize_incremental(end_date=end, feature_views=[name])
            else:
                self.store.materialize(start_date=EPOCH, end_date=end, feature_views=[name])
        return names

    def forget(self, user_ids: Sequence[str], post_ids: Sequence[str]) -> int:
        """Delete the online rows of these users and posts from every view keyed by them; returns how many
        rows (SQLite) or entity hashes (Redis) went. Feast has no delete of its own: the online store's tables are
        addressed as Feast names them (``compute_table_id``, ``_redis_key``). The offline sources are files,
        scrubbed with the rest of the state (components.privacy.forget)."""
        from feast.infra.key_encoding_utils import serialize_entity_key  # noqa: PLC0415
        from feast.infra.online_stores.helpers import _redis_key, compute_table_id  # noqa: PLC0415
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey  # noqa: PLC0415
        from feast.protos.feast.types.Value_pb2 import Value  # noqa: PLC0415

        config = self.store.config
        values = {"user_id": sorted(set(user_ids)), "post_id": sorted(set(post_ids))}
        keys = {
            k: [EntityKey(join_keys=[k], entity_values=[Value(string_val=v)]) for v in vs] for k, vs in values.items()
        }
        kind = config.online_store.type
        if kind == "redis":
            from feast.infra.online_stores.redis import RedisOnlineStore  # noqa: PLC0415

            client = RedisOnlineStore()._get_client(config.online_store)
            names = [
                _redis_key(config.project, k, config.entity_key_serialization_version)
                for ks in keys.values()
                for k in ks
            ]
            return int(client.delete(*names)) if names else 0
        if kind != "sqlite":
            raise FeatureError(f"forgetting online rows is not supported for a {kind} online store")
        path = Path(config.online_store.path)
        path = path if path.is_absolute() else self.data_dir / path
        if not path.exists():
            return 0
        removed = 0
        db = sqlite3.connect(path, timeout=30)
        try:
            db.execute("PRAGMA secure_delete = ON")  # freed pages are zeroed: the rows cannot be read back
            with db:
                for view in self.store.list_feature_views():
                    join = [c.name for c in view.entity_columns]
                    if len(join) != 1 or join[0] not in keys or not keys[join[0]]:
                        continue
                    table = compute_table_id(
                        config.project, view, config.registry.enable_online_feature_view_versioning
                    )
                    blobs = [serialize_entity_key(k, config.entity_key_serialization_version) for k in keys[join[0]]]
                    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
                    if exists.fetchone():
                        marks = ",".join("?" * len(blobs))
                        removed += db.execute(f'DELETE FROM "{table}" WHERE entity_key IN ({marks})', blobs).rowcount
        finally:
            db.close()
        return removed

    # -- feature services: one per model version ------------------------------------------

    def register_service(self, name: str, features: Sequence[str], tags: dict[str, str] | None = None) -> None:
        """Save the features a model version was trained with as feature service ``name``.

        A service never changes: registering the same name with other features fails.
        """
        from feast import FeatureService  # noqa: PLC0415

        refs = list(features)
        existing = self.service_features(name)
        if existing is not None:
            if existing != refs:
                raise FeatureError(f"feature service {name} already names {existing}, not {refs}")
            return
        projections = [view[names] for view, names in self._plan(tuple(refs)).values()]
        service = FeatureService(name=name, features=projections, tags=dict(tags or {}))
        self.store.apply([service], partial=True)
        self._plans.pop(name, None)

    def register_model(self, version: int, snapshot: str, inputs: Sequence[str] = ()) -> str:
        """The feature service of model version ``version``: ``tagger_v<version>``, naming ``inputs``.

        An image-only tagger reads no stored feature: its service is empty and says so.
        """
        name = f"tagger_v{version}"
        tags = {"model_version": str(version), "snapshot": snapshot, "inputs": "image+features" if inputs else "image"}
        self.register_service(name, inputs, tags)
        return name

    def service_features(self, name: str) -> list[str] | None:
        """The ``view:feature`` references of service ``name``, in order; None if there is none."""
        from feast.errors import FeatureServiceNotFoundException  # noqa: PLC0415

        try:
            service = self.store.get_feature_service(name, allow_cache=False)
        except FeatureServiceNotFoundException:
            return None
        return [f"{p.name_to_use()}:{f.name}" for p in service.feature_view_projections for f in p.features]

    def services(self) -> list[str]:
        return sorted(s.name for s in self.store.list_feature_services())

    # -- helpers ---------------------------------------------------------------------------

    def view(self, name: str):
        from feast.errors import FeatureViewNotFoundException  # noqa: PLC0415

        try:  # the cached registry first: a reload costs about a millisecond per lookup
            return self.store.get_feature_view(name, allow_registry_cache=True)
        except FeatureViewNotFoundException:
            pass
        try:
            return self.store.get_feature_view(name, allow_registry_cache=False)
        except FeatureViewNotFoundException as err:
            raise FeatureError(f"no feature view {name}; run `trendloop features apply`") from err

    def _plan(self, features: Sequence[str] | str) -> dict[str, tuple[object, list[str]]]:
        """``features`` (references or a service name) as {view name: (FeatureView, feature names)}, checked."""
        key = features if isinstance(features, str) else tuple(features)
        if key not in self._plans:
            if isinstance(features, str):
                refs = self.service_features(features)
                if refs is None:
                    raise FeatureError(f"no feature service {features}")
            else:
                refs = list(features)
            plan = {}
            for name, names in _by_view(refs).items():
                view = self.view(name)
                unknown = [n for n in names if n not in {f.name for f in view.features}]
                if unknown:
                    raise FeatureError(f"feature view {name} has no feature {', '.join(unknown)}")
                plan[name] = (view, names)
            self._plans[key] = plan
        return self._plans[key]


def _check_keys(columns: Iterable[str], plan: dict[str, tuple[object, list[str]]]) -> None:
    keys = {key for view, _ in plan.values() for key in view.join_keys}
    missing = sorted(keys - set(columns))
    if missing:
        raise FeatureError(f"the entity rows need {', '.join(missing)} for {', '.join(sorted(plan))}")


def split_ref(ref: str) -> tuple[str, str]:
    view, sep, feature = ref.partition(":")
    if not sep or not view or not feature:
        raise FeatureError(f"a feature reference is view:feature, not {ref!r}")
    return view, feature


def _by_view(refs: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for ref in refs:
        view, feature = split_ref(ref)
        groups.setdefault(view, []).append(feature)
    return groups


def _unset_variables(raw: object) -> list[str]:
    """``${NAME}`` placeholders that ``expandvars`` left in place: their variable is unset."""
    if isinstance(raw, dict):
        return [v for value in raw.values() for v in _unset_variables(value)]
    if isinstance(raw, str) and "${" in raw:
        return [raw[raw.index("${") + 2 : raw.index("}", raw.index("${"))]]
    return []
