"""``ingest``: bring a source's posts into the store and commit them as a new snapshot.

Each image is validated and normalised (``validate.validate_image``) in worker
processes; a bad file is copied to quarantine with its reason and the rest of the
batch goes on. A post whose image is already stored (same pixels) or that the
current snapshot already holds is a duplicate and adds nothing, so ingesting the
same files twice leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from components.data.posts import ENGAGEMENT, SNAPSHOT_SCHEMA
from components.data.pseudonyms import Pseudonyms
from components.data.snapshot import Store
from components.data.sources import BadRecord, Candidate, Source, read_source
from components.data.validate import ImageLimits, Rejection, validate_image
from components.errors import SnapshotError, SourceError
from components.files import write_atomic, write_rows

# Rejection reasons ingestion adds to validate.REASONS.
RECORD_REASONS = (
    "bad_record",  # the source's record is not a post (no id, unreadable date, not JSON)
    "missing_file",  # the record names an image file that does not exist
    "unreadable",  # the file exists but cannot be read (permissions, I/O error)
    "post_id_conflict",  # the post id is taken by a post with a different image
)
Progress = Callable[[int, int], None]  # (done, total)
QUARANTINE_COLUMNS = ("post", "path", "reason", "detail", "user_id", "quarantined_as")  # rejections.parquet
DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class Checked:
    """What a worker reports for an accepted image; its bytes are already in the store."""

    sha256: str
    width: int
    height: int
    fixes: tuple[str, ...]


@dataclass
class IngestReport:
    run_id: str
    kind: str  # simulator, folder or manifest
    source: str
    offered: int = 0  # posts the source offered (inside the time window)
    accepted: int = 0  # new posts added
    duplicates: int = 0  # posts whose image, or whole post, was there already
    relabelled: int = 0  # posts already in the snapshot whose label changed
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> files
    skipped: int = 0  # non-image files in a folder source
    forgotten: int = 0  # posts of users who asked to be forgotten: left out
    fixes: dict[str, int] = field(default_factory=dict)  # normalisation -> images it changed
    snapshot: str | None = None  # the snapshot HEAD points to afterwards
    new_snapshot: bool = False
    quarantine: str | None = None  # folder with the rejected files and rejections.parquet
    seconds: float = 0.0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def read_labels(path: Path) -> dict[str, str]:
    """``post_id -> label`` from a Parquet file or folder, CSV or JSONL with those two columns."""
    if not path.exists():
        raise SourceError(f"no such labels file: {path}")
    try:
        if path.is_dir() or path.suffix == ".parquet":
            frame = pd.read_parquet(path, columns=["post_id", "label"])
        elif path.suffix == ".csv":
            frame = pd.read_csv(path, usecols=["post_id", "label"], dtype=str)
        else:
            frame = pd.read_json(path, lines=True, dtype=False)[["post_id", "label"]]
    except (OSError, ValueError, KeyError) as err:
        raise SourceError(f"{path}: cannot read labels (need columns post_id, label): {err}") from None
    frame = frame.dropna()
    return dict(zip(frame["post_id"].astype(str), frame["label"].astype(str), strict=True))


def _check(path: Path, store_root: Path, limits: ImageLimits) -> Checked | Rejection:
    """Validate one file and store its normalised image (runs in a worker process)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return Rejection("unreadable", f"{type(err).__name__}: {err.strerror or err}")
    try:
        result = validate_image(data, limits)
    except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not stop the batch
        return Rejection("corrupt", f"validation failed: {type(err).__name__}: {err}")
    if isinstance(result, Rejection):
        return result
    Store(store_root).put_image(result.sha256, result.data)  # a full disk, unlike a bad file, stops the run
    return Checked(result.sha256, result.width, result.height, result.fixes)


