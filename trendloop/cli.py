"""The ``trendloop`` command line. Each command resolves settings and calls one function."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from components.errors import ConfigError, LabelingError, SnapshotError, TrendloopError
from trendloop import render, wiring
from trendloop.arguments import parse_time
from trendloop.settings import Settings, load_settings

if TYPE_CHECKING:
    from active_learning.labelstudio import LabelingProject
    from active_learning.queue import LabelQueue
    from infra.labelstudio import LocalLabelStudio

app = typer.Typer(
    help="trendloop: continual learning for the images people post.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
model_app = typer.Typer(
    help="The registered tagger's versions and its champion/challenger aliases.", no_args_is_help=True
)
drift_app = typer.Typer(help="Drift and new-trend checks of the traffic against the champion.", no_args_is_help=True)
services_app = typer.Typer(help="The embedded default's local services (Label Studio).", no_args_is_help=True)
label_app = typer.Typer(
    help="Active learning: select posts for annotators, push them to Label Studio, pull their labels.",
    no_args_is_help=True,
)
mlflow_app = typer.Typer(help="The MLflow tracking server of these settings.", no_args_is_help=True)
snapshot_app = typer.Typer(help="List, inspect, compare and verify snapshots.", no_args_is_help=True)
config_app = typer.Typer(help="Show the settings in force.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(mlflow_app, name="mlflow")
app.add_typer(drift_app, name="drift")
app.add_typer(services_app, name="services")
app.add_typer(label_app, name="label")
serve_app = typer.Typer(
    help="Ray Serve: the champion and the challenger behind one router, with the A/B dashboard.", no_args_is_help=True
)
ab_app = typer.Typer(help="The A/B test between champion and challenger: read it, decide it.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
features_app = typer.Typer(
    help="The Feast store: post and user features for training (historical) and serving (online).",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")
app.add_typer(ab_app, name="ab")
pipeline_app = typer.Typer(
    help="Kubeflow pipelines of the loop: continual_training, drift_monitor, label_sync (kfp.local or a cluster).",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")
privacy_app = typer.Typer(
    help="Personal data: forget users on request, and the audit of what was forgotten.", no_args_is_help=True
)
app.add_typer(privacy_app, name="privacy")


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="TOML config file (default: $TRENDLOOP_CONFIG, ./trendloop.toml).")
    ] = None,
    home: Annotated[Path | None, typer.Option(help="State folder (default: .trendloop, or $TRENDLOOP_HOME).")] = None,
) -> None:
    ctx.obj = load_settings(config, home=home)


@app.command()
def simulate(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: <home>/feed).")] = None,
    days: Annotated[int, typer.Option(min=1, help="How many days to simulate.")] = 21,
    first_day: Annotated[int, typer.Option(min=0, help="Day index to start at (extend an earlier run).")] = 0,
    posts_per_day: Annotated[int | None, typer.Option(min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    image_size: Annotated[int | None, typer.Option(min=16, max=1024)] = None,
    corrupt_share: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Share of uploads that arrive broken.")
    ] = None,
    trend: Annotated[
        list[str] | None,
        typer.Option(
            help="A trend event, e.g. new_class:name=meme,start_day=8,ramp_days=4,share=0.2 (repeatable); "
            "replaces the configured trends."
        ),
    ] = None,
    no_trends: Annotated[bool, typer.Option("--no-trends", help="A stationary feed: no trend events.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Processes simulating days in parallel.")] = 2,
) -> None:
    """Simulate a social feed: posts, images, users and engagement, with trends on a day timeline."""
    from components.simulator.feed import FeedSpec
    from components.simulator.feed import simulate as simulate_feed
    from components.simulator.trends import parse_trend

    settings = _settings(ctx)
    updates = {
        k: v
        for k, v in {
            "posts_per_day": posts_per_day,
            "seed": seed,
            "image_size": image_size,
            "corrupt_share": corrupt_share,
        }.items()
        if v is not None
    }
    if trend or no_trends:
        updates["trends"] = [parse_trend(t) for t in trend or []]
    spec = FeedSpec.model_validate({**settings.simulate.model_dump(), **updates})
    target = out or settings.feed_dir
    with render.progress_bar("simulating", total=days * spec.posts_per_day) as bar:
        results = simulate_feed(spec, target, range(first_day, first_day + days), workers=workers, progress=bar.advance)
    render.console.print(render.simulation_table(spec, results))
    render.console.print(f"wrote {sum(r.posts for r in results)} posts to {target}")


@app.command()
def ingest(
    ctx: typer.Context,
    source: Annotated[
        Path, typer.Argument(help="Simulator output, a folder of images, or a .jsonl/.parquet manifest.")
    ],
    labels: Annotated[
        Path | None, typer.Option(help="Labels to attach: Parquet/CSV/JSONL with post_id, label.")
    ] = None,
    label_source: Annotated[str, typer.Option(help="Who gave the --labels (recorded per post).")] = "import",
    folder_labels: Annotated[
        bool, typer.Option(help="In a folder source, class_name/ subfolders give labels.")
    ] = False,
    since: Annotated[str | None, typer.Option(help="Only posts created at or after this UTC date/time.")] = None,
    until: Annotated[str | None, typer.Option(help="Only posts created before this UTC date/time.")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Validation processes (default: settings).")] = None,
) -> None:
    """Validate, normalise and deduplicate posts, quarantine bad files, and commit a snapshot."""
    from components.data.ingest import ingest as ingest_source
    from components.data.ingest import read_labels
    from components.data.snapshot import Store

    settings = _settings(ctx)
    window = parse_time(since, "--since"), parse_time(until, "--until")
    given = read_labels(labels) if labels else None
    with render.progress_bar("ingesting") as update:
        report = ingest_source(
            source,
            Store(settings.store_dir),
            wiring.pseudonyms(settings),
            limits=settings.ingest.limits(),
            labels=given,
            label_source=label_source,
            folder_labels=folder_labels,
            since=window[0],
            until=window[1],
            workers=workers or settings.ingest.worker_count(),
            progress=update,
        )
    render.console.print(render.ingest_table(report))
    if settings.features.on_ingest and report.snapshot is not None:
        _sync_features(settings)


def _sync_features(settings: Settings) -> None:
    """Write the offline feature store from HEAD and the champion's batch predictions."""
    from components.data.snapshot import Store

    head = Store(settings.store_dir).head()
    if head is None:
        return
    with render.console.status("writing features (Feast offline store)"):
        report = wiring.sync_features(settings, head)
    render.console.print(f"features: {render.sync_text(report)}")


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context) -> None:
    """Every snapshot, oldest first; HEAD is marked."""
    from components.data.snapshot import Store

    store = Store(_settings(ctx).store_dir)
    head = store.head()
    render.console.print(render.snapshots_table(store.list(), head.id if head else None))


