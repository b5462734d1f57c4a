"""Typed settings, one section per concern, from one TOML file plus ``TRENDLOOP_*`` variables.

Precedence, highest first: command-line flags (passed as arguments by the CLI),
environment variables (``TRENDLOOP_HOME``, ``TRENDLOOP_INGEST__WORKERS=2``: a double
underscore steps into a section), the config file, the defaults below. The file is
``--config PATH``, else ``$TRENDLOOP_CONFIG``, else ``./trendloop.toml`` if present;
the embedded default needs none.

This module is the schema: what can be configured, its defaults and its validation.
What the settings open (the registry, the feature store, Label Studio, the serving app)
is built in ``trendloop.wiring``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from active_learning.annotators import AnnotatorsConfig
from active_learning.strategies import SelectionConfig
from components.data.validate import ImageLimits
from components.errors import ConfigError
from components.model.gate import PromotionGate
from components.model.train_config import TrainConfig
from components.monitor.drift import DriftConfig
from components.monitor.emerging import EmergingConfig
from components.monitor.triggers import RetrainPolicy
from components.simulator.feed import FeedSpec
from infra.ray import RayPorts
from serving.abtest import DecisionRule
from serving.deploy import ArmSpec, RouterSpec

DEFAULT_CONFIG = Path("trendloop.toml")


class IngestSettings(BaseModel):
    """How uploads are validated and normalised."""

    model_config = ConfigDict(extra="forbid")
    max_bytes: int = Field(default=50 * 2**20, gt=0)  # largest upload accepted, in bytes
    max_pixels: int = Field(default=50_000_000, gt=0)  # largest width x height, checked before decoding
    max_side: int | None = Field(default=1080, gt=0)  # longer side scaled down to this; null keeps full size
    workers: int = Field(default=0, ge=0)  # validation processes; 0 means one per CPU core

    def limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels, max_side=self.max_side)

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1


class RegistrySettings(BaseModel):
    """Where runs are tracked and models registered (MLflow). Unset URIs give the embedded default."""

    model_config = ConfigDict(extra="forbid")
    tracking_uri: str | None = None  # e.g. http://mlflow:5000; unset: sqlite:///<home>/mlflow.db
    registry_uri: str | None = None  # unset: the tracking URI
    artifact_location: str | None = None  # for a new experiment; unset: <home>/mlartifacts (embedded default)
    experiment: str = "trendloop"
    model_name: str = "trendloop-tagger"  # the registered model every version belongs to
    # how long a request the tracking server does not answer is tried (MLflow's own default: about 4 minutes)
    request_retries: int = Field(default=4, ge=0, le=10)  # retries of a refused, cut, timed-out or 429/5xx request
    request_backoff: int = Field(default=1, ge=0, le=120)  # s; retry n waits backoff*2^(n-1) (+<1 s), the 1st none
    request_timeout: int = Field(default=30, gt=0)  # s one request may take to connect or to answer


class LabelStudioSettings(BaseModel):
    """Where annotators label. Unset url and token give the embedded server trendloop starts itself."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None  # a shared Label Studio, e.g. http://label-studio:8080; unset: the embedded one
    token: str | None = None  # its API token (legacy or personal access token); unset: the embedded admin's
    port: int = Field(default=8089, gt=0, lt=65536)  # the embedded server's port on 127.0.0.1
    version: str = "1.23.2"  # the label-studio release the embedded server runs
    # the embedded server's database: unset, SQLite in its state folder; postgresql://user:password@host:port/name
    # for a PostgreSQL one (better set as TRENDLOOP_LABELSTUDIO__DATABASE: it holds a password)
    database: str | None = None
    project: str = Field(default="trendloop: what is this post about?", min_length=3, max_length=50)  # found by title
    image_url: str = "/data/local-files/?d={image}"  # a task's image; {image} is its path in the store
    serve_store: bool = True  # connect a local-files storage to the store (the server must see its disk)
    overlap: int = Field(default=1, ge=1)  # annotations per task; a majority of them decides
    min_agreement: float = Field(default=0.0, ge=0, le=1)  # least share of a post's votes its label needs to train on
    timeout: float = Field(default=30.0, gt=0)  # seconds per request
    start_timeout: float = Field(default=600.0, gt=0)  # seconds a start may take (unprepared, it migrates)

    @property
    def min_votes(self) -> int:
        """Votes a post needs before its label is decided: a majority of ``overlap``."""
        return self.overlap // 2 + 1


