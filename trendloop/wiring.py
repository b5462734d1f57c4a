"""How settings become running services: each function opens one part of the platform from ``Settings``.

The schema (``trendloop.settings``) says what is configured; these functions decide what
that means: the embedded server or the shared one, the local Ray head or a cluster's. Heavy
clients (MLflow, Feast, Ray Serve, the Label Studio SDK) are imported where they are built,
so reading the settings, and the CLI's help, stay fast.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from active_learning.queue import LabelQueue
from components.errors import ConfigError
from infra.labelstudio import LocalLabelStudio
from infra.ray import LocalRay
from trendloop.settings import Settings

if TYPE_CHECKING:
    from active_learning.labelstudio import LabelingProject
    from components.data.pseudonyms import Pseudonyms
    from components.data.snapshot import Snapshot
    from components.features.side import SideReader
    from components.features.store import Features
    from components.features.sync import SyncReport
    from components.model.registry import Registry
    from components.privacy.forget import Places
    from serving.control import ConfigFor, Serving
    from serving.deploy import ServeAdmin
    from serving.router import Traffic


def pseudonyms(settings: Settings) -> Pseudonyms:
    """Raw user ids to pseudonyms under this home's key (made on first use), knowing who asked to be forgotten."""
    from components.data.pseudonyms import Pseudonyms
    from components.privacy.forget import forgotten

    return Pseudonyms.from_file(settings.key_file, forgotten=forgotten(settings.privacy_dir))


def privacy_places(settings: Settings) -> Places:
    """Everything this home stores data in, for ``forget``: the store, logs, Feast (offline files and online
    rows), the label queue, pipeline outputs, drift checks, the embedded MLflow's artifacts, the job logs, and
    the Label Studio project. Not the simulated feed (``home/feed``): it stands for the social network's own
    data, a source trendloop reads and does not own."""
    from components.data.snapshot import Store
    from components.privacy.forget import Places

    folders = [
        settings.predictions_dir,
        settings.serving_dir,
        settings.features_dir / "sources",
        settings.checks_dir,
        settings.home / "logs",
        settings.home / "mlartifacts",
    ]
    if "://" not in settings.pipeline_root:
        folders.append(Path(settings.pipeline_root))
    return Places(
        store=Store(settings.store_dir),
        folders=folders,
        label_queue=settings.labeling_dir / "queue.db",
        features=partial(open_features, settings),
        label_studio=labeling_project(settings) if _has_label_project(settings) else None,
        versions=lambda: open_registry(settings).versions(),
        audit=settings.privacy_dir,
    )


def _has_label_project(settings: Settings) -> bool:
    """Whether posts were ever pushed to Label Studio from this home (then its project must be reached)."""
    return bool(label_queue(settings).counts().get("pushed", 0)) if settings.labeling_dir.exists() else False


def open_features(settings: Settings) -> Features:
    """The feature store, its definitions applied."""
    from components.features.store import Features

    features = Features.open(settings.features_dir, settings.features.config)
    features.apply()
    return features


def side_reader(settings: Settings) -> SideReader:
    """Side inputs of fusion taggers, from this feature store (opened on first use only)."""
    from components.features.side import SideReader

    return SideReader(partial(open_features, settings), settings.features.device)


def label_queue(settings: Settings) -> LabelQueue:
    """The labelling queue: which posts were selected, pushed, annotated and decided."""
    return LabelQueue(settings.labeling_dir / "queue.db")


def label_studio_server(settings: Settings) -> LocalLabelStudio:
    """The embedded Label Studio: its state under <home>/services, images read from the store."""
    ls = settings.labelstudio
    return LocalLabelStudio(
        settings.home / "services" / "labelstudio", ls.port, ls.version, settings.store_dir, database=ls.database
    )


def labeling_project(settings: Settings) -> LabelingProject:
    """The Label Studio project of these settings: the shared server's, or the embedded one's."""
    from active_learning.labelstudio import LabelingProject

    ls = settings.labelstudio
    if ls.url is not None:
        if ls.token is None:
            raise ConfigError("labelstudio.url is set but labelstudio.token is not (TRENDLOOP_LABELSTUDIO__TOKEN)")
        return LabelingProject(ls.url, ls.token, ls.project, ls.timeout)
    server = label_studio_server(settings)
    return LabelingProject(server.url, server.credentials().token, ls.project, ls.timeout)


def registry_spec(settings: Settings) -> dict:
    """The ``Registry`` arguments of these settings, as plain values: what a pipeline step or a Serve replica
    opens the registry with (nothing is opened or created here)."""
    embedded = settings.registry.tracking_uri is None
    return {
        "tracking_uri": settings.tracking_uri,
        "registry_uri": settings.registry.registry_uri or settings.tracking_uri,
        "experiment": settings.registry.experiment,
        "artifact_location": settings.registry.artifact_location
        or ((settings.home / "mlartifacts").resolve().as_uri() if embedded else None),
        "model_name": settings.registry.model_name,
        "cache_dir": str((settings.home / "models").resolve()),
    }


