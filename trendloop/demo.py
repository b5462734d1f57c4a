"""The main job: twelve simulated days of a platform's life, through the loop's pipelines and serving app.

The first ``seed_days`` of the simulated feed arrive labelled, standing in for the
history a platform starts from: ``continual_training`` makes the first champion, and
the serving app starts. Then, day by day: ``continual_training`` ingests the day's posts
(no retrain is due on unlabelled posts), simulated viewers open them through the app, and
``drift_monitor`` tests the traffic the app served that day. When it flags a trend it
sends an active-learning batch to Label Studio; simulated annotators label it there;
``label_sync`` commits their labels and, the retrain policy agreeing, fine-tunes a
challenger that the gate passes and serving puts beside the champion. The A/B test runs
on the next days' traffic until its declared rule decides, and ``ab decide --apply``
promotes (or rolls back); serving follows the registry.

Nothing of the loop is written here: each step is a pipeline step, a serving control
call, or the simulator (feed, viewers, annotators). Library output goes to the run's log
file; the terminal gets one line per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from components.errors import ConfigError, TrendloopError
from trendloop import render, wiring

if TYPE_CHECKING:
    from components.model.gate import Verdict
    from components.simulator.feed import FeedSpec
    from pipelines.runner import LocalRun
    from serving.control import Serving
    from serving.traffic import Audience, DriveStats, FeedPost
    from trendloop.settings import Settings


@dataclass(frozen=True)
class DemoSize:
    """How big the simulated weeks are; ``make demo`` takes the defaults, the tests a smaller world."""

    days: int = 12  # days of feed simulated; the default trend (a meme format) starts on day 8
    seed_days: int = 7  # the first days arrive labelled: the history the first champion learns from
    posts_per_day: int = 200
    views_per_post: int = 2  # requests a day's post gets from viewers on its day, on average
    viewers: int = 2000  # the simulated audience (the A/B rule needs 500 users per arm)
    ab_chunk: int = 1500  # test requests between two looks at the A/B report
    # posts sent to annotators when drift flags a trend (active_learning.batch_size, unless yours is set). A fifth
    # are the new class: over 3 seeds (bench_loop), 300 labels taught the challenger 0.85-0.87 on it and +2.2 to
    # +3.5 points on the old classes; 200 labels 0.82-0.86 and +0.7 to +2.6 (label_sync 186 s vs 158 s, means)
    labels: int = 300
    ab_requests: int = 9000  # the most test requests before the main job stops waiting for a verdict
    # the A/B rule's tau (the mSPRT mixture's sd) is put at the lift we hope to see (serving.abtest.DecisionRule):
    # a new class on 30% of the posts, which the champion cannot tag, moves engagement by about this much
    expected_lift: float = 0.3
    # the latency guardrail's limit on the challenger's p95 over the champion's. Both arms run the same
    # architecture here, so a difference is noise: on 2 cores shared by Ray, Label Studio and the viewers, p95s
    # of ~730 requests per arm measured +15% and +24% apart in two runs (a production app keeps [ab]'s +20%)
    max_latency_increase: float = 0.5


@dataclass
class Event:
    day: int
    seconds: float  # wall clock since the main job started
    what: str


@dataclass
class Timeline:
    started: float = field(default_factory=time.perf_counter)
    events: list[Event] = field(default_factory=list)

    def add(self, day: int, what: str) -> None:
        self.events.append(Event(day, time.perf_counter() - self.started, what))
        render.console.print(f"  [dim]day {day}[/dim] {what}")

    def first(self, prefix: str) -> Event | None:
        return next((e for e in self.events if e.what.startswith(prefix)), None)


@dataclass
class Outcome:
    """What the main job did: for its summary, its test and the benchmark."""

    timeline: Timeline
    champion: int | None  # @champion at the end
    challenger: int | None  # the version the A/B test ran
    verdict: str | None  # promote, rollback, continue, insufficient, blocked; None: no test ran
    action: str | None
    report: dict | None
    ab_traffic: DriveStats | None
    labels_committed: int = 0
    trend: str | None = None  # the new class of the scenario, if any
    log: Path | None = None


class Loop:
    """The main job's handles: settings, the feed, the pipelines and the serving app."""

    def __init__(self, settings: Settings, spec: FeedSpec, log: Path):
        from components.data.snapshot import Store

        self.settings, self.spec, self.log = settings, spec, log
        self.feed = settings.feed_dir
        self.store = Store(settings.store_dir)

    def day(self, n: int) -> str:
        return self.spec.day_start(n).isoformat()

    def pipeline(self, name: str, what: str, **params: object) -> LocalRun:
        """Run one pipeline on kfp.local, showing its steps as they end; its log lines go to a file."""
        from pipelines.runner import pipeline_arguments, run_local

        settings = self.settings
        arguments = pipeline_arguments(settings, name, [f"{k}={v}" for k, v in params.items()])
        done: list[str] = []
        started = time.perf_counter()
        with render.console.status(f"{name} ({what})") as status:

            def step(task: str, state: str) -> None:
                done.append(task if state == "SUCCESS" else f"{task} ({state.lower()})")
                status.update(f"{name} ({what}): {' > '.join(done)}")

            run = run_local(
                name, arguments, Path(settings.pipeline_root), settings.pipelines.image,
                settings.pipelines.cache, env=settings.pipeline_secrets(), on_step=step,
            )  # fmt: skip
        seconds = time.perf_counter() - started
        render.console.print(render.pipeline_line(name, what, done, run.outcome(), seconds))
        return run

    def serving(self) -> Serving:
        return wiring.serving_control(self.settings)

    def views(self, posts: list[FeedPost], audience: Audience, requests: int, seed: int) -> DriveStats:
        """Viewers open ``posts`` through the app; returns what they saw (their feedback is logged by the app)."""
        from serving.traffic import drive

        stats = asyncio.run(
            # impressions are not sent: the analysis counts exposures in the prediction log, and the calls cost time
            drive(self.settings.serving.url, posts, audience, requests, concurrency=8, seed=seed, impressions=False)
        )
        time.sleep(2 * self.settings.serving.flush_every_s)  # the router's last records reach the logs
        if stats.ok == 0:
            raise TrendloopError(f"the serving app answered none of {stats.sent} requests: {stats.failed}")
        return stats


