"""The labelling loop: select -> queue -> push to Label Studio -> (annotators) -> pull -> commit a snapshot.

Each step reads and writes the queue, so each can fail and be run again: a
selection never queues a post twice, a push never creates a second task for a
post (it asks Label Studio what it holds before importing), a pull never counts an
annotation twice, and a commit of the same labels gives the same snapshot.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from active_learning.consensus import Agreement, agreement, decide_all
from active_learning.queue import LabelQueue, QueuedPost
from active_learning.strategies import SelectionConfig, heuristic, select_batch
from components.data.snapshot import Snapshot, Store
from components.errors import LabelingError

if TYPE_CHECKING:  # the model, pandas and the Label Studio client load in the steps that use them
    import pandas as pd

    from active_learning.labelstudio import LabelingProject
    from components.data.ingest import RelabelReport
    from components.model.predict import Predictor
    from components.model.registry import Registry


@dataclass(frozen=True)
class SelectReport:
    batch: str
    pool: int  # unlabelled posts that were candidates
    queued: int  # posts added to the queue
    active: int
    control: int
    strategy: str
    mean_score: dict[str, float]  # arm -> mean acquisition score of its picks


def unlabelled_pool(
    store: Store, posts: pd.DataFrame, exclude: set[str], since: datetime | None = None, until: datetime | None = None
) -> pd.DataFrame:
    """The manifest's unlabelled posts not in ``exclude``: post_id, created_at, image, caption, hashtags, path."""
    import pandas as pd  # noqa: PLC0415

    keep = posts.label.isna() & ~posts.post_id.isin(exclude)
    if since is not None:
        keep &= posts.created_at >= pd.Timestamp(since)
    if until is not None:
        keep &= posts.created_at < pd.Timestamp(until)
    pool = posts[keep].drop(columns="label").reset_index(drop=True)
    pool["path"] = [str(store.root / ref) for ref in pool.image]
    return pool


def labelled_embeddings(store: Store, posts: pd.DataFrame, predictor: Predictor, limit: int, seed: int) -> np.ndarray:
    """Embeddings of up to ``limit`` of the manifest's labelled posts (sampled): what the model has been taught."""
    from components.model.datasets import decode_images  # noqa: PLC0415

    posts = posts[posts.label.notna()]
    if limit == 0 or posts.empty:
        return np.zeros((0, predictor.tagger.embedding_dim), np.float32)
    posts = posts.sample(n=min(limit, len(posts)), random_state=seed)
    base = decode_images([str(store.root / ref) for ref in posts.image], predictor.preprocessing)
    return predictor.predict_base(base, posts).embeddings


def select_posts(
    store: Store,
    snapshot: Snapshot,
    predictor: Predictor,
    model_version: str,
    queue: LabelQueue,
    config: SelectionConfig,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    budget: int | None = None,
) -> SelectReport:
    """Score the snapshot's unlabelled posts with ``predictor`` and queue a batch for annotators."""
    import pandas as pd  # noqa: PLC0415

    from active_learning.pool import score_pool  # noqa: PLC0415

    manifest = snapshot.manifest().select(["post_id", "user_id", "created_at", "image", "caption", "hashtags", "label"])
    posts = manifest.to_pandas()
    pool = unlabelled_pool(store, posts, queue.queued_ids(), since, until)
    stamp = datetime.now(UTC)
    batch = (
        "sel-"
        + stamp.strftime("%Y%m%dT%H%M%SZ")
        + "-"
        + hashlib.sha256(",".join(pool.post_id).encode()).hexdigest()[:6]
    )
    if pool.empty:
        return SelectReport(batch, 0, 0, 0, 0, config.strategy, {})
    scored = score_pool(
        predictor,
        list(pool.path),
        list(pool.post_id),
        heuristic(config.strategy, config.seed),
        mc_samples=config.mc_samples,
        mc_dropout=config.mc_dropout,
        posts=pool,
    )
    diverse = config.diversity and config.strategy != "random"
    centers = labelled_embeddings(store, posts, predictor, config.max_centers, config.seed) if diverse else None
    picked = select_batch(scored.scores, scored.predictions.embeddings, config, budget, centers)
    predicted, confidence = scored.predictions.predicted, scored.predictions.confidence
    posts = []
    for i, arm in zip(picked.indices, picked.arms, strict=True):
        row = pool.iloc[int(i)]
        posts.append(
            QueuedPost(
                post_id=row.post_id,
                image=row.image,
                batch=batch,
                arm=arm,
                strategy=config.strategy + ("+kcenter" if diverse else ""),
                score=float(scored.scores[i]),
                predicted=predicted[i],
                confidence=float(confidence[i]),
                model_version=model_version,
                caption=row.caption,
                hashtags=tuple(row.hashtags if row.hashtags is not None else ()),
                created_at=row.created_at.isoformat() if pd.notna(row.created_at) else None,
            )
        )
    added = queue.add(posts)
    arms = Counter(picked.arms)
    means = {
        arm: float(np.mean([scored.scores[i] for i, a in zip(picked.indices, picked.arms, strict=True) if a == arm]))
        for arm in arms
    }
    return SelectReport(batch, len(pool), added, arms.get("active", 0), arms.get("control", 0), config.strategy, means)


