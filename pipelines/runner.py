"""Compile the pipelines, run them locally (``kfp.local``), or submit and schedule them on a KFP cluster.

Locally every step runs as a subprocess in this environment (SubprocessRunner), its
outputs under ``root/<pipeline>-<timestamp>/``; with caching on, a step whose
component and inputs match an earlier successful run returns that run's outputs
instead of running again (kfp.local's file cache under ``root/.kfp_cache``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from components.data.sources import fingerprint
from components.errors import ConfigError, TrendloopError
from pipelines.components import StepOptions
from pipelines.definitions import pipelines
from trendloop.settings import Settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")
STATUS = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
ERROR_LINE = re.compile(r"^\s*((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*)$")


class PipelineError(TrendloopError):
    """A pipeline run failed, was refused, or could not be submitted."""


@dataclass
class LocalRun:
    pipeline: str
    run_name: str  # the run's folder under the pipeline root
    folder: Path
    output: object  # the pipeline's return value (e.g. the registered version), if it has one
    tasks: dict[str, str] = field(default_factory=dict)  # task -> SUCCESS / FAILURE, in the order they ended
    cached: list[str] = field(default_factory=list)  # tasks whose outputs came from the cache
    log: Path | None = None

    def summary(self) -> str:
        reused = f", {len(self.cached)} reused from the cache ({', '.join(self.cached)})" if self.cached else ""
        return f"run {self.run_name}: {len(self.tasks)} steps ran{reused}; outputs in {self.folder}"

    def outcome(self) -> str | None:
        """What the run's output means, in a line (None when there is nothing to say)."""
        if self.pipeline == "drift_monitor":
            return "drift found: a batch went to Label Studio" if self.output else "no drift"
        if self.output:
            return f"registered version {self.output}"
        if "skip" in self.tasks:
            return "no retrain was due"
        if "hold" in self.tasks:
            return "no version registered: the gate refused the model (its MLflow run keeps the verdict)"
        return None


def step_options(settings: Settings, cache: bool = True) -> StepOptions:
    """What every step gets on a cluster (``[pipelines] volume`` mounted at ``home``, ``[pipelines] secrets``),
    and whether steps may reuse outputs (``cache`` and ``[pipelines] cache`` both allow it)."""
    pl = settings.pipelines
    if pl.volume is not None and not settings.home.is_absolute():
        raise ConfigError(f"home {settings.home} must be an absolute path to mount [pipelines] volume there")
    return StepOptions(
        pl.volume, str(settings.home), dict(pl.secrets), cache and pl.cache, pl.train_gpus, pl.train_accelerator
    )


def compile_all(out_dir: Path, image: str, options: StepOptions | None = None) -> list[Path]:
    """Write each pipeline's IR YAML to ``out_dir/<name>.yaml``; returns the files."""
    from kfp import compiler  # noqa: PLC0415 - kfp's import is slow; only pipeline commands pay it

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in pipelines(image, options).items():
        path = out_dir / f"{name}.yaml"
        tmp = path.with_name(f".{name}.tmp.yaml")
        compiler.Compiler().compile(pipeline, str(tmp))
        tmp.replace(path)  # a reader never sees half a file
        written.append(path)
    return written


def pipeline_arguments(settings: Settings, name: str, params: list[str]) -> dict[str, object]:
    """``k=v`` strings as arguments of pipeline ``name``, with the ``config`` parameter (and, for a local source,
    its fingerprint) filled in from ``settings``. Every other setting a step reads comes through ``config``."""
    inputs = _pipeline(name, settings.pipelines.image).component_spec.inputs or {}
    names = [k for k in inputs if k != "config"]
    arguments: dict[str, object] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ConfigError(f"--param {item!r}: {name} takes {', '.join(f'{k}=...' for k in names)}")
        arguments[key] = value
    for key in ("source", "labels"):  # steps run elsewhere: a path this machine sees is passed absolute
        if arguments.get(key) and Path(str(arguments[key])).exists():
            arguments[key] = str(Path(str(arguments[key])).resolve())
    if name == "continual_training":
        arguments.setdefault("source", str(settings.feed_dir.resolve()))
        source = Path(str(arguments["source"]))
        if "source_version" not in arguments:
            # an unchanged source reuses its cached ingest; one this machine cannot see (a cluster's volume)
            # is read again by every run
            seen = source.exists()
            arguments["source_version"] = fingerprint(source) if seen else f"unseen-{datetime.now(UTC).isoformat()}"
    missing = [k for k, v in inputs.items() if k != "config" and k not in arguments and v.default is None]
    if missing:
        raise ConfigError(f"{name} needs --param {missing[0]}=...")
    return {"config": settings.for_pipeline()} | arguments


