"""How results look in a terminal: rich tables and progress bars for the CLI."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from components.ingest import IngestReport
from components.simulator.feed import DayResult, FeedSpec
from components.snapshot import Snapshot, SnapshotDiff

# Logs and CI are not terminals: give tables room rather than rich's 80-column fallback.
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class Bar:
    """A live progress bar: call it with ``(done, total)``, or ``advance(n)`` it."""

    def __init__(self, progress: Progress, task: TaskID, total: int | None):
        self._progress, self._task, self._total = progress, task, total

    def __call__(self, done: int, total: int | None = None) -> None:
        self._progress.update(self._task, completed=done, total=total if total is not None else self._total)

    def advance(self, n: int) -> None:
        self._progress.advance(self._task, n)


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Bar]:
    """A progress bar on stderr; on failure it vanishes so the error stays one line."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    ) as bar:
        try:
            yield Bar(bar, bar.add_task(description, total=total), total)
        except BaseException:
            bar.live.transient = True  # a failure prints its one line, not a half-filled bar
            raise


def simulation_table(spec: FeedSpec, results: list[DayResult]) -> Table:
    tags = spec.tags()
    table = Table(title=f"simulated feed (seed {spec.seed})", show_lines=False)
    table.add_column("day", justify="right")
    table.add_column("date")
    table.add_column("posts", justify="right")
    for tag in tags:
        table.add_column(tag, justify="right")
    table.add_column("filtered", justify="right")
    table.add_column("broken", justify="right")
    for r in results:
        table.add_row(
            str(r.day),
            spec.day_date(r.day).isoformat(),
            str(r.posts),
            *(str(r.labels.get(t, 0)) for t in tags),
            str(r.filtered),
            str(r.corrupt),
        )
    return table


def ingest_table(report: IngestReport) -> Table:
    table = Table(title=f"ingested {report.kind} {report.source}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rate = report.offered / report.seconds if report.seconds else 0.0
    table.add_row("offered", f"{report.offered}")
    table.add_row("accepted (new posts)", f"[green]{report.accepted}")
    table.add_row("duplicates", f"{report.duplicates}")
    if report.relabelled:
        table.add_row("relabelled", f"{report.relabelled}")
    table.add_row("rejected", f"[red]{report.rejected_total}" if report.rejected_total else "0")
    for reason, count in report.rejected.items():
        table.add_row(f"  {reason}", str(count))
    if report.skipped:
        table.add_row("skipped (not image files)", str(report.skipped))
    for fix, count in report.fixes.items():
        table.add_row(f"normalised: {fix}", str(count))
    table.add_row("snapshot", (report.snapshot or "none") + (" (new)" if report.new_snapshot else " (unchanged)"))
    if report.quarantine:
        table.add_row("quarantine", report.quarantine)
    table.add_row("time", f"{report.seconds:.1f} s ({rate:,.0f} posts/s)")
    return table


def snapshots_table(snapshots: list[Snapshot], head: str | None) -> Table:
    table = Table(title="snapshots")
    for col in ("id", "parent", "created (UTC)", "posts", "labelled", "sources"):
        table.add_column(col, justify="right" if col in ("posts", "labelled") else "left")
    for s in snapshots:
        mark = " [bold green]HEAD" if s.id == head else ""
        sources = ", ".join(f"{src.get('kind')}:{src.get('batch')}" for src in s.sources)
        table.add_row(
            s.id + mark,
            s.parent or "-",
            s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(s.posts),
            str(s.labelled),
            sources,
        )
    return table


def snapshot_table(s: Snapshot) -> Table:
    table = Table(title=f"snapshot {s.id}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("parent", s.parent or "-")
    table.add_row("created (UTC)", s.created_at.isoformat())
    table.add_row("posts", str(s.posts))
    table.add_row("labelled", str(s.labelled))
    for label, count in sorted(s.labels.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {label}", str(count))
    for src in s.sources:
        table.add_row(
            "source",
            f"{src.get('kind')} {src.get('uri')} (batch {src.get('batch')}, "
            f"+{src.get('added', 0)} posts, {src.get('relabelled', 0)} relabelled)",
        )
    table.add_row("manifest", str(s.path / "manifest.parquet"))
    return table


def diff_table(d: SnapshotDiff) -> Table:
    table = Table(
        title=f"{d.old} -> {d.new}: +{len(d.added)} posts, -{len(d.removed)} posts, {len(d.relabelled)} relabelled"
    )
    table.add_column("label")
    table.add_column(d.old, justify="right")
    table.add_column(d.new, justify="right")
    table.add_column("change", justify="right")
    for label, (a, b) in d.label_counts.items():
        table.add_row(label, str(a), str(b), f"{b - a:+d}")
    return table