@snapshot_app.command("show")
def snapshot_show(
    ctx: typer.Context, ref: Annotated[str, typer.Argument(help="HEAD, HEAD~N, an id or id prefix.")] = "HEAD"
) -> None:
    """One snapshot: parent, sources, label counts, manifest path."""
    from components.data.snapshot import Store

    render.console.print(render.snapshot_table(Store(_settings(ctx).store_dir).resolve(ref)))


@snapshot_app.command("diff")
def snapshot_diff(ctx: typer.Context, old: str = typer.Argument("HEAD~1"), new: str = typer.Argument("HEAD")) -> None:
    """What changed between two snapshots: posts added and removed, labels changed."""
    from components.data.snapshot import Store

    store = Store(_settings(ctx).store_dir)
    render.console.print(render.diff_table(store.diff(store.resolve(old), store.resolve(new))))


@snapshot_app.command("verify")
def snapshot_verify(
    ctx: typer.Context,
    ref: str = typer.Argument("HEAD"),
    images: Annotated[bool, typer.Option(help="Also re-hash every image (slower).")] = True,
) -> None:
    """Check a snapshot still matches its content hash and every image its pixel hash."""
    from components.data.snapshot import Store

    store = Store(_settings(ctx).store_dir)
    snap = store.resolve(ref)
    problems = store.verify(snap, images=images)
    if problems:
        for p in problems[:20]:
            render.err_console.print(f"  {p}")
        raise TrendloopError(f"snapshot {snap.id} fails verification: {len(problems)} problem(s)")
    render.console.print(f"snapshot {snap.id}: {snap.posts} posts, content and images match")