class ServingSettings(BaseModel):
    """Where and how the champion and challenger serve (Ray Serve). Unset ray_dashboard: a local Ray head."""

    model_config = ConfigDict(extra="forbid")
    ray_dashboard: str | None = None  # a Ray cluster's dashboard, e.g. http://raycluster-head-svc:8265
    ray_ports: RayPorts = Field(default_factory=RayPorts)  # the local head's ports on 127.0.0.1
    ray_cpus: int | None = Field(default=None, ge=1)  # CPUs the local head offers; unset: all of them
    ray_gpus: int | None = Field(default=None, ge=0)  # GPUs the local head offers; unset: all it finds
    host: str = "127.0.0.1"  # where the HTTP proxy listens; beyond loopback the report surfaces need a token
    # that token's file (made on first use, mode 0600; replicas get its path, never the token); unset:
    # <home>/secrets/report.token. Read only when host is not a loopback address
    report_token_file: Path | None = None
    port: int = Field(default=8000, gt=0, lt=65536)
    route_prefix: str = "/"
    champion: ArmSpec = Field(default_factory=ArmSpec)  # replicas, CPUs, GPUs (fractions share one) and batching
    challenger: ArmSpec = Field(default_factory=ArmSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    split: float = Field(default=0.5, ge=0, le=1)  # the challenger's share of users when a test starts
    top_k: int = Field(default=3, ge=1)  # tags returned per image
    threads: int = Field(default=1, ge=1)  # torch threads per arm replica
    max_upload_bytes: int = Field(default=10 * 2**20, gt=0)  # larger uploads get 413
    flush_every_s: float = Field(default=1.0, gt=0)  # how often queued log records are written
    pre_days: float = Field(default=14.0, ge=0)  # the CUPED pre-period before a test starts
    # CUPED's pre-test number per user: serving_log (engagement with served tags over pre_days), or a user
    # feature read from Feast at the test's start, e.g. user_profile_fv:engagement_rate_28d
    cuped_covariate: str = Field(default="serving_log", pattern=r"^(serving_log|[A-Za-z0-9_]+:[A-Za-z0-9_]+)$")
    start_timeout: float = Field(default=600.0, gt=0)  # seconds `serve up` waits for the app
    # the router's wait for one arm (a replica died, its node is gone or overloaded) before it asks the other
    arm_timeout_s: float = Field(default=10.0, gt=0)
    retry_after_s: int = Field(default=5, ge=0)  # the Retry-After (seconds) of a 503 when neither arm answers
    # per-user limit on /predict (each router replica's own): requests a second and the burst above it; past it 429
    # with Retry-After. 0: no limit. The defaults sit far above what one person posts and above the simulated
    # traffic (serving.traffic picks a random viewer of 1,200 in the demo, 2,000 in the benchmarks, per request:
    # under 2 a second each even at 2,000 requests a second; the smallest test audience sends 120 over 50 viewers)
    rate_per_user_s: float = Field(default=10.0, ge=0)
    burst: int = Field(default=50, ge=1)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.route_prefix.rstrip('/')}"


class FeatureSettings(BaseModel):
    """Where the loop's features live (Feast). The embedded default needs nothing set."""

    model_config = ConfigDict(extra="forbid")
    # a file in feature_repo/ (feature_store.redis.yaml for a cluster: Redis online store) or an absolute path
    config: str = "feature_store.yaml"
    data_dir: Path | None = None  # Feast's repo path: sources, registry and online store files; unset: <home>/features
    on_ingest: bool = True  # ingest and label commits write the offline store (and push labels online)
    device: str = "cpu"  # where the caption encoder runs


class PrivacySettings(BaseModel):
    """How personal data is kept: only as keyed pseudonyms (components.privacy)."""

    model_config = ConfigDict(extra="forbid")
    # the pseudonym key (HMAC); unset: <home>/secrets/pseudonym.key, made on first use with mode 0600. On a
    # cluster, the state volume's, or a mounted Kubernetes Secret's path. Never logged, never in a run's config
    key_file: Path | None = None


