"""Batch scoring before serving exists: the champion's predictions over stored posts, logged as traffic.

``time`` is each post's creation time, so a window of days in the log is a window of
traffic; a day's file is rewritten whole, so scoring a day again never duplicates a record.
"""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.data.posts import TIMESTAMP
from components.data.predlog import BATCH, PREDICTION_SCHEMA, PredictionLog
from components.data.snapshot import Snapshot, Store
from components.model.datasets import decode_images
from components.model.predict import Predictor


def log_batch_predictions(
    store: Store,
    snapshot: Snapshot,
    predictor: Predictor,
    version: int,
    log: PredictionLog,
    since: datetime | None = None,
    until: datetime | None = None,
    arm: str = "champion",
) -> int:
    """Predict the snapshot's posts created in ``[since, until)`` with ``predictor`` and log them.

    Days already logged for this version with the same posts are skipped. Returns the
    number of records written.
    """
    posts = snapshot.manifest().select(["post_id", "user_id", "created_at", "image"])
    all_days = pc.strftime(posts.column("created_at"), format="%Y-%m-%d")
    created = posts.column("created_at")
    in_window = pa.array(np.ones(len(posts), bool))
    if since is not None:
        in_window = pc.and_(in_window, pc.greater_equal(created, pa.scalar(since, TIMESTAMP)))
    if until is not None:
        in_window = pc.and_(in_window, pc.less(created, pa.scalar(until, TIMESTAMP)))
    batch = f"batch-v{version}"
    written = 0
    for day in sorted(pc.unique(all_days.filter(in_window)).to_pylist()):
        part = posts.filter(pc.equal(all_days, day))  # the whole day: its file is rewritten whole
        ids = part.column("post_id").to_pylist()
        if set(ids) <= log.batch_posts(day, batch):
            continue
        start = time.perf_counter()
        paths = [str(store.root / ref) for ref in part.column("image").to_pylist()]
        images = decode_images(paths, predictor.preprocessing)
        out = predictor.predict_base(images, part.select(["post_id", "user_id", "created_at"]).to_pandas())
        latency = 1000 * (time.perf_counter() - start) / max(len(ids), 1)
        records = pa.table(
            {
                "request_id": [f"{batch}-{p}" for p in ids],
                "post_id": ids,
                "user_id": part.column("user_id"),
                "arm": [arm] * len(ids),
                "model_version": [version] * len(ids),
                "predicted": out.predicted,
                "confidence": out.confidence.astype(np.float32),
                "probabilities": list(out.probabilities.astype(np.float32)),
                "embedding": list(out.embeddings.astype(np.float32)),
                "latency_ms": [latency] * len(ids),
                "time": part.column("created_at"),
                "experiment": pa.nulls(len(ids), pa.string()),
                "source": [BATCH] * len(ids),
            },
            schema=PREDICTION_SCHEMA,
        )
        written += log.write(records, batch)
    return written