@app.command()
def train(
    ctx: typer.Context,
    snapshot: Annotated[str, typer.Option(help="Snapshot to train on: HEAD, HEAD~N, an id or prefix.")] = "HEAD",
    mode: Annotated[
        str, typer.Option(help="auto (fine-tune the champion when there is one), fine-tune, or scratch.")
    ] = "auto",
    arch: Annotated[str | None, typer.Option(help="Architecture (default from \\[train] arch).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Most epochs (default from \\[train]).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default from \\[train]).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda (default from \\[train]).")] = None,
    side: Annotated[
        str | None,
        typer.Option(
            help="Stored features a fusion tagger reads beside the image, comma-separated: caption,user; "
            "'none' for image only (default from \\[train] side)."
        ),
    ] = None,
) -> None:
    """Retrain: train a candidate on a snapshot, evaluate it beside the champion, gate it; register what passes.

    The first model that passes becomes @champion, later ones @challenger (the A/B test's
    candidate). A refused candidate is not registered: its MLflow run keeps the verdict.
    Interrupted? Run the same command again: it resumes from the last finished epoch. A
    fusion tagger (--side) reads its features from the feature store, as they were when
    each post was made; run `trendloop features sync` first if ingest does not.
    """
    from components.data.snapshot import Store
    from components.model.retrain import retrain
    from components.model.train_config import TrainConfig

    settings = _settings(ctx)
    groups = None if side is None else [g.strip() for g in side.split(",") if g.strip() and g.strip() != "none"]
    changes = {"arch": arch, "epochs": epochs, "seed": seed, "device": device, "side": groups}
    overrides = {k: v for k, v in changes.items() if v is not None}
    config = TrainConfig.model_validate(settings.train.model_dump() | overrides)  # validates the overrides
    store = Store(settings.store_dir)
    snap = store.resolve(snapshot)
    registry = wiring.open_registry(settings)
    with render.training_progress(config.epochs) as progress:
        done = retrain(
            store, snap, config, settings.gate, registry, settings.runs_dir, mode, progress.step, progress.epoch,
            lambda version, candidate: wiring.open_features(settings).register_model(
                version, snap.id, candidate.feature_refs
            ),
        )  # fmt: skip
    render.console.print(render.training_table(done.candidate.result))
    if done.review is None:
        assert done.placed is not None
        render.console.print(
            f"nothing new to train on: these settings already made version {done.placed.version} of snapshot "
            f"{snap.id[:12]} (registered as @{done.placed.alias}); next: ingest or label more posts"
        )
        return
    render.console.print(render.evaluation_table(done.review.candidate, done.review.champion))
    render.console.print(render.verdict_text(done.review.verdict))
    if done.placed is None:
        raise TrendloopError(
            f"the gate refused the candidate: nothing registered (MLflow run {done.candidate.run_id} keeps the verdict)"
        )
    render.console.print(
        f"registered {registry.model_name} version {done.placed.version} as @{done.placed.alias} "
        f"(run {done.candidate.run_id}, feature service tagger_v{done.placed.version}); "
        + ("next: `trendloop serve up`" if done.placed.alias == "champion" else "next: `trendloop serve up` tests it")
    )


@app.command()
def evaluate(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Version number, or champion/challenger.")],
    snapshot: Annotated[str, typer.Option(help="Whose test split to score on.")] = "HEAD",
) -> None:
    """Score a version beside the champion on one test split and show what the gate would say now.

    A report only: registered versions passed the gate when they were registered, and
    nothing here moves an alias.
    """
    from components.data.snapshot import Store
    from components.model.retrain import review

    settings = _settings(ctx)
    store = Store(settings.store_dir)
    registry = wiring.open_registry(settings)
    number = registry.version_of(version)
    found = review(
        store, store.resolve(snapshot), registry, registry.load_predictor(number), f"{registry.model_name}/{number}",
        settings.gate,
    )  # fmt: skip
    render.console.print(render.evaluation_table(found.candidate, found.champion))
    if registry.alias("champion") == number:
        render.console.print(f"version {number} is the champion: the gate compares a candidate with it")
        return
    render.console.print(render.verdict_text(found.verdict))


@model_app.command("list")
def model_list(ctx: typer.Context) -> None:
    """Every version, newest first, with its aliases, snapshot, labels and gate verdict."""
    registry = wiring.open_registry(_settings(ctx))
    render.console.print(render.versions_table(registry.model_name, registry.versions()))


@model_app.command("promote")
def model_promote(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="Version number, or challenger.")],
    force: Annotated[bool, typer.Option(help="Promote even without a passed gate.")] = False,
) -> None:
    """Make a version the champion (it must have passed the gate when it was registered)."""
    registry = wiring.open_registry(_settings(ctx))
    number = registry.version_of(version)
    previous = registry.promote(number, force=force)
    was = f" (was version {previous})" if previous is not None and previous != number else ""
    render.console.print(f"{registry.model_name}@champion is version {number}{was}")


@model_app.command("rollback")
def model_rollback(ctx: typer.Context) -> None:
    """Give @champion back to the previous champion."""
    registry = wiring.open_registry(_settings(ctx))
    current, previous = registry.rollback()
    render.console.print(f"{registry.model_name}@champion is version {previous} again (was version {current})")


@drift_app.command("check")
def drift_check(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Window start, UTC date/time (default: the newest day's start; served: a day ago)."),
    ] = None,
    until: Annotated[str | None, typer.Option(help="Window end, exclusive (default: open).")] = None,
    days: Annotated[int, typer.Option(min=1, help="Without --since: the newest N days of traffic.")] = 1,
    served: Annotated[
        bool,
        typer.Option(
            "--served/--stored",
            help="Test what the app served in the window (request times), or score the snapshot's posts created in it.",
        ),
    ] = False,
    snapshot: Annotated[str, typer.Option(help="Snapshot whose posts make the traffic.")] = "HEAD",
    version: Annotated[str, typer.Option(help="Whose predictions: champion, challenger or a number.")] = "champion",
) -> None:
    """Test a window of traffic against the champion's training data; find emerging trends.

    Writes drift.json and Evidently's drift.html under <home>/drift/, logs both to MLflow,
    and says what the retrain policy makes of it (the same policy the pipelines ask).
    """
    from datetime import UTC, datetime, timedelta

    from components.data.predlog import PredictionLog
    from components.data.snapshot import Store
    from components.monitor.checks import check_drift, log_check, newest_days, retrain_plan

    settings = _settings(ctx)
    store = Store(settings.store_dir)
    snap = store.resolve(snapshot)
    end = parse_time(until, "--until")
    default = (end or datetime.now(UTC)) - timedelta(days=days) if served else newest_days(snap, days)
    start = parse_time(since, "--since") or default
    registry, log = wiring.open_registry(settings), PredictionLog(settings.predictions_dir)
    with render.console.status("checking drift"):
        check = check_drift(
            store, snap, registry, log, settings.checks_dir, start, end, settings.drift, settings.emerging, version,
            traffic="served" if served else "stored",
        )  # fmt: skip
        log_check(registry, check)
        plan = retrain_plan(store, snap, registry, log, settings.checks_dir, settings.retrain)
    render.console.print(render.drift_table(check.verdict))
    if check.clusters:
        render.console.print(render.clusters_table(check.clusters))
    render.console.print(render.triggers_table(plan.decisions))
    render.console.print(plan.reason)
    render.console.print(f"report: {check.folder / 'drift.html'} (summary: drift.json)")