class PipelineSettings(BaseModel):
    """Where the loop's Kubeflow pipelines run. Unset host: the embedded default (kfp.local, subprocesses)."""

    model_config = ConfigDict(extra="forbid")
    host: str | None = None  # a KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80; unset: run locally
    namespace: str | None = None  # the cluster's namespace (multi-user Kubeflow); unset: the client's default
    experiment: str = "trendloop"  # the KFP experiment runs are filed under
    image: str = "trendloop:0.1.0"  # the project's image (infra/Dockerfile) every step runs in on a cluster
    root: str | None = None  # where step outputs go: a local folder or gs://, s3://, minio://; unset: <home>/pipelines
    volume: str | None = None  # cluster: a ReadWriteMany PVC holding `home`, mounted there in every step
    # cluster: environment variables every step reads from Kubernetes secrets, "secret-name/key" each, e.g.
    # {TRENDLOOP_LABELSTUDIO__TOKEN = "label-studio/token", TRENDLOOP_REDIS = "feast-redis/url"}
    secrets: dict[str, str] = Field(default_factory=dict)

    @field_validator("secrets")
    @classmethod
    def _secret_refs(cls, value: dict[str, str]) -> dict[str, str]:
        for env, ref in value.items():
            name, _, key = ref.partition("/")
            if not (env and name and key):
                raise ValueError(f'{env} = {ref!r}: use "secret-name/key"')
        return value

    cache: bool = True  # reuse a step's outputs when its inputs did not change (`--no-cache` per run)
    # cluster: GPUs the train step's pod asks for, and their resource name; with [train] processes = 0 it
    # trains data-parallel on all of them (one process each). 0: the step asks for none
    train_gpus: int = Field(default=0, ge=0)
    train_accelerator: str = "nvidia.com/gpu"


class Settings(BaseSettings):
    """Everything trendloop reads from configuration. Nothing else reads the environment."""

    model_config = SettingsConfigDict(env_prefix="TRENDLOOP_", env_nested_delimiter="__", extra="forbid")
    read_environment: ClassVar[bool] = True  # False for settings a pipeline run passed to its steps
    home: Path = Path(".trendloop")  # all state of the embedded default lives under this folder
    simulate: FeedSpec = Field(default_factory=FeedSpec)  # the simulated feed's scenario
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)  # how taggers are trained and fine-tuned
    gate: PromotionGate = Field(default_factory=PromotionGate)  # what a challenger must pass
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    drift: DriftConfig = Field(default_factory=DriftConfig)  # how drift checks test the traffic
    emerging: EmergingConfig = Field(default_factory=EmergingConfig)  # what counts as an emerging trend
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)  # when a retrain is due
    labelstudio: LabelStudioSettings = Field(default_factory=LabelStudioSettings)
    active_learning: SelectionConfig = Field(default_factory=SelectionConfig)  # which posts annotators see
    annotators: AnnotatorsConfig = Field(default_factory=AnnotatorsConfig)  # the simulated ones (demo, tests)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    ab: DecisionRule = Field(default_factory=DecisionRule)  # the A/B decision rule each new test declares
    features: FeatureSettings = Field(default_factory=FeatureSettings)  # the Feast store
    pipelines: PipelineSettings = Field(default_factory=PipelineSettings)  # Kubeflow Pipelines
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)  # pseudonymous users

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file's contents arrive as init values; the environment overrides them.
        return (env_settings, init_settings) if cls.read_environment else (init_settings,)

    @property
    def store_dir(self) -> Path:
        """The image store, snapshots, ingest reports and quarantine."""
        return self.home / "store"

    @property
    def features_dir(self) -> Path:
        """Feast's repo path: where feature sources (and, embedded, its registry and online store) live."""
        return self.features.data_dir or self.home / "features"

    @property
    def runs_dir(self) -> Path:
        """Training runs' checkpoints, keyed by what decides their result."""
        return self.home / "runs"

    @property
    def predictions_dir(self) -> Path:
        """The prediction log: requests the app served, and stored posts scored in batches."""
        return self.home / "predictions"

    @property
    def checks_dir(self) -> Path:
        """One folder per drift check: drift.json and Evidently's drift.html."""
        return self.home / "drift"

    @property
    def labeling_dir(self) -> Path:
        """The labelling queue (queue.db): selected, pushed, annotated and decided posts."""
        return self.home / "labeling"

    def local_files(self) -> Path | None:
        """The folder Label Studio reads task images from, when it serves them from the store."""
        return (self.store_dir / "images").resolve() if self.labelstudio.serve_store else None

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    @property
    def key_file(self) -> Path:
        """The pseudonym key (a file: its path travels, never its bytes)."""
        return self.privacy.key_file or self.home / "secrets" / "pseudonym.key"

    @property
    def privacy_dir(self) -> Path:
        """The audit of deletions (audit.jsonl, append only)."""
        return self.home / "privacy"

    @property
    def serving_dir(self) -> Path:
        """Feedback log, experiment records and the local Ray head's state."""
        return self.home / "serving"

    @property
    def pipeline_root(self) -> str:
        """Where pipeline steps write their outputs (and kfp.local its cache)."""
        return self.pipelines.root or str((self.home / "pipelines").resolve())

    def for_pipeline(self) -> str:
        """These settings as a pipeline's ``config`` parameter: JSON, paths absolute, no secrets.

        Steps run elsewhere (another process, a pod), so relative paths are resolved
        here; the Label Studio token stays out of run specs and reaches steps through
        ``TRENDLOOP_LABELSTUDIO__TOKEN`` (a Kubernetes secret on a cluster).
        """
        resolved = self.model_copy(
            update={
                "home": self.home.resolve(),
                "features": self.features.model_copy(update={"data_dir": self.features_dir.resolve()}),
                "privacy": self.privacy.model_copy(update={"key_file": self.key_file.resolve()}),
                "labelstudio": self.labelstudio.model_copy(update={"token": None}),
            }
        )
        return resolved.model_dump_json()

    def for_step(self, reads: Iterable[str]) -> str:
        """Only ``home`` and the sections ``reads`` names, as JSON: one pipeline step's ``config`` (from the
        settings ``for_pipeline`` gave the run, so paths are absolute and secrets are out already)."""
        unknown = set(reads) - SECTIONS
        if unknown:
            raise ConfigError(f"no settings section {sorted(unknown)[0]!r}")
        return self.model_dump_json(include={"home", *reads})

    def pipeline_secrets(self) -> dict[str, str]:
        """The environment a local pipeline's steps need beside ``for_pipeline()``: the token, if one is set."""
        token = self.labelstudio.token
        return {"TRENDLOOP_LABELSTUDIO__TOKEN": token} if token else {}

    @property
    def feed_dir(self) -> Path:
        """Where ``trendloop simulate`` writes by default."""
        return self.home / "feed"