@dataclass(frozen=True)
class PushReport:
    project_id: int | None
    pushed: int  # tasks created now
    found: int  # posts Label Studio held already (an earlier push whose answer was lost)
    pending: int  # still queued locally


def known_labels(store: Store, registry: Registry) -> tuple[str, ...]:
    """The labels the loop knows: the champion's, or HEAD's before there is one. An annotator's answer
    outside them names a new class."""
    from components.model.registry import CHAMPION  # noqa: PLC0415

    if registry.alias(CHAMPION) is not None:
        return registry.load_predictor(CHAMPION).labels
    head = store.head()
    return tuple(sorted(head.labels)) if head else ()


def offered_labels(store: Store, model_labels: Sequence[str]) -> list[str]:
    """The labels annotators are offered: the model's, then any other HEAD holds (classes annotators named)."""
    head = store.head()
    return list(dict.fromkeys([*model_labels, *(sorted(head.labels) if head else [])]))


def task_of(post: QueuedPost, image_url: str) -> dict:
    """A Label Studio task: the post's data and the model's prediction as a pre-annotation."""
    from active_learning.labelstudio import choice_result  # noqa: PLC0415

    prediction = {
        "model_version": post.model_version,
        "score": post.confidence,  # "Uncertainty sampling" shows the lowest first
        "result": choice_result(post.predicted) if post.predicted else [],
    }
    return {
        "data": {
            "image": image_url.format(image=post.image),
            "post_id": post.post_id,
            "caption": post.caption or "",
            "hashtags": " ".join(t if t.startswith("#") else f"#{t}" for t in post.hashtags),
            "batch": post.batch,
            "arm": post.arm,
            "acquisition_score": post.score,
        },
        "predictions": [prediction] if post.predicted else [],
    }


def push_queued(
    queue: LabelQueue,
    project: LabelingProject,
    labels: Sequence[str],
    *,
    image_url: str,
    overlap: int = 1,
    local_files: Path | None = None,
    chunk: int = 500,
) -> PushReport:
    """Send every pending post to Label Studio as a task; on failure what was not sent stays pending.

    Raises ``LabelingError`` (with how many posts stay queued) when Label Studio is
    down or refuses; the posts it did take before that are marked pushed.
    """
    pending = queue.pending()
    if not pending:
        return PushReport(None, 0, 0, 0)
    newest = max((p for p in pending if p.model_version), key=lambda p: p.queued_at, default=None)
    wanted = list(dict.fromkeys([*labels, *(p.predicted for p in pending if p.predicted)]))
    pushed = found = 0
    project_id = None
    try:
        project_id = project.ensure(wanted, overlap=overlap, local_files=local_files)
        for start in range(0, len(pending), chunk):
            part = pending[start : start + chunk]
            held = project.tasks_for([p.post_id for p in part])
            queue.mark_pushed(held, project_id)
            found += len(held)
            todo = [p for p in part if p.post_id not in held]
            if todo:
                project.import_tasks([task_of(p, image_url) for p in todo])
                made = project.tasks_for([p.post_id for p in todo])
                queue.mark_pushed(made, project_id)
                pushed += len(made)
        if newest is not None:
            project.set_model_version(newest.model_version)
    except LabelingError as err:
        left = len(pending) - pushed - found
        raise LabelingError(f"{str(err).rstrip('.')}; {left} posts stay queued for the next push") from None
    return PushReport(project_id, pushed, found, len(pending) - pushed - found)


@dataclass(frozen=True)
class PullReport:
    tasks: int  # annotated tasks read
    annotations: int  # annotations read
    new_annotations: int
    decided: int  # posts with a label by majority vote (all pulls so far)
    undecided: dict[str, int]  # status -> posts (tied, unnamed, waiting)
    new_classes: dict[str, int]  # label named by annotators that the model does not know -> posts
    agreement: Agreement
    accuracy: dict[str, float] = field(default_factory=dict)  # arm -> the model's accuracy on its decided posts