@services_app.command("up")
def services_up(ctx: typer.Context) -> None:
    """Start the embedded Label Studio on 127.0.0.1 (in about 15 s once `trendloop services prepare` ran)."""
    settings = _settings(ctx)
    if settings.labelstudio.url is not None:
        raise ConfigError(f"labelstudio.url is set: trendloop uses {settings.labelstudio.url} and starts nothing")
    server = wiring.label_studio_server(settings)
    with render.console.status(f"starting Label Studio {server.version} on {server.url}"):
        status = server.up(settings.labelstudio.start_timeout)
    render.console.print(render.service_line("label-studio", status, server))


@services_app.command("prepare")
def services_prepare(ctx: typer.Context) -> None:
    """Install the embedded Label Studio and build its empty database, once per machine (`make` does this)."""
    settings = _settings(ctx)
    server = _embedded_label_studio(settings)
    if server is None:
        return
    with render.console.status(f"installing Label Studio {server.version} and migrating an empty database"):
        template = server.prepare(settings.labelstudio.start_timeout)
    render.console.print(f"label-studio {server.version}: new state folders start from {template}")


@services_app.command("down")
def services_down(ctx: typer.Context) -> None:
    """Stop the embedded Label Studio; its data stays under <home>/services."""
    server = wiring.label_studio_server(_settings(ctx))
    render.console.print("label-studio stopped" if server.down() else "label-studio was not running")


@services_app.command("status")
def services_status(ctx: typer.Context) -> None:
    """Whether the embedded Label Studio runs, where, and how to log in."""
    server = _embedded_label_studio(_settings(ctx))
    if server is not None:
        render.console.print(render.service_line("label-studio", server.status(), server))


def _embedded_label_studio(settings: Settings) -> LocalLabelStudio | None:
    """The embedded Label Studio; None, said on the terminal, when labelstudio.url names a shared one."""
    if settings.labelstudio.url is not None:
        render.console.print(f"label-studio: shared server {settings.labelstudio.url} (not managed here)")
        return None
    return wiring.label_studio_server(settings)


@serve_app.command("up")
def serve_up(ctx: typer.Context) -> None:
    """Deploy the serving app for @champion and @challenger (starting a local Ray head unless one is configured)."""
    from serving import control

    settings = _settings(ctx)
    s = wiring.serving_control(settings)
    with render.console.status("starting Ray on 127.0.0.1 unless serving.ray_dashboard names a cluster"):
        wiring.ensure_ray(settings)
    token_file = wiring.make_report_token(settings)
    with render.console.status("deploying the serving app (replicas load their models)"):
        experiment = control.up(s, settings.serving.start_timeout)
    url = settings.serving.url
    render.console.print(f"serving on {url}: POST {url}/predict?user_id=..., the A/B dashboard at {url}/ab")
    if token_file is not None:  # the path, never the token
        render.console.print(f"the dashboard needs the token in {token_file}: open {url}/ab?token=<it> once")
    render.console.print(render.experiment_line(experiment))


@serve_app.command("token")
def serve_token(ctx: typer.Context) -> None:
    """Make the report token (beyond loopback the dashboard needs it) unless it exists; prints its file, not it."""
    settings = _settings(ctx)
    path = wiring.make_report_token(settings)
    if path is None:
        render.console.print(f"serving.host is {settings.serving.host}: the reports need no token")
    else:
        render.console.print(f"the report token is in {path}")


@serve_app.command("down")
def serve_down(ctx: typer.Context) -> None:
    """Stop the serving app (replicas finish their requests and write their logs), then the local Ray head."""
    settings = _settings(ctx)
    admin = wiring.serve_admin(settings)
    if admin.reachable():
        with render.console.status("stopping the serving app"):
            admin.shutdown()
            admin.wait_gone()
        render.console.print("serving app stopped")
    if settings.serving.ray_dashboard is None:
        render.console.print("local Ray stopped" if wiring.local_ray(settings).down() else "local Ray was not running")