SECTIONS = frozenset(name for name in Settings.model_fields if name != "home")


class _RunSettings(Settings):
    """Settings exactly as a pipeline run passed them to a step: its own environment does not override them,
    and a section the step's config does not carry cannot be read (it would silently be the default)."""

    read_environment: ClassVar[bool] = False

    def __getattribute__(self, name: str) -> Any:
        if name in SECTIONS and name not in object.__getattribute__(self, "__pydantic_fields_set__"):
            raise ConfigError(
                f"this pipeline step reads [{name}], which its config does not carry: add it to the step's "
                "entry in pipelines.steps.READS"
            )
        return super().__getattribute__(name)


def settings_for_step(config: str) -> Settings:
    """The settings a pipeline step runs with: its ``config`` (the sections it reads), plus the Label Studio
    token from the environment when it reads ``[labelstudio]``."""
    try:
        settings = _RunSettings.model_validate_json(config)
    except ValidationError as err:
        first = err.errors()[0]
        raise ConfigError(f"pipeline config: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    token = os.environ.get("TRENDLOOP_LABELSTUDIO__TOKEN")
    if "labelstudio" in settings.model_fields_set and settings.labelstudio.token is None and token:
        settings = settings.model_copy(update={"labelstudio": settings.labelstudio.model_copy(update={"token": token})})
    return settings


def config_path(explicit: Path | None = None) -> Path | None:
    """The config file in force: the one named, ``$TRENDLOOP_CONFIG``, or ``./trendloop.toml``."""
    if explicit is not None:
        return explicit
    if os.environ.get("TRENDLOOP_CONFIG"):
        return Path(os.environ["TRENDLOOP_CONFIG"])
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Resolve the settings; ``overrides`` (e.g. ``home=...``) win over everything else."""
    path = config_path(config)
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path}: {err}") from None
    try:
        settings = Settings(**values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"setting {where}: {first['msg']} (from {path or 'environment'})") from None
    if overrides:
        settings = settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    return settings