def pull_labels(
    queue: LabelQueue, project: LabelingProject, known: Sequence[str], min_votes: int = 1, page_size: int = 100
) -> PullReport:
    """Read annotations made since the last pull and decide each annotated post's label.

    The annotations and the pull cursor are stored in one transaction at the end, so
    a pull cut off by Label Studio going down stores nothing and the next pull starts
    from the same place.
    """
    from active_learning.labelstudio import annotations_of, ls_time, parse_annotation  # noqa: PLC0415

    queued = {p.post_id: p for p in queue.posts()}
    cursor = queue.get("pull_cursor")
    newest, tasks, pulled = cursor, 0, []
    for task in project.annotated_tasks(since=cursor, page_size=page_size):
        post_id = (task.data or {}).get("post_id")
        if post_id is None:
            continue  # a task someone else made in the project: not ours to decide
        tasks += 1
        pulled.extend(parse_annotation(task.id, post_id, raw) for raw in annotations_of(task))
        stamp = ls_time(getattr(task, "updated_at", None))
        newest = max(newest or stamp, stamp) if stamp else newest
    new = queue.record_annotations(pulled, newest)
    everything = queue.annotations()
    decisions = decide_all(everything, known, min_votes)
    queue.save_decisions(decisions)
    decided = [d for d in decisions if d.status == "decided"]
    right: dict[str, list[bool]] = {}
    for d in decided:
        post = queued.get(d.post_id)
        if post is not None and post.predicted is not None:
            right.setdefault(post.arm, []).append(post.predicted == d.label)
    return PullReport(
        tasks=tasks,
        annotations=len(pulled),
        new_annotations=new,
        decided=len(decided),
        undecided=dict(Counter(d.status for d in decisions if d.status != "decided")),
        new_classes=dict(Counter(d.label for d in decided if d.new_class)),
        agreement=agreement(everything),
        accuracy={arm: float(np.mean(v)) for arm, v in sorted(right.items())},
    )


@dataclass(frozen=True)
class LabelCheck:
    """Which decided labels may go into training, and why the others may not."""

    passed: dict[str, str]  # post_id -> label
    dropped: dict[str, int]  # reason -> posts


def check_labels(queue: LabelQueue, snapshot: Snapshot, min_agreement: float = 0.0) -> LabelCheck:
    """The decided labels no snapshot holds yet whose post ``snapshot`` holds and whose annotators agreed enough.

    ``min_agreement``: the least share of a post's votes its label must have (one vote: 1.0).
    """
    uncommitted = queue.uncommitted()
    held = set(snapshot.manifest().column("post_id").to_pylist())
    passed: dict[str, str] = {}
    dropped: Counter[str] = Counter()
    for d in queue.decisions():
        if d.status != "decided" or uncommitted.get(d.post_id) != d.label:
            continue  # undecided, or committed by an earlier sync
        if d.post_id not in held:
            dropped["post not in the snapshot"] += 1
        elif d.agreement is not None and d.agreement < min_agreement:
            dropped[f"agreement below {min_agreement:.2f}"] += 1
        else:
            passed[d.post_id] = d.label
    return LabelCheck(passed, dict(dropped))


def commit_labels(store: Store, queue: LabelQueue, labels: dict[str, str] | None = None) -> RelabelReport:
    """Put decided labels no snapshot holds yet into a new snapshot (``label_source`` annotators).

    ``labels`` (post id -> label) narrows the commit to labels that passed checks; by
    default every uncommitted decided label goes in.
    """
    from components.data.ingest import RelabelReport, relabel  # noqa: PLC0415

    uncommitted = queue.uncommitted()
    labels = uncommitted if labels is None else {p: v for p, v in labels.items() if uncommitted.get(p) == v}
    if not labels:
        head = store.head()
        return RelabelReport(head.id if head else None, False, [], 0, [])
    digest = hashlib.sha256("".join(f"{p}={labels[p]}\n" for p in sorted(labels)).encode()).hexdigest()[:12]
    report = relabel(store, labels, "annotators", {"batch": f"labels-{digest}", "uri": str(queue.path)})
    if report.snapshot is not None:
        missing = set(report.missing)
        queue.mark_committed([p for p in labels if p not in missing], report.snapshot)
    return report