@serve_app.command("status")
def serve_status(ctx: typer.Context) -> None:
    """Whether the app runs, each deployment's state, and the live traffic knobs."""
    from serving.experiment import Experiments

    settings = _settings(ctx)
    admin = wiring.serve_admin(settings)
    if not admin.reachable():
        render.console.print(f"serving: stopped (no Ray dashboard at {admin.url})")
        return
    render.console.print(render.serving_table(admin.applications(), admin.config()))
    render.console.print(render.experiment_line(Experiments(settings.serving_dir / "experiments").current()))


@serve_app.command("config")
def serve_config_cmd(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(help="Write it here (default: print).")] = None,
    fresh: Annotated[
        bool, typer.Option(help="For a cluster that has not served yet (a RayService): the arm loads @champion.")
    ] = False,
) -> None:
    """The Serve config for the current aliases: what `serve up` applies; with --fresh, a RayService's serveConfigV2."""
    from serving import control

    settings = _settings(ctx)
    if fresh:
        config = control.fresh_config(wiring.serve_config_for(settings))
    else:
        config = control.current_config(wiring.serving_control(settings))
    text = json.dumps(config, indent=2)
    if out is None:
        print(text)
    else:
        out.write_text(text + "\n")
        render.console.print(f"wrote {out}")


@ab_app.command("status")
def ab_status(ctx: typer.Context) -> None:
    """The running test in plain words: verdict, arms, lift with its interval, SRM and guardrails."""
    from serving import control

    s = wiring.serving_control(_settings(ctx))
    render.console.print(render.ab_summary(control.report(s)))


@ab_app.command("report")
def ab_report_cmd(
    ctx: typer.Context,
    html: Annotated[Path | None, typer.Option(help="Also write the dashboard, self-contained, to this file.")] = None,
) -> None:
    """The running test's full report as JSON (what /ab/report.json serves)."""
    from serving import control
    from serving.dashboard import render_dashboard

    s = wiring.serving_control(_settings(ctx))
    found = control.report(s)
    print(json.dumps(found, indent=2))
    if html is not None:
        html.write_text(render_dashboard(found, report_url=None))


@ab_app.command("decide")
def ab_decide(
    ctx: typer.Context,
    apply: Annotated[bool, typer.Option(help="Act on the verdict: promote or roll back, serving follows.")] = False,
) -> None:
    """Apply the decision rule the test declared when it started; with --apply, act on it."""
    from serving import control

    s = wiring.serving_control(_settings(ctx))
    outcome = control.decide(s, apply)
    render.console.print(render.ab_summary(outcome.report))
    if apply:
        render.console.print(f"action: {outcome.action}")
        render.console.print(render.experiment_line(outcome.experiment))


@ab_app.command("split")
def ab_split(
    ctx: typer.Context, share: Annotated[float, typer.Argument(min=0.0, max=1.0, help="The challenger's share.")]
) -> None:
    """Change the challenger's share of users, live. A new test phase starts (same salt: users only move one way)."""
    from serving import control

    s = wiring.serving_control(_settings(ctx))
    experiment = control.follow(s, split=share, note=f"split changed to {share}")
    render.console.print(render.experiment_line(experiment))


@ab_app.command("promote")
def ab_promote(
    ctx: typer.Context, force: Annotated[bool, typer.Option(help="Promote even without a passed gate.")] = False
) -> None:
    """Make the challenger the champion now, whatever the test says; serving follows without a restart."""
    from serving import control

    version, experiment = control.promote(wiring.serving_control(_settings(ctx)), force)
    render.console.print(f"@champion is version {version}")
    render.console.print(render.experiment_line(experiment))


@ab_app.command("rollback")
def ab_rollback(ctx: typer.Context) -> None:
    """Give @champion back to the previous champion; serving follows without a restart."""
    from serving import control

    current, previous, experiment = control.rollback(wiring.serving_control(_settings(ctx)))
    render.console.print(f"@champion is version {previous} again (was version {current})")
    render.console.print(render.experiment_line(experiment))


def _labeling(settings: Settings) -> tuple[LabelingProject, LabelQueue]:
    if settings.labelstudio.url is None and not wiring.label_studio_server(settings).status().running:
        raise LabelingError(
            "the embedded Label Studio is not running: start it with `trendloop services up` (queued posts stay queued)"
        )
    return wiring.labeling_project(settings), wiring.label_queue(settings)


