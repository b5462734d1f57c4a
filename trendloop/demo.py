"""The main job, as far as the loop exists today: simulate -> ingest (seed week, then daily) -> snapshots.

Then a tagger is trained on the labelled posts, logged and registered in MLflow,
gated, and made the champion; each later day's traffic is checked for drift against
the champion's training data, and the retrain triggers are asked; when drift is
found or a retrain is due, the posts the champion is least sure of go to Label
Studio, simulated annotators label them there, and their labels come back as a
new snapshot. The first ``seed_days`` of the feed arrive labelled, standing in for
the labelled history a platform starts from; the days after arrive as the platform sees them,
unlabelled, one ingest (and one snapshot) per day. Later stages of the loop
extend this function.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.table import Table

from active_learning.annotators import annotate
from active_learning.loop import commit_labels, offered_labels, pull_labels, push_queued, select_posts
from components.errors import ConfigError, DriftError, LabelingError
from components.ingest import IngestReport, ingest, read_labels
from components.monitor import check_drift, log_check, retrain_context
from components.predlog import PredictionLog
from components.registry import CHAMPION, Registry
from components.simulator.feed import oracle_styles, simulate
from components.snapshot import Store
from components.workflow import review, train_and_register
from trendloop import render
from trendloop.settings import Settings


def label_posts(settings: Settings, store: Store, registry: Registry, since: datetime, feed: Path, why: str) -> None:
    """Step 6: select the posts the champion is least sure of, have (simulated) annotators label them in
    Label Studio, pull their labels and commit them as a snapshot."""
    console = render.console
    console.rule(f"[bold]6. active learning ({why}): select -> Label Studio -> annotators -> labels")
    ls = settings.labelstudio
    if ls.url is None:
        server = settings.label_studio_server()
        with console.status(f"starting Label Studio on {server.url} (the first start takes a minute)"):
            console.print(render.service_line("label-studio", server.up(ls.start_timeout), server))
    queue = settings.label_queue()
    project = settings.labeling_project()
    version = registry.alias(CHAMPION)
    champion = registry.load_predictor(version)
    if queue.posts():
        console.print(f"the queue holds {len(queue.posts())} posts from an earlier run: no new selection")
    else:
        with console.status("scoring the unlabelled posts"):
            selected = select_posts(
                store, store.head(), champion, str(version), queue, settings.active_learning, since=since
            )
        console.print(render.select_text(selected))
    pushed = push_queued(
        queue,
        project,
        offered_labels(store, champion.labels),
        image_url=ls.image_url,
        overlap=ls.overlap,
        local_files=settings.local_files(),
    )
    console.print(render.push_text(pushed, project))
    with console.status("simulated annotators at work in Label Studio"):
        done = annotate(project, read_labels(feed / "oracle" / "labels"), settings.annotators)
    console.print(f"simulated annotators: {done.annotations} annotations on {done.tasks} tasks ({done.wrong} wrong)")
    console.print(render.pull_table(pull_labels(queue, project, champion.labels, ls.min_votes)))
    console.print(render.relabel_text(commit_labels(store, queue)))
    console.print(f"Label Studio: {project.url} (project {project.title!r}); `trendloop services down` stops it")


def run_demo(settings: Settings, days: int, seed_days: int, posts_per_day: int) -> list[IngestReport]:
    """Run the demo loop under ``settings.home`` and print what happened; returns each ingest's report."""
    spec = settings.simulate.model_copy(update={"posts_per_day": posts_per_day})
    seed_days = min(seed_days, days - 1)
    out, store = settings.feed_dir, Store(settings.store_dir)
    console = render.console
    console.rule(f"[bold]1. simulate {days} days x {posts_per_day} posts into {out}")
    with render.progress_bar("simulating", total=days * posts_per_day) as bar:
        results = simulate(spec, out, range(days), workers=settings.ingest.worker_count(), progress=bar.advance)
    console.print(render.simulation_table(spec, results))
    for trend in spec.trends:
        console.print(f"  trend: {trend.describe()} ({spec.day_date(trend.start_day)})")

    workers = settings.ingest.worker_count()
    limits = settings.ingest.limits()
    console.rule(f"[bold]2. ingest the labelled seed set: days 0-{seed_days - 1}")
    with render.progress_bar("ingesting seed") as update:
        seed = ingest(
            out,
            store,
            limits=limits,
            labels=read_labels(out / "oracle" / "labels"),
            label_source="seed",
            until=spec.day_start(seed_days),
            workers=workers,
            progress=update,
        )
    console.print(render.ingest_table(seed))
    reports = [seed]

    console.rule(f"[bold]3. ingest each following day as it arrives: days {seed_days}-{days - 1}")
    daily = Table("day", "date", "offered", "accepted", "duplicates", "rejected", "snapshot")
    with render.progress_bar("ingesting daily", total=days - seed_days) as update:
        for n, day in enumerate(range(seed_days, days), 1):
            report = ingest(
                out, store, limits=limits, since=spec.day_start(day), until=spec.day_start(day + 1), workers=workers
            )
            reports.append(report)
            daily.add_row(
                str(day),
                spec.day_date(day).isoformat(),
                str(report.offered),
                str(report.accepted),
                str(report.duplicates),
                str(report.rejected_total),
                (report.snapshot or "-") + ("" if report.new_snapshot else " (unchanged)"),
            )
            update(n)
    console.print(daily)

    console.rule("[bold]4. train a tagger on the labelled posts, gate it, make it the champion")
    registry = settings.open_registry()
    snapshot = store.head()
    with render.training_progress(settings.train.epochs) as progress:
        trained = train_and_register(
            store, snapshot, settings.train, registry, settings.runs_dir, on_step=progress.step, on_epoch=progress.epoch
        )
    console.print(render.training_table(trained.result))
    result = review(store, snapshot, registry, trained.version, settings.gate, oracle_styles(out))
    console.print(render.evaluation_table(result.challenger, result.champion))
    console.print(render.verdict_text(result.verdict))
    if result.verdict.passed and registry.alias(CHAMPION) is None:
        registry.promote(trained.version)
        console.print(f"{registry.model_name} version {trained.version} is the champion")

    if registry.alias(CHAMPION) is not None:
        console.rule(f"[bold]5. check each day's traffic for drift against the champion: days {seed_days}-{days - 1}")
        log, checks = PredictionLog(settings.predictions_dir), []
        daily = Table("day", "date", "posts", "drift", "signals", "emerging trends (top hashtags)")
        with render.progress_bar("checking drift", total=days - seed_days) as update:
            for n, day in enumerate(range(seed_days, days), 1):
                try:
                    check = check_drift(
                        store,
                        snapshot,
                        registry,
                        log,
                        settings.checks_dir,
                        spec.day_start(day),
                        spec.day_start(day + 1),
                        settings.drift,
                        settings.emerging,
                    )
                except DriftError as err:  # a day or a reference too small to test: say so, go on
                    daily.add_row(str(day), spec.day_date(day).isoformat(), "", "-", str(err), "")
                    update(n)
                    continue
                log_check(registry, check)
                checks.append(check)
                v = check.verdict
                daily.add_row(
                    str(day),
                    spec.day_date(day).isoformat(),
                    str(v.current_posts),
                    "[red]yes[/red]" if v.drifted else "no",
                    ", ".join(v.drifted_signals),
                    "; ".join(" ".join(c.top_hashtags[:3]) for c in check.clusters[:3]),
                )
                update(n)
        console.print(daily)
        last = checks[-1] if checks else None
        if last is not None:
            console.print(render.drift_table(last.verdict, f"{last.since:%Y-%m-%d}: "))
            if last.clusters:
                console.print(render.clusters_table(last.clusters))
        verdict = last.verdict if last else None
        decisions = settings.retrain.decide(retrain_context(store, snapshot, registry, log, verdict))
        console.print(render.triggers_table(decisions))
        console.print(f"reports: {settings.checks_dir}/<check>/drift.html and drift.json, and in MLflow")
        drifted = any(c.verdict.drifted for c in checks)
        if drifted or any(d.fire for d in decisions):
            why = "drift" if drifted else "retrain due"
            try:
                label_posts(settings, store, registry, spec.day_start(seed_days), out, why)
            except (LabelingError, ConfigError) as err:  # Label Studio down or not startable: say so, go on
                console.print(f"[red]active learning stopped:[/red] {err}")
        else:
            console.print("no drift and no trigger fired: annotators are not asked for labels this time")

    console.rule("[bold]7. summary")
    head = store.head()
    rejected = sum(r.rejected_total for r in reports)
    console.print(render.snapshots_table(store.list()[-5:], head.id if head else None))
    if head is not None:
        console.print(
            f"HEAD {head.id}: {head.posts} posts ({head.labelled} labelled, "
            f"{head.posts - head.labelled} awaiting labels); "
            f"{sum(r.accepted for r in reports)} accepted this run, {sum(r.duplicates for r in reports)} duplicates, "
            f"{rejected} rejected into {store.root / 'quarantine'}"
        )
        console.print(
            f"next: `trendloop snapshot diff HEAD~{min(3, len(reports) - 1)} HEAD`, `trendloop model list`, "
            "`trendloop mlflow ui`"
        )
    return reports