def _check_all(paths: list[Path], store_root: Path, limits: ImageLimits, workers: int) -> Iterator[Checked | Rejection]:
    if workers <= 1 or len(paths) < 2 * workers:
        yield from (_check(p, store_root, limits) for p in paths)
        return
    chunk = max(1, min(32, len(paths) // (4 * workers)))  # small batches of big photos still spread out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_check, paths, [store_root] * len(paths), [limits] * len(paths), chunksize=chunk)


def ingest(
    source_path: Path,
    store: Store,
    pseudonyms: Pseudonyms,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    labels: dict[str, str] | None = None,
    label_source: str = "import",
    folder_labels: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    workers: int = 1,
    progress: Progress | None = None,
) -> IngestReport:
    """Ingest every post ``source_path`` offers and commit what is new as a snapshot.

    User ids are stored as their ``pseudonyms`` only; a forgotten user's posts are left out.
    ``labels`` (post id -> label) label the posts the source offers: new ones, and
    ones the current snapshot holds already (relabelled in the new snapshot).
    Returns the report; raises ``SourceError`` only when the source as a whole
    cannot be read. The three stages (read, check, commit) are also pipeline steps.
    """
    started = time.perf_counter()
    source = read_source(source_path, pseudonyms, folder_labels=folder_labels, since=since, until=until)
    outcomes = check_source(source, store, limits, workers, progress)
    return commit_checked(source, outcomes, store, labels=labels, label_source=label_source, started=started)


Outcome = Checked | Rejection | None  # None: a BadRecord, which has no image to check


def check_source(
    source: Source,
    store: Store,
    limits: ImageLimits = DEFAULT_LIMITS,
    workers: int = 1,
    progress: Progress | None = None,
) -> list[Outcome]:
    """Validate each candidate's image and store the accepted ones (content-addressed, so a retry adds nothing).

    Returns one outcome per record of ``source``, in order.
    """
    candidates = [r for r in source.records if isinstance(r, Candidate)]
    checked = _check_all([c.image_path for c in candidates], store.root, limits, workers)
    outcomes: list[Outcome] = []
    for done, record in enumerate(source.records, 1):
        outcomes.append(next(checked) if isinstance(record, Candidate) else None)
        if progress:
            progress(done, len(source.records))
    return outcomes


def commit_checked(
    source: Source,
    outcomes: list[Outcome],
    store: Store,
    *,
    labels: dict[str, str] | None = None,
    label_source: str = "import",
    started: float | None = None,
) -> IngestReport:
    """Deduplicate checked posts against HEAD, quarantine the rejected, and commit what is new as a snapshot."""
    started = time.perf_counter() if started is None else started
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    report = IngestReport(
        run_id, source.kind, source.uri, offered=len(source.records), skipped=source.skipped, forgotten=source.forgotten
    )
    # post id -> (label, who gave it); the labels argument wins over labels a source carries
    given: dict[str, tuple[str, str]] = {pid: (label, label_source) for pid, label in (labels or {}).items()}

    head = store.head()
    head_rows = head.manifest().to_pylist() if head else []
    head_index = {row["post_id"]: n for n, row in enumerate(head_rows)}
    owner_of_image = {row["image_sha256"]: row["post_id"] for row in head_rows}

    accepted: list[dict] = []
    rejections: list[dict] = []
    offered: dict[str, str | None] = {}  # post id -> image hash (None if refused) offered so far
    fixes: Counter[str] = Counter()
    for record, outcome in zip(source.records, outcomes, strict=True):
        if isinstance(record, BadRecord):
            rejections.append(_rejection(record.where, None, record.reason, record.detail))
            continue
        if isinstance(outcome, Rejection):
            rejections.append(
                _rejection(record.post_id, record.image_path, outcome.reason, outcome.detail, record.user_id)
            )
        elif record.post_id in head_index:
            if head_rows[head_index[record.post_id]]["image_sha256"] != outcome.sha256:
                rejections.append(
                    _rejection(
                        record.post_id,
                        record.image_path,
                        "post_id_conflict",
                        "the current snapshot holds this post id with another image",
                        record.user_id,
                    )
                )
            else:
                report.duplicates += 1
                if record.label is not None:
                    given.setdefault(record.post_id, (record.label, record.label_source or label_source))
        elif record.post_id in offered and offered[record.post_id] != outcome.sha256:
            rejections.append(
                _rejection(
                    record.post_id,
                    record.image_path,
                    "post_id_conflict",
                    "the source offers this post id twice, with different images",
                    record.user_id,
                )
            )
        elif outcome.sha256 in owner_of_image:
            report.duplicates += 1  # same pixels as a post we hold: a repost adds nothing to learn from
        else:
            owner_of_image[outcome.sha256] = record.post_id
            fixes.update(outcome.fixes)
            accepted.append(_row(record, outcome, store, given.get(record.post_id)))
        offered.setdefault(record.post_id, None if isinstance(outcome, Rejection) else outcome.sha256)

    # labels reach the posts this source offers (new or held already), not the whole snapshot
    relabelled = _relabel(head_rows, head_index, {pid: v for pid, v in given.items() if pid in offered})
    report.accepted, report.relabelled = len(accepted), relabelled
    report.rejected = dict(Counter(r["reason"] for r in rejections).most_common())
    report.fixes = dict(fixes.most_common())
    if rejections:
        report.quarantine = str(_quarantine(store, run_id, rejections))
    if accepted or relabelled:
        batch = _batch_id(accepted, head_rows, relabelled)
        for row in accepted:
            row["source"] = batch
        sources = [
            {
                "batch": batch,
                "run": run_id,
                "kind": source.kind,
                "uri": source.uri,
                "added": len(accepted),
                "relabelled": relabelled,
            }
        ]
        snap, report.new_snapshot = store.commit(
            pa.Table.from_pylist(head_rows + accepted, schema=SNAPSHOT_SCHEMA), head.id if head else None, sources
        )
        report.snapshot = snap.id
    else:
        report.snapshot = head.id if head else None
    report.seconds = time.perf_counter() - started
    _save_report(store, report)
    return report


def _row(record: Candidate, image: Checked, store: Store, given: tuple[str, str] | None) -> dict:
    label, label_source = given or (record.label, record.label_source)
    return {
        "post_id": record.post_id,
        "user_id": record.user_id,
        "created_at": record.created_at,
        "image_sha256": image.sha256,
        "image": store.image_ref(image.sha256),
        "width": image.width,
        "height": image.height,
        "caption": record.caption,
        "hashtags": list(record.hashtags),
        **{k: record.engagement.get(k) for k in ENGAGEMENT},
        "label": label,
        "label_source": label_source if label is not None else None,
        "source": None,
    }


def _relabel(rows: list[dict], index: dict[str, int], given: dict[str, tuple[str, str]]) -> int:
    """Apply ``given`` labels to posts the snapshot already holds, in place; how many changed."""
    changed = 0
    for post_id, (label, label_source) in given.items():
        n = index.get(post_id)
        if n is not None and rows[n]["label"] != label:
            rows[n] = {**rows[n], "label": label, "label_source": label_source}
            changed += 1
    return changed


def _batch_id(accepted: list[dict], head_rows: list[dict], relabelled: int) -> str:
    """A deterministic id for what this run adds: the same files give the same batch id."""
    digest = hashlib.sha256()
    for row in sorted(accepted, key=lambda r: r["post_id"]):
        digest.update(f"{row['post_id']}:{row['image_sha256']}:{row['label']}\n".encode())
    digest.update(f"relabelled:{relabelled}:{len(head_rows)}".encode())
    return "b-" + digest.hexdigest()[:12]


def _rejection(post: str, path: Path | None, reason: str, detail: str, user_id: str | None = None) -> dict:
    # the poster's pseudonym: forgetting a user removes their quarantined files too
    return {"post": post, "path": str(path) if path else None, "reason": reason, "detail": detail, "user_id": user_id}


def _quarantine(store: Store, run_id: str, rejections: list[dict]) -> Path:
    """Copy each rejected file aside, untouched, with a table of reasons beside them."""
    folder = store.root / "quarantine" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    for n, item in enumerate(rejections, 1):
        item["quarantined_as"] = None
        src = Path(item["path"]) if item["path"] else None
        if src is not None and src.is_file():
            dest = folder / f"{n:05d}-{src.name}"
            try:
                write_atomic(dest, src.read_bytes())
                item["quarantined_as"] = dest.name
            except OSError:
                pass  # unreadable after all: the reason table still records it
    schema = pa.schema([(k, pa.string()) for k in QUARANTINE_COLUMNS])
    write_rows(rejections, schema, folder / "rejections.parquet")
    return folder


def _save_report(store: Store, report: IngestReport) -> None:
    write_atomic(store.root / "ingests" / f"{report.run_id}.json", json.dumps(asdict(report), indent=2))


@dataclass(frozen=True)
class RelabelReport:
    snapshot: str | None  # HEAD afterwards
    new_snapshot: bool
    relabelled: list[str]  # post ids whose label changed
    unchanged: int  # posts that already carried the label
    missing: list[str]  # post ids HEAD does not hold


def relabel(store: Store, labels: dict[str, str], label_source: str, source: dict) -> RelabelReport:
    """Commit ``labels`` (post id -> label) onto HEAD's posts as a new snapshot.

    Posts HEAD does not hold are reported, not added. The same labels committed twice
    give the same snapshot (content-addressed), so a retried commit duplicates nothing.
    """
    head = store.head()
    if head is None:
        raise SnapshotError("there are no snapshots yet; ingest something first")
    rows = head.manifest().to_pylist()
    index = {row["post_id"]: n for n, row in enumerate(rows)}
    missing = sorted(p for p in labels if p not in index)
    changed = sorted(p for p, label in labels.items() if p in index and rows[index[p]]["label"] != label)
    _relabel(rows, index, {p: (labels[p], label_source) for p in changed})
    if not changed:
        return RelabelReport(head.id, False, [], len(labels) - len(missing), missing)
    sources = [{**source, "kind": label_source, "relabelled": len(changed)}]
    snap, new = store.commit(pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA), head.id, sources)
    return RelabelReport(snap.id, new, changed, len(labels) - len(missing) - len(changed), missing)