@label_app.command("select")
def label_select(
    ctx: typer.Context,
    budget: Annotated[
        int | None, typer.Option(min=1, help="Posts to queue (default: active_learning.batch_size).")
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="least_confidence, margin, entropy, bald or random (default: settings).")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only posts created from this UTC date/time.")] = None,
    until: Annotated[str | None, typer.Option(help="Only posts created before this UTC date/time.")] = None,
    version: Annotated[str, typer.Option(help="The model that scores: champion, challenger or a number.")] = "champion",
) -> None:
    """Score HEAD's unlabelled posts with the model and queue the most informative for annotators."""
    from active_learning.loop import select_posts
    from active_learning.strategies import SelectionConfig
    from components.data.snapshot import Store

    settings = _settings(ctx)
    config = settings.active_learning
    if strategy is not None:
        config = SelectionConfig.model_validate({**config.model_dump(), "strategy": strategy})
    store, registry = Store(settings.store_dir), wiring.open_registry(settings)
    number = registry.version_of(version)
    queue = wiring.label_queue(settings)
    with render.console.status("scoring unlabelled posts"):
        report = select_posts(
            store,
            store.resolve("HEAD"),
            registry.load_predictor(number),
            str(number),
            queue,
            config,
            since=parse_time(since, "--since"),
            until=parse_time(until, "--until"),
            budget=budget,
        )
    render.console.print(render.select_text(report))


@label_app.command("push")
def label_push(ctx: typer.Context) -> None:
    """Send queued posts to Label Studio as pre-annotated tasks; what fails stays queued."""
    from active_learning.loop import known_labels, offered_labels, push_queued
    from components.data.snapshot import Store

    settings = _settings(ctx)
    project, queue = _labeling(settings)
    ls = settings.labelstudio
    store = Store(settings.store_dir)
    labels = offered_labels(store, known_labels(store, wiring.open_registry(settings)))
    report = push_queued(
        queue, project, labels, image_url=ls.image_url, overlap=ls.overlap, local_files=settings.local_files()
    )
    render.console.print(render.push_text(report, project))


@label_app.command("annotate")
def label_annotate(
    ctx: typer.Context,
    feed: Annotated[
        Path | None, typer.Option(help="Simulated feed whose truth answers (default: <home>/feed).")
    ] = None,
) -> None:
    """Simulated annotators label the open tasks in Label Studio from the simulator's ground truth."""
    from active_learning.annotators import annotate as annotate_tasks
    from components.data.ingest import read_labels

    settings = _settings(ctx)
    truth = read_labels((feed or settings.feed_dir) / "oracle" / "labels")
    project, _ = _labeling(settings)
    report = annotate_tasks(project, truth, settings.annotators)
    render.console.print(
        f"{report.annotations} annotations on {report.tasks} tasks ({report.wrong} wrong on purpose, "
        f"{report.named} naming a new trend, {report.unknown} tasks of posts the feed does not know)"
    )


@label_app.command("pull")
def label_pull(
    ctx: typer.Context,
    commit: Annotated[bool, typer.Option(help="Commit the decided labels as a new snapshot.")] = True,
) -> None:
    """Pull annotations, decide each post's label by majority vote, check them, commit those that pass as a snapshot.

    The checks are the label-sync pipeline's: decided, not committed yet, the post is in
    HEAD, and the annotators agreed at least `[labelstudio] min_agreement`.
    """
    from active_learning.loop import check_labels, commit_labels, known_labels, pull_labels
    from components.data.snapshot import Store

    settings = _settings(ctx)
    project, queue = _labeling(settings)
    store = Store(settings.store_dir)
    report = pull_labels(
        queue, project, known_labels(store, wiring.open_registry(settings)), settings.labelstudio.min_votes
    )
    render.console.print(render.pull_table(report))
    if commit:
        head = store.head()
        if head is None:
            raise SnapshotError("there are no snapshots yet: ingest the posts before committing their labels")
        checked = check_labels(queue, head, settings.labelstudio.min_agreement)
        for why, n in checked.dropped.items():
            render.console.print(f"{n} decided labels held back: {why}")
        render.console.print(render.relabel_text(commit_labels(store, queue, checked.passed)))
        if settings.features.on_ingest:
            _sync_features(settings)  # the decided labels reach Feast through its push source


@features_app.command("apply")
def features_apply(ctx: typer.Context) -> None:
    """Register the feature repository's entities and views (model versions' services are kept)."""
    settings = _settings(ctx)
    features = wiring.open_features(settings)
    views = sorted(v.name for v in features.store.list_feature_views())
    render.console.print(f"applied {len(views)} feature views to {settings.features_dir}: {', '.join(views)}")


@features_app.command("sync")
def features_sync(ctx: typer.Context) -> None:
    """Write what the offline store lacks: new posts' features, the champion's scores, user profiles, labels."""
    _sync_features(_settings(ctx))


@features_app.command("materialize")
def features_materialize(
    ctx: typer.Context,
    end: Annotated[str | None, typer.Option(help="Load values up to this UTC date/time (default: now).")] = None,
    view: Annotated[list[str] | None, typer.Option(help="Only this feature view (repeatable).")] = None,
) -> None:
    """Fill the online store from the offline one, each view from where its last run stopped."""
    features = wiring.open_features(_settings(ctx))
    done = features.materialize(parse_time(end, "--end"), view)
    render.console.print(f"materialized {', '.join(done)}")


