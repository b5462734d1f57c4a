"""The main job: simulate -> ingest -> train -> drift -> active learning -> serve and A/B test.

Then a tagger is trained on the labelled posts, logged and registered in MLflow,
gated, and made the champion; each later day's traffic is checked for drift against
the champion's training data, and the retrain triggers are asked; when drift is
found or a retrain is due, the posts the champion is least sure of go to Label
Studio, simulated annotators label them there, and their labels come back as a
new snapshot. Then a challenger fine-tuned on that snapshot serves beside the
champion in Ray Serve, simulated users send images and feedback, and the A/B
test's rule decides. The first ``seed_days`` of the feed arrive labelled, standing in for
the labelled history a platform starts from; the days after arrive as the platform sees them,
unlabelled, one ingest (and one snapshot) per day. Later stages of the loop
extend this function.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path

from rich.table import Table

from active_learning.annotators import annotate
from active_learning.loop import commit_labels, offered_labels, pull_labels, push_queued, select_posts
from components.errors import ConfigError, DriftError, LabelingError
from components.features import SUMMARY_FEATURES, Features
from components.features import sync as sync_features
from components.ingest import IngestReport, ingest, read_labels
from components.monitor import check_drift, log_check, retrain_context
from components.predlog import PredictionLog
from components.registry import CHALLENGER, CHAMPION, Registry
from components.simulator.feed import oracle_styles, simulate
from components.snapshot import Snapshot, Store
from components.workflow import review, train_and_register
from infra.ray import RayError
from serving import control
from serving.deploy import ServingError
from serving.traffic import Audience, drive
from trendloop import render
from trendloop.settings import Settings

DEMO_LIFT = 0.5  # the simulated users engage 50% more with the challenger's tags: big enough to decide on


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
    with console.status("recording the new labels in Feast (offline file, online push)"):
        pushed = sync_features(settings.open_features(), store.head(), PredictionLog(settings.predictions_dir))
    console.print(f"Feast: {pushed.labels} labels recorded and pushed online")
    console.print(f"Label Studio: {project.url} (project {project.title!r}); `trendloop services down` stops it")


def feature_step(settings: Settings, features: Features, store: Store, log: PredictionLog) -> None:
    """Step 5b: write the posts' and users' features to Feast's offline store, materialise, read online."""
    console = render.console
    console.rule("[bold]5b. features (Feast): offline store -> materialize -> online reads")
    with console.status("writing features: caption embeddings, the champion's scores, user profiles, labels"):
        report = sync_features(features, store.head(), log, settings.features.device)
    console.print(f"offline store: {render.sync_text(report)}")
    with console.status("materializing the online store"):
        views = features.materialize()
    console.print(f"materialized {', '.join(views)} into {settings.features.config}'s online store")
    posts = store.head().manifest().select(["post_id", "user_id"]).slice(0, 3).to_pydict()
    online = features.online([*SUMMARY_FEATURES["post_id"], *SUMMARY_FEATURES["user_id"]], posts)
    console.print(online.to_string(index=False))
    console.print(
        "`trendloop features get --post ID --user ID` reads the online store; `features services` lists versions"
    )


