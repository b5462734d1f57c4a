"""How results look in a terminal: rich tables and progress bars for the CLI."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # what the tables show; imported by the code that makes it (the CLI's help stays light)
    from active_learning.labelstudio import LabelingProject
    from active_learning.loop import PullReport, PushReport, SelectReport
    from components.data.ingest import IngestReport, RelabelReport
    from components.data.snapshot import Snapshot, SnapshotDiff
    from components.features.sync import SyncReport
    from components.model.evaluate import Evaluation
    from components.model.gate import Verdict
    from components.model.registry import VersionInfo
    from components.model.train import EpochStats, Step, TrainResult
    from components.monitor.drift import DriftVerdict
    from components.monitor.emerging import EmergingCluster
    from components.monitor.triggers import Decision
    from components.simulator.feed import DayResult, FeedSpec
    from components.simulator.trends import NewClass
    from infra.labelstudio import LocalLabelStudio, ServerStatus
    from serving.experiment import Experiment
    from serving.traffic import DriveStats
    from trendloop.settings import Settings


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

    def describe(self, text: str, done: int, total: int) -> None:
        self._progress.update(self._task, completed=done, total=total, description=text)


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


class TrainingProgress:
    """One bar over all training steps, titled with the epoch, running loss and accuracy."""

    def __init__(self, bar: Bar, epochs: int):
        self._bar, self._epochs = bar, epochs
        self._last = ""

    def step(self, s: Step) -> None:
        self._bar.describe(
            f"epoch {s.epoch}/{self._epochs} loss {s.loss:.3f} acc {s.accuracy:.3f}{self._last}",
            done=(s.epoch - 1) * s.steps + s.step,
            total=s.steps * self._epochs,
        )

    def epoch(self, e: EpochStats) -> None:
        self._last = f" | val loss {e.val_loss:.3f} acc {e.val_accuracy:.3f}"


@contextmanager
def training_progress(epochs: int) -> Iterator[TrainingProgress]:
    with progress_bar("training") as bar:
        yield TrainingProgress(bar, epochs)


def training_table(result: TrainResult) -> Table:
    how = f"resumed after epoch {result.resumed_from}, " if result.resumed_from else ""
    table = Table(
        title=f"training on {result.device}: {how}best epoch {result.best_epoch}"
        f"{' (stopped early)' if result.stopped_early else ''}; examples "
        + ", ".join(f"{k} {v}" for k, v in result.examples.items())
    )
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "img/s", "seconds"):
        table.add_column(col, justify="right")
    for h in result.history:
        mark = " *" if h.epoch == result.best_epoch else ""
        table.add_row(
            f"{h.epoch}{mark}",
            f"{h.train_loss:.3f}",
            f"{h.train_accuracy:.3f}",
            f"{h.val_loss:.3f}",
            f"{h.val_accuracy:.3f}",
            f"{h.images_per_second:.0f}",
            f"{h.seconds:.1f}",
        )
    return table


def evaluation_table(challenger: Evaluation, champion: Evaluation | None) -> Table:
    table = Table(title=f"test split of snapshot {challenger.snapshot}")
    table.add_column("slice")
    table.add_column("posts", justify="right")
    for who in (challenger, champion):
        if who is not None:
            for metric in ("acc", "macro-F1", "ECE"):
                table.add_column(f"{who.model}\n{metric}", justify="right")
    rows = [("all", challenger.overall, champion.overall if champion else None)]
    rows += [
        (
            name + (" (newest)" if name == challenger.newest_slice else ""),
            m,
            champion.slices.get(name) if champion else None,
        )
        for name, m in challenger.slices.items()
    ]
    for name, ours, theirs in rows:
        cells = [name, str(ours.posts), f"{ours.accuracy:.3f}", f"{ours.macro_f1:.3f}", f"{ours.ece:.3f}"]
        if champion is not None:
            cells += [f"{theirs.accuracy:.3f}", f"{theirs.macro_f1:.3f}", f"{theirs.ece:.3f}"] if theirs else ["-"] * 3
        table.add_row(*cells)
    return table


def verdict_text(verdict: Verdict) -> str:
    against = f" against {verdict.champion}" if verdict.champion else ""
    head = "[green]PASSED[/green]" if verdict.passed else "[red]FAILED[/red]"
    return "\n".join([f"gate {head} for {verdict.challenger}{against}:", *(f"  {r}" for r in verdict.reasons)])


def versions_table(name: str, versions: list[VersionInfo]) -> Table:
    table = Table(title=f"registered model {name}")
    for col in ("version", "aliases", "created", "snapshot", "labels", "val acc", "test acc", "gate"):
        table.add_column(col, justify="right" if col in ("version", "val acc", "test acc") else "left")
    for v in versions:
        val, test = v.metrics.get("best_val_accuracy"), v.metrics.get("test_accuracy")
        table.add_row(
            str(v.version),
            ", ".join(v.aliases) or "-",
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            v.snapshot or "-",
            str(len(v.labels)),
            f"{val:.3f}" if val is not None else "-",
            f"{test:.3f}" if test is not None else "-",
            v.gate or "-",
        )
    return table


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
    if report.forgotten:
        table.add_row("left out (users forgotten)", str(report.forgotten))
    for fix, count in report.fixes.items():
        table.add_row(f"normalised: {fix}", str(count))
    table.add_row("snapshot", (report.snapshot or "none") + (" (new)" if report.new_snapshot else " (unchanged)"))
    if report.quarantine:
        table.add_row("quarantine", report.quarantine)
    table.add_row("time", f"{report.seconds:.1f} s ({rate:,.0f} posts/s)")
    return table


def audit_table(records: list[dict]) -> Table:
    table = Table(title="users forgotten")
    for col in ("record", "at (UTC)", "users", "posts", "removed", "retrain versions"):
        table.add_column(col)
    for r in records:
        removed = ", ".join(f"{n:,} {where}" for where, n in r["removed"].items()) or "nothing"
        at = r["at"][:19].replace("T", " ")
        table.add_row(r["id"], at, str(r["users"]), str(r["posts"]), removed, ", ".join(map(str, r["retrain"])) or "-")
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


def drift_table(verdict: DriftVerdict, title: str = "") -> Table:
    """One row per signal: its test, score against threshold, and what moved."""
    flag = "[red]DRIFT[/red]" if verdict.drifted else "[green]no drift[/green]"
    table = Table(
        "signal",
        "method",
        "score",
        "threshold",
        "drifted",
        "detail",
        title=f"{title}{flag}: {verdict.current_posts} posts against {verdict.reference_posts} reference posts "
        f"(false-alarm rate {verdict.false_alarm_rate:g})",
    )
    for s in verdict.signals:
        side = ">" if s.higher_is_drift else "<"
        table.add_row(
            s.name, s.method, f"{s.score:.3g}", f"{side} {s.threshold:.3g}", "yes" if s.drifted else "", s.detail
        )
    return table


def clusters_table(clusters: list[EmergingCluster]) -> Table:
    table = Table(
        "#",
        "posts",
        "share",
        "lift",
        "growth/day",
        "per day",
        "top hashtags",
        "champion calls them",
        "examples",
        title="emerging clusters",
    )
    for i, c in enumerate(clusters, 1):
        called = ", ".join(f"{k} {v}" for k, v in list(c.predicted_as.items())[:3])
        table.add_row(
            str(i),
            str(c.size),
            f"{c.share:.1%}",
            f"{c.lift:.1f}x",
            f"{c.growth_per_day:+.1%}",
            " ".join(str(n) for n in c.per_day.values()),
            " ".join(c.top_hashtags),
            called,
            " ".join(c.examples[:3]),
        )
    return table


def triggers_table(decisions: list[Decision]) -> Table:
    table = Table("trigger", "fires", "why", title="retrain triggers")
    for d in decisions:
        table.add_row(d.trigger, "[bold]yes[/bold]" if d.fire else "no", d.reason)
    return table


def service_line(name: str, status: ServerStatus, server: LocalLabelStudio) -> str:
    if not status.running:
        return f"{name}: {status.detail} ({status.url}; start it with `trendloop services up`)"
    creds = server.credentials()
    return (
        f"{name}: running on {status.url} (pid {status.pid}, {status.detail}); "
        f"log in as {creds.username}, password in {server.state_dir / 'credentials.json'}"
    )


def select_text(r: SelectReport) -> str:
    if r.queued == 0:
        return f"nothing queued: {r.pool} unlabelled posts not queued before"
    means = ", ".join(f"{arm} {score:.3f}" for arm, score in sorted(r.mean_score.items()))
    return (
        f"queued {r.queued} of {r.pool} unlabelled posts as batch {r.batch}: {r.active} by {r.strategy}, "
        f"{r.control} random control (mean score: {means})"
    )


def push_text(r: PushReport, project: LabelingProject) -> str:
    if r.project_id is None:
        return "nothing to push: every queued post is in Label Studio already"
    return (
        f"pushed {r.pushed} tasks to {project.url}/projects/{r.project_id}"
        + (f" ({r.found} were there already)" if r.found else "")
        + (f"; {r.pending} still queued" if r.pending else "")
    )


def pull_table(r: PullReport) -> Table:
    table = Table("", "value", title="annotations pulled")
    table.add_row("annotated tasks read", str(r.tasks))
    table.add_row("annotations (new)", f"{r.annotations} ({r.new_annotations})")
    table.add_row("posts with a label", str(r.decided))
    for status, n in sorted(r.undecided.items()):
        table.add_row(f"posts {status}", str(n))
    a = r.agreement
    if a.posts:
        table.add_row(
            "agreement (posts with 2+ votes)", f"{a.pairwise:.2f} pairwise, Fleiss' kappa {a.kappa:.2f} ({a.posts})"
        )
    for label, n in sorted(r.new_classes.items()):
        table.add_row("new class named", f"{label} ({n} posts)")
    for arm, acc in r.accuracy.items():
        table.add_row(f"model accuracy, {arm} posts", f"{acc:.1%}")
    return table


def relabel_text(r: RelabelReport) -> str:
    if not r.relabelled:
        return f"no new labels to commit (HEAD {r.snapshot})"
    missing = f"; {len(r.missing)} posts not in HEAD" if r.missing else ""
    return f"committed {len(r.relabelled)} labels as snapshot {r.snapshot}{missing}"


def sync_text(report: SyncReport) -> str:
    """What a feature sync wrote, on one line."""
    return ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in report.to_dict().items())


def queue_table(counts: dict[str, int]) -> Table:
    table = Table("posts", "count", title="labelling queue")
    for name, n in counts.items():
        table.add_row(name.replace("_", " "), str(n))
    return table


def experiment_line(experiment: Experiment | None) -> str:
    if experiment is None:
        return "no A/B test: every user sees the champion"
    return (
        f"A/B test {experiment.id}: champion v{experiment.champion_version} vs challenger "
        f"v{experiment.challenger_version}, {experiment.split:.0%} of users on the challenger, "
        f"since {experiment.started_at[:19]}"
    )


def serving_table(applications: dict, config: dict | None) -> Table:
    table = Table(title="serving")
    for column in ("deployment", "status", "replicas", "live config"):
        table.add_column(column)
    app = applications.get("trendloop", {})
    knobs = {
        d["name"]: d.get("user_config") for d in (config or {}).get("applications", [{}])[0].get("deployments", [])
    }
    for name, state in app.get("deployments", {}).items():
        replicas = sum(1 for r in state.get("replicas", []) if r.get("state") == "RUNNING")
        table.add_row(name, state.get("status", "?"), str(replicas), json.dumps(knobs.get(name), default=str))
    table.caption = f"app: {app.get('status', 'not deployed')}"
    return table


def ab_summary(report: dict) -> Table:
    decision = report.get("decision", {})
    table = Table(title=f"{decision.get('verdict', '?').upper()}: {decision.get('headline', '')}", title_justify="left")
    for column in ("arm", "version", "users", "exposures", "engagement", "reports", "p95 latency"):
        table.add_column(column, justify="right" if column != "arm" else "left")
    experiment = report.get("experiment", {})
    for arm, stats in (report.get("arms") or {}).items():
        table.add_row(
            arm,
            str(experiment.get(f"{arm}_version")),
            f"{stats['users']:,}",
            f"{stats['exposures']:,}",
            _share(stats.get("engagement_rate"), 2),
            _share(stats.get("report_rate"), 3),
            f"{stats['latency_p95_ms']:.0f} ms" if stats.get("latency_p95_ms") is not None else "-",
        )
    lift, srm = report.get("lift") or {}, report.get("srm") or {}
    srm_p = "-" if srm.get("p_value") is None else f"{srm['p_value']:.3g}"
    table.caption = (
        f"lift {_share(lift.get('relative'), 1, signed=True)}, always-valid interval "
        f"{_share(lift.get('cs_low'), 1, signed=True)} to {_share(lift.get('cs_high'), 1, signed=True)}"
        f"{' (CUPED)' if lift.get('cuped') else ''}; sample ratio {'ok' if srm.get('ok') else 'MISMATCH'}"
        f" (p = {srm_p})"
    )
    return table


def _share(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}%}" if signed else f"{value:.{digits}%}"


# -- the main job ---------------------------------------------------------------------------------------------


def pipeline_line(name: str, what: str, steps: list[str], outcome: str | None, seconds: float) -> str:
    """One pipeline run as a line: its steps in the order they ended, what came of it, how long it took."""
    said = f" -> {outcome}" if outcome else ""
    return f"[bold]{name}[/bold] ({what}): {' > '.join(steps)}{said} [dim]({seconds:.0f} s)[/dim]"


def traffic_line(day: int, stats: DriveStats) -> str:
    refused, engaged = sum(stats.failed.values()), sum(stats.engagements.values())
    fit = stats.fit_rate("champion")
    return (
        f"day {day}: {stats.ok} views served, {engaged} clicks and likes, broken uploads refused: {refused}; "
        f"the champion's top tag was right on {fit:.0%} of them"
    )


def ab_line(seen: DriveStats, report: dict) -> str:
    lift, arms = report.get("lift") or {}, report.get("arms") or {}
    users = " vs ".join(f"{arms[a]['users']:,}" for a in ("champion", "challenger") if a in arms)
    return (
        f"A/B: {seen.ok:,} test views, users {users}; lift {signed_share(lift.get('relative'))} "
        f"(always-valid {signed_share(lift.get('cs_low'))} to {signed_share(lift.get('cs_high'))}): "
        f"{report['decision']['verdict']}"
    )


def timeline_table(events: list) -> Table:
    table = Table(title="timeline", title_justify="left")
    for column in ("day", "after", "what happened"):
        table.add_column(column, justify="right" if column != "what happened" else "left")
    for e in events:
        minutes, seconds = divmod(round(e.seconds), 60)
        table.add_row(str(e.day), f"{minutes}m{seconds:02d}s", e.what)
    return table


def comparison_table(verdict: Verdict | None, traffic: DriveStats | None, trend: NewClass | None) -> Table:
    """Champion vs challenger: accuracy on the gate's test posts (paired), and top-1 tags right on live traffic."""
    table = Table(title="champion vs challenger", title_justify="left")
    for column in ("where", "posts", "champion", "challenger", "difference (interval)"):
        table.add_column(column, justify="left" if column == "where" else "right")
    for check in verdict.checks if verdict else []:
        for found in check.evidence[:1]:
            if not found.measure.startswith("accuracy"):
                continue
            table.add_row(
                f"test split: {found.measure}",
                str(found.posts),
                f"{found.champion:.3f}",
                f"{found.challenger:.3f}",
                f"{found.difference:+.3f} ({found.lower:+.3f} to {found.upper:+.3f})",
            )
    if traffic is not None and trend is not None:
        for label, keep in ((f"live: posts of {trend.name}", True), ("live: every other post", False)):
            rates = {}
            for arm in ("champion", "challenger"):
                judged, fitted = traffic.judged.get(arm, {}), traffic.fitted.get(arm, {})
                n = sum(v for k, v in judged.items() if (k == trend.name) == keep)
                right = sum(v for k, v in fitted.items() if (k == trend.name) == keep)
                rates[arm] = (right / n if n else float("nan"), n)
            table.add_row(
                label,
                f"{rates['champion'][1]} + {rates['challenger'][1]}",
                f"{rates['champion'][0]:.3f}",
                f"{rates['challenger'][0]:.3f}",
                f"{rates['challenger'][0] - rates['champion'][0]:+.3f}",
            )
    table.caption = "test split: accuracy with the gate's paired interval; live: share of views whose top tag was right"
    return table


def where_to_look(settings: Settings, log: Path) -> str:
    server = settings.labelstudio.url or f"http://127.0.0.1:{settings.labelstudio.port}"
    return "\n".join(
        [
            "where to look:",
            f"  the A/B dashboard      {settings.serving.url}/ab   (`trendloop ab status`; `trendloop serve down`)",
            "  runs and models        `trendloop mlflow ui` (http://127.0.0.1:5000), `trendloop model list`",
            f"  Label Studio           {server}   (`trendloop services status` says how to log in)",
            f"  drift reports          {settings.checks_dir}/<check>/drift.html",
            f"  pipeline runs          {settings.pipeline_root} (one log per run under logs/)",
            f"  this run's log         {log}",
        ]
    )


def signed_share(value: float | None, digits: int = 1) -> str:
    return _share(value, digits, signed=True)