def run_demo(settings: Settings, size: DemoSize = DemoSize()) -> Outcome:
    """Run the main job under ``settings.home`` and say what happened; returns what it did."""
    if size.seed_days >= size.days:
        raise ConfigError(f"--seed-days {size.seed_days} leaves no day after the labelled history ({size.days} days)")
    with _logging_to(settings.home / "logs" / f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S}.log") as log:
        return _run(settings, size, log)


def job_settings(settings: Settings, size: DemoSize) -> Settings:
    """The main job's own choices where ``settings`` leave them open.

    The A/B rule's tau and latency guardrail are ``size``'s (an ``[ab]`` section of yours wins), and
    so is the number of labels bought on a drift flag (an ``[active_learning] batch_size`` of yours wins).
    Features are not written on ingest when the tagger reads none (image only): caption
    embeddings, profiles and labels pushed online cost ~30 s a pipeline run and serve nobody
    here; a fusion recipe (``[train] side``), or an ``on_ingest`` of yours, keeps them.
    """
    if "ab" not in settings.model_fields_set:
        rule = replace(settings.ab, tau=size.expected_lift, max_latency_increase=size.max_latency_increase)
        settings = settings.model_copy(update={"ab": rule})
    if "batch_size" not in settings.active_learning.model_fields_set:
        selection = settings.active_learning.model_copy(update={"batch_size": size.labels})
        settings = settings.model_copy(update={"active_learning": selection})
    features = settings.features
    if features.on_ingest and not settings.train.side and "on_ingest" not in features.model_fields_set:
        settings = settings.model_copy(update={"features": features.model_copy(update={"on_ingest": False})})
    return settings