def ab_test(settings: Settings, store: Store, registry: Registry, feed: Path, requests: int) -> None:
    """Step 7: fine-tune a challenger on the newest snapshot, serve it beside the champion and A/B test it.

    Simulated users send images; the challenger's true effect on engagement is
    ``DEMO_LIFT``. The champion serves alone first (the pre-period CUPED reads),
    then the test runs under the rule in ``[ab]`` and ``ab decide --apply`` acts.
    """
    console = render.console
    console.rule("[bold]7. serve champion and challenger (Ray Serve), A/B test them, decide")
    head = store.head()
    for from_champion in (True, False):  # fine-tune the champion; if that fails the gate, retrain from scratch
        with render.training_progress(settings.train.epochs) as progress:
            trained = train_and_register(
                store, head, settings.train, registry, settings.runs_dir, from_champion=from_champion,
                on_step=progress.step, on_epoch=progress.epoch,
            )  # fmt: skip
        reviewed = review(store, head, registry, trained.version, settings.gate, oracle_styles(feed))
        console.print(render.verdict_text(reviewed.verdict))
        if reviewed.verdict.passed:
            break
    s = settings.serving_control()
    with console.status("starting Ray on 127.0.0.1 unless serving.ray_dashboard names a cluster"):
        settings.ensure_ray()
    challenger = registry.alias(CHALLENGER)
    if challenger is not None:
        registry.clear_challenger()  # held back until the pre-period traffic is logged
    with console.status("deploying the serving app"):
        control.up(s, settings.serving.start_timeout)
    url = settings.serving.url
    images = demo_uploads(store, head)
    audience = Audience(users=max(requests * 2 // 5, 50), base_rate=0.15, lift=DEMO_LIFT, seed=1)
    with console.status(f"pre-period: {requests // 2} requests, champion only"):
        pre = asyncio.run(drive(url, images, audience, requests // 2, concurrency=8, seed=2))
    console.print(
        f"pre-period: {pre.ok} predictions, {pre.feedback} feedback events, {sum(pre.failed.values())} failed"
    )
    if challenger is None:
        console.print("no challenger passed the gate: only the champion serves")
        console.print(f"serving on {url} (`trendloop serve down` stops it)")
        return
    registry.set_challenger(challenger)
    experiment = control.follow(s, note="a new challenger")
    console.print(render.experiment_line(experiment))
    with console.status(f"A/B test: {requests} requests from {audience.users} simulated users"):
        test = asyncio.run(drive(url, images, audience, requests, concurrency=8, seed=3))
    console.print(f"test traffic: {test.ok} predictions ({test.arms}), {test.feedback} feedback events, "
                  f"{sum(test.failed.values())} failed")  # fmt: skip
    time.sleep(2 * settings.serving.flush_every_s)  # the router's last records reach the log
    outcome = control.decide(s, apply=True)
    console.print(render.ab_summary(outcome.report))
    console.print(f"decision: {outcome.action}")
    console.print(render.experiment_line(outcome.experiment))
    console.print(f"dashboard: {url}/ab; `trendloop ab status`, `trendloop serve down` stops serving")


def demo_uploads(store: Store, snapshot: Snapshot, n: int = 32) -> list[bytes]:
    """Images users upload in the demo: stored posts' images, as bytes."""
    refs = snapshot.manifest().column("image").to_pylist()[:n]
    return [(store.root / ref).read_bytes() for ref in refs]


def run_demo(
    settings: Settings, days: int, seed_days: int, posts_per_day: int, ab_requests: int = 3000
) -> list[IngestReport]:
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
    features = settings.open_features()
    service = features.register_model(trained.version, snapshot.id, trained.feature_refs)
    reads = ", ".join(trained.feature_refs) or "nothing (image only)"
    console.print(f"feature service {service}: what version {trained.version} reads from Feast: {reads}")
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
        feature_step(settings, features, store, log)
        drifted = any(c.verdict.drifted for c in checks)
        if drifted or any(d.fire for d in decisions):
            why = "drift" if drifted else "retrain due"
            try:
                label_posts(settings, store, registry, spec.day_start(seed_days), out, why)
            except (LabelingError, ConfigError) as err:  # Label Studio down or not startable: say so, go on
                console.print(f"[red]active learning stopped:[/red] {err}")
        else:
            console.print("no drift and no trigger fired: annotators are not asked for labels this time")
        if ab_requests > 0:
            try:
                ab_test(settings, store, registry, out, ab_requests)
            except (ServingError, RayError, ConfigError) as err:  # Ray not startable, app not deploying: say so
                console.print(f"[red]serving stopped:[/red] {err}")

    console.rule("[bold]8. summary")
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