def _pipeline(name: str, image: str, options: StepOptions | None = None) -> Callable:
    found = pipelines(image, options)
    if name not in found:
        raise ConfigError(f"no pipeline {name!r}: choose one of {', '.join(found)}")
    return found[name]


CACHE_HIT = re.compile(r"Task '?([\w-]+)'? cache hit")


def _summary(line: str) -> str | None:
    """A step's end as one line: ``  train: SUCCESS`` or ``  ingest: reused from the cache``."""
    if found := STATUS.search(line):
        return f"  {found.group(1)}: {found.group(2)}"
    if found := CACHE_HIT.search(line):
        return f"  {found.group(1)}: reused from the cache"
    return None


class _Tee(io.TextIOBase):
    """Keeps kfp.local's output in a log file and shows the task status lines (or everything)."""

    def __init__(
        self, log: io.TextIOBase, echo: bool, verbose: bool, on_step: Callable[[str, str], None] | None = None
    ):
        self.log, self.echo, self.verbose, self.on_step = log, echo, verbose, on_step
        self.out = sys.stdout  # the terminal, taken before stdout is redirected here
        self.lines: list[str] = []
        self._partial = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        for line in done:
            plain = ANSI.sub("", line)
            self.lines.append(plain)
            if self.on_step is not None and (found := STATUS.search(plain) or CACHE_HIT.search(plain)):
                self.on_step(found.group(1), found.group(2) if found.re is STATUS else "CACHED")
            if self.echo:
                shown = plain if self.verbose else _summary(plain)
                if shown is not None:
                    self.out.write(shown + "\n")
                    self.out.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()


def run_local(
    name: str,
    arguments: dict[str, object],
    root: Path,
    image: str,
    cache: bool = True,
    echo: bool = False,
    verbose: bool = False,
    env: dict[str, str] | None = None,
    on_step: Callable[[str, str], None] | None = None,
) -> LocalRun:
    """Run pipeline ``name`` with kfp.local's SubprocessRunner; raises ``PipelineError`` naming the failed step.

    ``env`` (secrets kept out of the run's parameters) reaches the steps' processes;
    ``on_step(task, state)`` hears each step end (SUCCESS, FAILURE, or CACHED when reused).
    """
    from kfp import local  # noqa: PLC0415

    pipeline = _pipeline(name, image, StepOptions(cache=cache))
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        workspace_root=str(root / ".workspace"),
        enable_caching=cache,
        cache_root=str(root / ".kfp_cache"),
        raise_on_error=True,
    )
    started = time.time()
    log_path = root / "logs" / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    failure: Exception | None = None
    with log_path.open("w") as log:
        tee = _Tee(log, echo, verbose, on_step)
        with (
            _environment(env or {}),
            _cache_hits_logged(tee),
            contextlib.redirect_stdout(tee),
            warnings.catch_warnings(),
        ):
            # kfp.local warns that our image is not a Python one: it is, and the subprocess runs this environment
            warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
            try:
                task = pipeline(**arguments)
            except RuntimeError as err:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed"
                failure, task = err, None
    tasks = {m.group(1): m.group(2) for m in map(STATUS.search, tee.lines) if m}
    cached = [m.group(1) for m in map(CACHE_HIT.search, tee.lines) if m]
    folder = _newest_run(root, pipeline.name, started)
    run = LocalRun(name, folder.name if folder else "", folder or root, None, tasks, cached, log_path)
    if failure is not None:
        raise PipelineError(_failure_message(name, failure, tee.lines, log_path))
    run.output = _single_output(task)
    return run


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _cache_hits_logged(tee: _Tee) -> Iterator[None]:
    """kfp.local reports cache hits at INFO on the root logger, outside its own log context: route them to the tee."""
    import logging  # noqa: PLC0415

    handler = logging.StreamHandler(tee)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: "cache hit" in record.getMessage())
    logger = logging.getLogger()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _newest_run(root: Path, pipeline_name: str, since: float) -> Path | None:
    runs = [p for p in root.glob(f"{pipeline_name}-*") if p.is_dir() and p.stat().st_mtime >= since - 1]
    return max(runs, key=lambda p: p.stat().st_mtime, default=None)