def _run(settings: Settings, size: DemoSize, log: Path) -> Outcome:
    from components.simulator.feed import simulate
    from components.simulator.trends import NewClass
    from serving.traffic import Audience

    spec = settings.simulate.model_copy(update={"posts_per_day": size.posts_per_day})
    settings = job_settings(settings, size)
    loop, timeline = Loop(settings, spec, log), Timeline()
    console = render.console
    console.print(f"trendloop main job: {size.days} simulated days; state in {settings.home}, log {log}")
    if not settings.features.on_ingest and not settings.train.side:
        console.print("features: the image-only tagger reads none; ingest skips Feast (`trendloop features sync`)")

    wiring.check_ray_ports(settings)  # the head starts minutes in, after the first training: a taken port fails now
    labelling = _start_label_studio(settings)

    console.rule(f"[bold]1. simulate {size.days} days x {size.posts_per_day} posts")
    with render.progress_bar("simulating", total=size.days * size.posts_per_day) as bar:
        results = simulate(
            spec, loop.feed, range(size.days), workers=settings.ingest.worker_count(), progress=bar.advance
        )
    console.print(render.simulation_table(spec, results))
    trend = next((t for t in spec.trends if isinstance(t, NewClass)), None)
    for t in spec.trends:
        if t.start_day < size.days:  # a scenario of later weeks does not happen in these days
            console.print(f"  scenario: {t.describe()}")

    console.rule(f"[bold]2. the labelled history (days 0-{size.seed_days - 1}) makes the first champion")
    first = loop.pipeline(
        "continual_training", f"days 0-{size.seed_days - 1}, labelled", source=loop.feed,
        until=loop.day(size.seed_days), labels=loop.feed / "oracle" / "labels",
    )  # fmt: skip
    s = loop.serving()
    champion = s.registry.alias("champion")
    if champion is None and "gate" not in first.tasks:  # the plan step found too few labels to train on
        raise TrendloopError(f"{first.outcome()}: the labelled history is too small (log: {first.log})")
    if champion is None:
        console.print(render.verdict_text(_verdict(first)))
        raise TrendloopError(f"the gate refused the first model: nothing to serve (log: {first.log})")
    timeline.add(size.seed_days - 1, f"version {champion} is the champion")

    console.rule("[bold]3. serve it (Ray Serve): champion only")
    from serving import control

    with console.status("starting Ray on 127.0.0.1 unless serving.ray_dashboard names a cluster"):
        wiring.ensure_ray(settings)
    wiring.make_report_token(settings)  # beyond loopback only
    with console.status("deploying the serving app (replicas load their models)"):
        control.up(s, settings.serving.start_timeout)
    console.print(f"serving on {settings.serving.url}; the A/B dashboard at {settings.serving.url}/ab")
    # viewers who engage a lot with posts filed under the right tag and little with the others: a trend the
    # champion cannot tag shows up in engagement within a few thousand views (serving.traffic)
    audience = Audience(viewers=size.viewers, tags=tuple(spec.tags()), base_rate=0.3, miss=0.1, seed=spec.seed)

    console.rule(f"[bold]4. each day: ingest -> viewers -> drift monitor (days {size.seed_days}-{size.days - 1})")
    challenger, flagged_day, day = None, None, size.seed_days
    for day in range(size.seed_days, size.days):
        if trend is not None and day == trend.start_day:
            timeline.add(day, f"the trend starts: {trend.describe()}")
        loop.pipeline(
            "continual_training", f"day {day}", source=loop.feed, since=loop.day(day), until=loop.day(day + 1)
        )
        posts = _day_posts(loop.feed, day)
        since = datetime.now(UTC)
        with console.status(f"day {day}: viewers open {len(posts)} posts"):
            stats = loop.views(posts, audience, size.views_per_post * len(posts), seed=day)
        console.print(render.traffic_line(day, stats))
        run = loop.pipeline("drift_monitor", f"day {day}'s served traffic", since=since.isoformat())
        if not run.output:
            continue
        flagged_day = day
        timeline.add(day, f"drift flagged on the traffic served: {_drift_signals(run)}")
        if labelling is not None:
            labelling.join()
        challenger = _label_and_retrain(loop, day, timeline)
        break
    if flagged_day is None:
        console.print("no drift flagged: annotators were not asked for labels, and the champion serves alone")
        return _finish(loop, timeline, Outcome(timeline, champion, None, None, None, None, None, log=log))
    if challenger is None:
        console.print("no challenger passed the gate: only the champion serves")
        return _finish(loop, timeline, Outcome(timeline, champion, None, None, None, None, None, log=log))

    console.rule(f"[bold]5. A/B test: champion v{champion} vs challenger v{challenger}, until its rule decides")
    experiment = s.experiments.current()
    console.print(render.experiment_line(experiment))
    if experiment is not None:
        rule = experiment.rule
        console.print(
            f"its declared rule: promote when the always-valid {1 - rule['alpha']:.0%} interval of the lift clears "
            f"{rule['min_lift']:+.0%} with at least {rule['min_users_per_arm']} users per arm (tau {rule['tau']:g}); "
            f"roll back if its p95 latency exceeds the champion's by more than {rule['max_latency_increase']:.0%}"
        )
    test_days = list(range(flagged_day + 1, size.days)) or [flagged_day]
    posts = [p for d in test_days for p in _day_posts(loop.feed, d)]
    seen, verdict = None, "continue"
    for n, start in enumerate(range(0, size.ab_requests, size.ab_chunk)):
        with console.status(f"A/B test: viewers open posts of days {test_days[0]}-{test_days[-1]}"):
            stats = loop.views(posts, audience, min(size.ab_chunk, size.ab_requests - start), seed=1000 + n)
        seen = _merged(seen, stats)
        report = control.report(s)
        verdict = report["decision"]["verdict"]
        console.print(render.ab_line(seen, report))
        if verdict in ("promote", "rollback", "blocked"):
            break
    decided = control.decide(s, apply=True)
    timeline.add(test_days[-1], f"A/B verdict: {decided.verdict}: {decided.report['decision']['headline']}")
    console.print(render.ab_summary(decided.report))
    if decided.action.startswith("promoted"):
        timeline.add(test_days[-1], f"{decided.action}; serving follows the registry")
    outcome = Outcome(
        timeline, s.registry.alias("champion"), challenger, decided.verdict, decided.action, decided.report, seen,
        log=log,
    )  # fmt: skip
    return _finish(loop, timeline, outcome)


