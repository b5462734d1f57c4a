"""The ``trendloop`` command line. Each command resolves settings and calls one function."""

from __future__ import annotations

import json
import os
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from components.errors import ConfigError, TrendloopError
from components.ingest import ingest as ingest_source
from components.ingest import read_labels
from components.simulator.feed import FeedSpec
from components.simulator.feed import simulate as simulate_feed
from components.simulator.trends import parse_trend
from components.snapshot import Store
from trendloop import render
from trendloop.demo import run_demo
from trendloop.settings import Settings, load_settings

app = typer.Typer(
    help="trendloop: continual learning for the images people post.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
snapshot_app = typer.Typer(help="List, inspect, compare and verify snapshots.", no_args_is_help=True)
config_app = typer.Typer(help="Show the settings in force.", no_args_is_help=True)
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(config_app, name="config")


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


def _date(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r} is not a date (YYYY-MM-DD) or date and time") from None
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp


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
    settings = _settings(ctx)
    window = _date(since, "--since"), _date(until, "--until")
    given = read_labels(labels) if labels else None
    with render.progress_bar("ingesting") as update:
        report = ingest_source(
            source,
            Store(settings.store_dir),
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


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context) -> None:
    """Every snapshot, oldest first; HEAD is marked."""
    store = Store(_settings(ctx).store_dir)
    head = store.head()
    render.console.print(render.snapshots_table(store.list(), head.id if head else None))


@snapshot_app.command("show")
def snapshot_show(
    ctx: typer.Context, ref: Annotated[str, typer.Argument(help="HEAD, HEAD~N, an id or id prefix.")] = "HEAD"
) -> None:
    """One snapshot: parent, sources, label counts, manifest path."""
    render.console.print(render.snapshot_table(Store(_settings(ctx).store_dir).resolve(ref)))


@snapshot_app.command("diff")
def snapshot_diff(ctx: typer.Context, old: str = typer.Argument("HEAD~1"), new: str = typer.Argument("HEAD")) -> None:
    """What changed between two snapshots: posts added and removed, labels changed."""
    store = Store(_settings(ctx).store_dir)
    render.console.print(render.diff_table(store.diff(store.resolve(old), store.resolve(new))))


@snapshot_app.command("verify")
def snapshot_verify(
    ctx: typer.Context,
    ref: str = typer.Argument("HEAD"),
    images: Annotated[bool, typer.Option(help="Also re-hash every image (slower).")] = True,
) -> None:
    """Check a snapshot still matches its content hash and every image its pixel hash."""
    store = Store(_settings(ctx).store_dir)
    snap = store.resolve(ref)
    problems = store.verify(snap, images=images)
    if problems:
        for p in problems[:20]:
            render.err_console.print(f"  {p}")
        raise TrendloopError(f"snapshot {snap.id} fails verification: {len(problems)} problem(s)")
    render.console.print(f"snapshot {snap.id}: {snap.posts} posts, content and images match")


@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """The resolved settings (defaults, config file and TRENDLOOP_* variables merged), as JSON."""
    render.console.print_json(json.dumps(_settings(ctx).model_dump(mode="json")))


@app.command()
def demo(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=2, help="Days of feed to simulate.")] = 21,
    seed_days: Annotated[int, typer.Option(min=1, help="First days whose posts arrive labelled (the seed set).")] = 7,
    posts_per_day: Annotated[int, typer.Option(min=1)] = 200,
) -> None:
    """The main job: simulate a feed, ingest a labelled seed week, then the unlabelled days after it."""
    run_demo(_settings(ctx), days=days, seed_days=seed_days, posts_per_day=posts_per_day)


def main(argv: list[str] | None = None) -> None:
    """Entry point: a ``TrendloopError`` becomes one line on stderr and exit code 1."""
    try:
        app(args=argv, standalone_mode=True)
    except TrendloopError as err:
        render.err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        render.err_console.print("interrupted")
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if os.environ.get("TRENDLOOP_DEBUG"):
            traceback.print_exc()
        render.err_console.print(
            f"[red]error:[/red] {type(err).__name__}: {err} (TRENDLOOP_DEBUG=1 shows the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