@features_app.command("get")
def features_get(
    ctx: typer.Context,
    post: Annotated[list[str] | None, typer.Option(help="A post id (repeatable).")] = None,
    user: Annotated[list[str] | None, typer.Option(help="A user id (repeatable; one per --post when both).")] = None,
    feature: Annotated[
        list[str] | None, typer.Option(help="view:feature (repeatable; default: a post's or user's summary).")
    ] = None,
    service: Annotated[str | None, typer.Option(help="A feature service instead, e.g. tagger_v3.")] = None,
) -> None:
    """Read features from the online store, as serving does."""
    from components.features.store import SUMMARY_FEATURES

    settings = _settings(ctx)
    # the store knows users by pseudonym: look the raw ids up by theirs, show them as given
    pseudonyms = wiring.pseudonyms(settings) if user else None
    users = [pseudonyms.of(u) for u in user] if pseudonyms else []
    rows = {k: v for k, v in {"post_id": post or [], "user_id": users}.items() if v}
    if not rows:
        raise ConfigError("name at least one --post or --user")
    wanted = service or feature or [f for key in rows for f in SUMMARY_FEATURES[key]]
    table = wiring.open_features(settings).online(wanted, rows)
    if user:
        table["user_id"] = list(user)
    render.console.print(table.to_string(index=False))


@features_app.command("services")
def features_services(ctx: typer.Context) -> None:
    """The feature services: one per model version, naming the features it was trained with."""
    features = wiring.open_features(_settings(ctx))
    for name in features.services():
        refs = features.service_features(name) or []
        render.console.print(f"{name}: {', '.join(refs) if refs else '(no stored features: image only)'}")


@label_app.command("status")
def label_status(ctx: typer.Context) -> None:
    """How many posts are queued, in Label Studio, annotated, decided and committed."""
    queue = wiring.label_queue(_settings(ctx))
    render.console.print(render.queue_table(queue.counts()))


@mlflow_app.command("ui")
def mlflow_ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow UI over this state folder's runs and registry, on 127.0.0.1."""
    settings = _settings(ctx)
    if settings.registry.tracking_uri is not None:
        raise ConfigError(f"the tracking server is remote: open {settings.registry.tracking_uri}")
    wiring.open_registry(settings).experiment_id()  # creates the database and experiment on a fresh home
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.tracking_uri]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    render.err_console.print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C stops it)")
    os.execv(sys.executable, command)


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """The resolved settings (defaults, config file and TRENDLOOP_* variables merged), as JSON."""
    render.console.print_json(json.dumps(_settings(ctx).model_dump(mode="json")))


@pipeline_app.command("compile")
def pipeline_compile(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Folder for the IR YAML files.")] = Path("build/pipelines"),
) -> None:
    """Write every pipeline's IR YAML (for the KFP UI, `kfp run create`, or a GitOps repo)."""
    from pipelines.runner import compile_all, step_options

    settings = _settings(ctx)
    for path in compile_all(out, settings.pipelines.image, step_options(settings)):
        render.console.print(f"wrote {path} (steps run in image {settings.pipelines.image})")


@pipeline_app.command("run")
def pipeline_run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="continual_training, drift_monitor or label_sync.")],
    param: Annotated[
        list[str] | None,
        typer.Option(help="A pipeline parameter, e.g. --param since=2026-01-12 --param mode=fine-tune (repeatable)."),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="A KFP API endpoint: submit there (default: \\[pipelines] host; unset: locally).")
    ] = None,
    cache: Annotated[
        bool, typer.Option("--cache/--no-cache", help="Reuse outputs of steps whose inputs did not change.")
    ] = True,
    verbose: Annotated[bool, typer.Option(help="Show every step's log, not only its status.")] = False,
) -> None:
    """Run a pipeline: locally with kfp.local (each step a subprocess), or on a KFP cluster with --host.

    A failed run names the step and its error; run the same command again after the fix
    and the steps that finished are reused from the cache, not run again.
    """
    from pipelines.runner import pipeline_arguments, run_local, step_options, submit

    settings = _settings(ctx)
    arguments = pipeline_arguments(settings, name, param or [])
    cache = cache and settings.pipelines.cache
    target = host or settings.pipelines.host
    pl = settings.pipelines
    if target is not None:
        options = step_options(settings, cache)
        run_id, url = submit(target, name, arguments, pl.image, pl.experiment, pl.namespace, pl.root, options)
        render.console.print(f"submitted {name}: run {run_id}\n{url}")
        return
    render.console.print(f"running {name} locally (kfp.local); step outputs under {settings.pipeline_root}")
    run = run_local(
        name, arguments, Path(settings.pipeline_root), pl.image, cache, echo=True, verbose=verbose,
        env=settings.pipeline_secrets(),
    )  # fmt: skip
    render.console.print(run.summary())
    if run.outcome() is not None:
        render.console.print(run.outcome())
    render.console.print(f"log: {run.log}")