def _label_and_retrain(loop: Loop, day: int, timeline: Timeline) -> int | None:
    """Annotators label the batch in Label Studio; label_sync commits and retrains. Returns the new challenger."""
    from active_learning.annotators import annotate
    from components.data.ingest import read_labels

    settings = loop.settings
    render.console.rule(f"[bold]day {day}: annotators label in Label Studio; label_sync commits and retrains")
    project = wiring.labeling_project(settings)
    with render.console.status("simulated annotators at work in Label Studio"):
        done = annotate(project, read_labels(loop.feed / "oracle" / "labels"), settings.annotators)
    timeline.add(
        day, f"annotators labelled {done.tasks} posts in Label Studio ({done.named} named a new class, "
        f"{done.wrong} wrong on purpose)",
    )  # fmt: skip
    run = loop.pipeline("label_sync", f"day {day}'s annotations")
    counts = wiring.label_queue(settings).counts()
    timeline.add(day, f"{counts['committed']} labels committed as a snapshot")
    if not run.output:
        if "gate" in run.tasks:
            render.console.print(render.verdict_text(_verdict(run)))
        return None
    registry = wiring.open_registry(settings)
    timeline.add(day, f"version {run.output} registered as @challenger: {_verdict_line(registry, run.output)}")
    return int(run.output)


def _finish(loop: Loop, timeline: Timeline, outcome: Outcome) -> Outcome:
    """The summary a person reads: the timeline, what the models did, the labels, the lift, where to look."""
    from components.simulator.trends import NewClass

    settings, console = loop.settings, render.console
    trend = next((t for t in loop.spec.trends if isinstance(t, NewClass)), None)
    outcome.trend = trend.name if trend else None
    outcome.labels_committed = wiring.label_queue(settings).counts()["committed"]
    console.rule("[bold]6. what happened")
    console.print(render.timeline_table(timeline.events))
    if outcome.challenger is not None:
        registry = wiring.open_registry(settings)
        console.print(render.comparison_table(registry.verdict_of(outcome.challenger), outcome.ab_traffic, trend))
    if outcome.report is not None:
        lift = outcome.report.get("lift") or {}
        console.print(
            f"lift in engagement per exposure: {render.signed_share(lift.get('relative'))} "
            f"(always-valid {1 - settings.ab.alpha:.0%} interval {render.signed_share(lift.get('cs_low'))} to "
            f"{render.signed_share(lift.get('cs_high'))}); decision: {outcome.action}"
        )
    console.print(f"labels bought: {outcome.labels_committed} (queue: `trendloop label status`)")
    console.print(render.where_to_look(settings, loop.log))
    return outcome