def _single_output(task: object) -> object:
    outputs = getattr(task, "outputs", None) or {}
    return outputs.get("Output") if isinstance(outputs, dict) else None


def _failure_message(name: str, err: Exception, lines: list[str], log: Path) -> str:
    failed = [task for task, state in (m.groups() for m in map(STATUS.search, lines) if m) if state == "FAILURE"]
    errors = [
        m.group(1).strip() for m in map(ERROR_LINE.match, lines) if m and "finished with status" not in m.group(1)
    ]
    step = failed[0] if failed else "?"
    why = errors[-1] if errors else str(err).splitlines()[0]
    return f"pipeline {name} failed at step {step}: {why} (log: {log})"


# -- a KFP cluster ------------------------------------------------------------------------------------------


def _client(host: str, namespace: str | None):
    import kfp  # noqa: PLC0415

    try:
        return kfp.Client(host=host, namespace=namespace)
    except Exception as err:  # noqa: BLE001 - kfp raises anything from urllib3 to its own errors
        raise PipelineError(f"cannot reach the KFP API at {host}: {type(err).__name__}: {err}") from None


def submit(
    host: str,
    name: str,
    arguments: dict[str, object],
    image: str,
    experiment: str,
    namespace: str | None = None,
    root: str | None = None,
    options: StepOptions | None = None,
) -> tuple[str, str]:
    """Submit one run of pipeline ``name`` to the KFP cluster at ``host``; returns (run id, run URL).

    Whether steps may reuse outputs is compiled into each task (``options.cache``): the
    client's run-wide switch would override the steps that must never be reused, and
    would not reach the steps nested in ``retrain`` or in a condition.
    """
    pipeline = _pipeline(name, image, options)
    client = _client(host, namespace)
    run_name = f"{name}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    try:
        result = client.create_run_from_pipeline_func(
            pipeline,
            arguments=arguments,
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=root,  # None: the cluster's default artifact store
            enable_caching=None,
        )
    except Exception as err:  # noqa: BLE001
        raise PipelineError(f"KFP at {host} refused the run: {type(err).__name__}: {err}") from None
    return result.run_id, f"{host.rstrip('/')}/#/runs/details/{result.run_id}"


def schedule(
    host: str,
    name: str,
    arguments: dict[str, object],
    image: str,
    experiment: str,
    cron: str,
    namespace: str | None = None,
    root: str | None = None,
    options: StepOptions | None = None,
    max_concurrency: int = 1,
) -> str:
    """Create a recurring run of ``name`` on the cluster (cron with seconds, KFP's format); returns its id.

    Scheduled runs do not reuse cached steps: each reads the source and the logs as they
    are when it fires. Ingest and snapshot are idempotent (nothing new: HEAD unchanged),
    but each firing trains again: schedule ``continual_training`` no more often than
    fresh labelled posts arrive, and ``label_sync`` (which retrains only on enough new
    labels) as often as you like.
    """
    options = replace(options or StepOptions(), cache=False)
    _pipeline(name, image)  # an unknown name fails before the cluster is asked anything
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        [path] = [p for p in compile_all(Path(tmp), image, options) if p.stem == name]
        return _create_recurring(
            client, host, name, path, arguments, experiment, cron, namespace, root, max_concurrency
        )


def _create_recurring(
    client, host: str, name: str, path: Path, arguments: dict, experiment: str, cron: str, namespace: str | None,
    root: str | None, max_concurrency: int,
) -> str:  # fmt: skip
    try:
        found = client.create_experiment(experiment, namespace=namespace)
        job = client.create_recurring_run(
            experiment_id=found.experiment_id,
            job_name=f"{name}-every-{re.sub(r'[^0-9a-z]+', '-', cron.lower()).strip('-')}",
            cron_expression=cron,
            pipeline_package_path=str(path),
            params=arguments,
            max_concurrency=max_concurrency,
            pipeline_root=root,
            enable_caching=None,  # compiled into the tasks (options.cache)
        )
    except Exception as err:  # noqa: BLE001
        raise PipelineError(f"KFP at {host} refused the schedule: {type(err).__name__}: {err}") from None
    return job.recurring_run_id