def open_registry(settings: Settings) -> Registry:
    """MLflow's tracking server and model registry: the configured one, or SQLite under ``home``; requests to a
    server are tried within ``[registry] request_*`` (for this process: MLflow reads them from the environment)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    from components.model.registry import Registry

    spec, budget = registry_spec(settings), settings.registry
    return Registry(
        **{**spec, "cache_dir": Path(spec["cache_dir"])},
        side_reader=side_reader(settings),
        retries=budget.request_retries,
        backoff=budget.request_backoff,
        timeout=budget.request_timeout,
    )


def local_ray(settings: Settings) -> LocalRay:
    """The embedded Ray head (not started): its state under ``<home>/serving/ray``."""
    sv = settings.serving
    return LocalRay(settings.serving_dir / "ray", sv.ray_ports, sv.ray_cpus, sv.ray_gpus)


def ensure_ray(settings: Settings) -> bool:
    """Start the local Ray head unless one runs or a cluster is configured; returns whether it started."""
    return settings.serving.ray_dashboard is None and local_ray(settings).up(settings.serving.port)


def check_ray_ports(settings: Settings) -> None:
    """Raise, naming the setting, if a port the local head or Serve's proxy would bind is taken; nothing to check
    with a cluster configured or this home's own head running (those ports are its own)."""
    if settings.serving.ray_dashboard is None:
        ray = local_ray(settings)
        if not ray.running():
            ray.check_ports(settings.serving.port)


def report_token_file(settings: Settings) -> Path | None:
    """Where the report token is when the app listens beyond loopback, else None (nothing is made here)."""
    from serving.access import is_loopback

    if is_loopback(settings.serving.host):
        return None
    return (settings.serving.report_token_file or settings.home / "secrets" / "report.token").resolve()


def make_report_token(settings: Settings) -> Path | None:
    """``report_token_file``, the token written there first if it is not (mode 0600): before the app deploys."""
    from serving.access import ensure_token

    path = report_token_file(settings)
    return None if path is None else ensure_token(path)


def serve_args(settings: Settings) -> dict:
    """The serving app's ``args``: where replicas find models and write logs (absolute paths), and the report
    token's file beyond loopback (the path only: the token stays out of every Serve config; nothing is made)."""
    token_file = report_token_file(settings)
    return {
        "models": {"registry": registry_spec(settings)},
        "logs": {
            "predictions": str(settings.predictions_dir.resolve()),
            "feedback": str((settings.serving_dir / "feedback").resolve()),
            "experiments": str((settings.serving_dir / "experiments").resolve()),
        },
        "top_k": settings.serving.top_k,
        "threads": settings.serving.threads,
        "limits": {"max_bytes": settings.serving.max_upload_bytes, "max_pixels": settings.ingest.max_pixels},
        "max_upload_bytes": settings.serving.max_upload_bytes,
        "flush_every_s": settings.serving.flush_every_s,
        "pre_days": settings.serving.pre_days,
        "features": {"data_dir": str(settings.features_dir.resolve()), "config": settings.features.config},
        "cuped_covariate": settings.serving.cuped_covariate,
        "arm_timeout_s": settings.serving.arm_timeout_s,
        "retry_after_s": settings.serving.retry_after_s,
        "rate_per_user_s": settings.serving.rate_per_user_s,
        "burst": settings.serving.burst,
        "report_token_file": None if token_file is None else str(token_file),
        "privacy": {"key_file": str(settings.key_file.resolve())},  # the replica reads the key: it never travels
    }


def serve_admin(settings: Settings) -> ServeAdmin:
    """Ray Serve's REST API: the cluster's (serving.ray_dashboard) or the local head's."""
    from serving.deploy import ServeAdmin

    return ServeAdmin(settings.serving.ray_dashboard or local_ray(settings).dashboard_url)


def serve_config_for(settings: Settings) -> ConfigFor:
    """The Serve config of these settings for given arm versions and router knobs (opens nothing)."""
    from serving.deploy import serve_config

    sv = settings.serving
    args = serve_args(settings)
    arms = {"champion": sv.champion, "challenger": sv.challenger}

    def config_for(versions: dict[str, int | str | None], traffic: Traffic) -> dict:
        return serve_config(args, versions, traffic, arms, sv.router, sv.host, sv.port, sv.route_prefix)

    return config_for


def serving_control(settings: Settings) -> Serving:
    """The serving app of these settings: the cluster's (serving.ray_dashboard) or the local head's."""
    from components.data.predlog import PredictionLog
    from serving.control import Serving
    from serving.eventlog import FeedbackLog
    from serving.experiment import Experiments
    from serving.report import covariate_from

    sv = settings.serving
    predictions, feedback = PredictionLog(settings.predictions_dir), FeedbackLog(settings.serving_dir / "feedback")
    return Serving(
        admin=serve_admin(settings),
        registry=open_registry(settings),
        experiments=Experiments(settings.serving_dir / "experiments"),
        config_for=serve_config_for(settings),
        split=sv.split,
        rule=settings.ab,
        predictions=predictions,
        feedback=feedback,
        pre_days=sv.pre_days,
        covariate=covariate_from(
            sv.cuped_covariate, predictions, feedback, sv.pre_days, partial(open_features, settings)
        ),
    )


def sync_features(settings: Settings, head: Snapshot) -> SyncReport:
    """Write what the offline feature store lacks from ``head`` and the champion's logged predictions."""
    from components.data.predlog import PredictionLog
    from components.features.sync import sync

    return sync(open_features(settings), head, PredictionLog(settings.predictions_dir), settings.features.device)