def _day_posts(feed: Path, day: int) -> list[FeedPost]:
    from serving.traffic import feed_posts

    return feed_posts(feed, range(day, day + 1))


def _merged(seen: DriveStats | None, stats: DriveStats) -> DriveStats:
    """Two stretches of traffic as one (requests, arms, fit and engagement counts)."""
    if seen is None:
        return stats
    seen.sent += stats.sent
    seen.ok += stats.ok
    seen.feedback += stats.feedback
    seen.seconds += stats.seconds
    seen.latencies_ms += stats.latencies_ms
    for mine, theirs in ((seen.failed, stats.failed), (seen.arms, stats.arms), (seen.engagements, stats.engagements)):
        for key, value in theirs.items():
            mine[key] = mine.get(key, 0) + value
    for mine, theirs in ((seen.judged, stats.judged), (seen.fitted, stats.fitted)):
        for arm, counts in theirs.items():
            mine.setdefault(arm, Counter()).update(counts)
    return seen


def _verdict(run: LocalRun) -> Verdict:
    """The gate's verdict in a run of a pipeline that retrained."""
    from components.model.gate import Verdict

    return Verdict.from_dict(json.loads((run.folder / "gate" / "verdict").read_text()))


def _drift_signals(run: LocalRun) -> str:
    check = json.loads((run.folder / "drift-report" / "check").read_text())
    verdict = check.get("verdict", {})
    signals = [s["name"] for s in verdict.get("signals", []) if s.get("drifted")]
    clusters = check.get("clusters", [])
    tags = f"; emerging cluster {' '.join(clusters[0]['top_hashtags'][:3])}" if clusters else ""
    return f"{', '.join(signals)} (check {check.get('id')}){tags}"


def _verdict_line(registry, version: int) -> str:
    verdict = registry.verdict_of(version)
    if verdict is None:
        return "gate passed"
    trend = next((c for c in verdict.checks if c.name == "newest trend"), None)
    return f"gate passed ({trend.reason})" if trend else "gate passed"


def _start_label_studio(settings: Settings) -> threading.Thread | None:
    """The embedded Label Studio takes 10-15 s to start (a minute more without a prepared database): begin it now.

    A port held by another server fails the job here, not at the push minutes later. None when a
    shared Label Studio is configured (nothing to start)."""
    if settings.labelstudio.url is not None:
        return None
    server = wiring.label_studio_server(settings)
    server.check_port()

    def up() -> None:
        try:
            server.up(settings.labelstudio.start_timeout)
        except TrendloopError as err:  # the push step starts it again and fails with the reason
            logging.getLogger(__name__).warning("Label Studio did not start in the background: %s", err)

    thread = threading.Thread(target=up, name="label-studio", daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _logging_to(path: Path) -> Iterator[Path]:
    """While the job runs, library warnings and log records go to ``path``, not the terminal.

    MLflow's artifact download bars are off (unless MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR is set):
    a bar cannot go to a log file, and the job shows its own progress."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)  # with a handler in place, Python's last-resort printing to stderr stays quiet
    root.setLevel(logging.INFO)
    # an HTTP client's INFO line is its request's URL, query string and all: user ids, post ids, captions
    clients = {name: logging.getLogger(name) for name in ("httpx", "httpcore", "urllib3")}
    client_levels = {name: logger.level for name, logger in clients.items()}
    for logger in clients.values():
        logger.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    bars = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    ours = bars not in os.environ
    if ours:
        os.environ[bars] = "false"
    try:
        yield path
    finally:
        if ours:
            os.environ.pop(bars, None)
        logging.captureWarnings(False)
        for name, logger in clients.items():
            logger.setLevel(client_levels[name])
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