@pipeline_app.command("schedule")
def pipeline_schedule(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="continual_training, drift_monitor or label_sync.")],
    cron: Annotated[str, typer.Option(help="When, as KFP's cron with seconds: '0 0 6 * * *' is daily at 06:00.")],
    param: Annotated[list[str] | None, typer.Option(help="A pipeline parameter k=v (repeatable).")] = None,
    host: Annotated[str | None, typer.Option(help="The KFP API endpoint (default: \\[pipelines] host).")] = None,
) -> None:
    """Create a recurring run on a KFP cluster (kfp.local has no scheduler; use cron with `pipeline run`)."""
    from pipelines.runner import pipeline_arguments, schedule, step_options

    settings = _settings(ctx)
    target = host or settings.pipelines.host
    if target is None:
        raise ConfigError("schedules live on a KFP cluster: pass --host or set [pipelines] host")
    arguments = pipeline_arguments(settings, name, param or [])
    arguments.pop("source_version", None)  # a schedule re-reads the source every time
    pl = settings.pipelines
    options = step_options(settings)
    job = schedule(target, name, arguments, pl.image, pl.experiment, cron, pl.namespace, pl.root, options)
    render.console.print(f"scheduled {name} ({cron}): recurring run {job} on {target}")


@app.command()
def demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=2, help="Days of feed to simulate.")] = 12,
    seed_days: Annotated[int, typer.Option(min=1, help="First days whose posts arrive labelled (the history).")] = 7,
    posts_per_day: Annotated[int, typer.Option(min=1)] = 200,
    views_per_post: Annotated[int, typer.Option(min=1, help="Requests a day's post gets from viewers.")] = 2,
    viewers: Annotated[int, typer.Option(min=10, help="Simulated viewers (the A/B rule needs enough per arm).")] = 2000,
    labels: Annotated[
        int, typer.Option(min=1, help="Posts sent to annotators when drift flags a trend ([active_learning] wins).")
    ] = 300,
    ab_requests: Annotated[
        int, typer.Option(min=1, help="Most A/B test requests before the job stops waiting for a verdict.")
    ] = 9000,
) -> None:
    """The main job: the pipelines and serving app through twelve simulated days, until a trend is learned.

    Labelled history -> first champion (continual_training) -> served to simulated viewers
    (Ray Serve) -> a new trend flagged in the served traffic (drift_monitor) -> annotators
    label in Label Studio -> label_sync retrains -> A/B test -> `ab decide --apply`.
    """
    from trendloop.demo import DemoSize, run_demo

    size = DemoSize(days, seed_days, posts_per_day, views_per_post, viewers, ab_requests=ab_requests, labels=labels)
    outcome = run_demo(_settings(ctx), size)
    if outcome.verdict is None:
        raise TrendloopError("the loop did not close: no A/B test ran (the timeline above says where it stopped)")


@privacy_app.command("forget")
def privacy_forget(
    ctx: typer.Context,
    users: Annotated[list[str], typer.Argument(help="Raw user ids, as the social network knows them.")],
) -> None:
    """Remove users' posts, images, features, log records and Label Studio tasks; commit a snapshot without them.

    Older snapshots keep their lineage (ids, counts) and lose the rows and files. The audit
    (`trendloop privacy audit`) records what went, without the ids; later ingests leave the users out.
    """
    from components.privacy.forget import counts_line, forget

    settings = _settings(ctx)
    result = forget(users, wiring.pseudonyms(settings), wiring.privacy_places(settings))
    render.console.print(f"forgot {result.users} user(s): {result.posts} post(s) found; removed {counts_line(result)}")
    if result.snapshot_after != result.snapshot_before:
        render.console.print(f"snapshot {result.snapshot_after} is HEAD now (was {result.snapshot_before})")
    if result.retrain:
        versions = ", ".join(str(v) for v in result.retrain)
        render.console.print(
            f"model version(s) {versions} were trained on their posts: retrain (`trendloop train`) and promote the "
            "new version to replace them"
        )
    render.console.print(f"audit record {result.audit_id} in {settings.privacy_dir / 'audit.jsonl'}")


@privacy_app.command("audit")
def privacy_audit(ctx: typer.Context) -> None:
    """Every deletion so far: when, how many users, what was removed, the models to retrain."""
    from components.privacy.forget import audit_records

    render.console.print(render.audit_table(audit_records(_settings(ctx).privacy_dir)))


def main(argv: list[str] | None = None) -> None:
    """Entry point: a ``TrendloopError`` becomes one line on stderr and exit code 1."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # its INFO/WARNING chatter is not ours to show
    logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])  # also when already imported
    try:
        app(args=argv, standalone_mode=True)
    except TrendloopError as err:
        render.err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        render.err_console.print("interrupted")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("TRENDLOOP_DEBUG"):
            traceback.print_exc()
        render.err_console.print(
            f"[red]error:[/red] {type(err).__name__}: {escape(str(err))} (TRENDLOOP_DEBUG=1 shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
