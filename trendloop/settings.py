"""Typed settings, one section per concern, from one TOML file plus ``TRENDLOOP_*`` variables.

Precedence, highest first: command-line flags (passed as arguments by the CLI),
environment variables (``TRENDLOOP_HOME``, ``TRENDLOOP_INGEST__WORKERS=2``: a double
underscore steps into a section), the config file, the defaults below. The file is
``--config PATH``, else ``$TRENDLOOP_CONFIG``, else ``./trendloop.toml`` if present;
the embedded default needs none.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from active_learning.annotators import AnnotatorsConfig
from active_learning.labelstudio import LabelingProject
from active_learning.queue import LabelQueue
from active_learning.strategies import SelectionConfig
from components.drift import DriftConfig
from components.emerging import EmergingConfig
from components.errors import ConfigError
from components.gate import PromotionGate
from components.registry import Registry
from components.simulator.feed import FeedSpec
from components.train import TrainConfig
from components.triggers import RetrainPolicy
from components.validate import ImageLimits
from infra.labelstudio import LocalLabelStudio

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


class LabelStudioSettings(BaseModel):
    """Where annotators label. Unset url and token give the embedded server trendloop starts itself."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None  # a shared Label Studio, e.g. http://label-studio:8080; unset: the embedded one
    token: str | None = None  # its API token (legacy or personal access token); unset: the embedded admin's
    port: int = Field(default=8089, gt=0, lt=65536)  # the embedded server's port on 127.0.0.1
    version: str = "1.23.2"  # the label-studio release the embedded server runs
    project: str = Field(default="trendloop: what is this post about?", min_length=3, max_length=50)  # found by title
    image_url: str = "/data/local-files/?d={image}"  # a task's image; {image} is its path in the store
    serve_store: bool = True  # connect a local-files storage to the store (the server must see its disk)
    overlap: int = Field(default=1, ge=1)  # annotations per task; a majority of them decides
    timeout: float = Field(default=30.0, gt=0)  # seconds per request
    start_timeout: float = Field(default=600.0, gt=0)  # seconds the first start may take (it migrates a database)

    @property
    def min_votes(self) -> int:
        """Votes a post needs before its label is decided: a majority of ``overlap``."""
        return self.overlap // 2 + 1


class Settings(BaseSettings):
    """Everything trendloop reads from configuration. Nothing else reads the environment."""

    model_config = SettingsConfigDict(env_prefix="TRENDLOOP_", env_nested_delimiter="__", extra="forbid")
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
        return env_settings, init_settings

    @property
    def store_dir(self) -> Path:
        """The image store, snapshots, ingest reports and quarantine."""
        return self.home / "store"

    @property
    def runs_dir(self) -> Path:
        """Training runs' checkpoints, keyed by what decides their result."""
        return self.home / "runs"

    @property
    def predictions_dir(self) -> Path:
        """The prediction log: batch predictions now, served requests later."""
        return self.home / "predictions"

    @property
    def checks_dir(self) -> Path:
        """One folder per drift check: drift.json and Evidently's drift.html."""
        return self.home / "drift"

    @property
    def labeling_dir(self) -> Path:
        """The labelling queue (queue.db): selected, pushed, annotated and decided posts."""
        return self.home / "labeling"

    def label_queue(self) -> LabelQueue:
        return LabelQueue(self.labeling_dir / "queue.db")

    def label_studio_server(self) -> LocalLabelStudio:
        """The embedded Label Studio: its state under <home>/services, images read from the store."""
        ls = self.labelstudio
        return LocalLabelStudio(self.home / "services" / "labelstudio", ls.port, ls.version, self.store_dir)

    def labeling_project(self) -> LabelingProject:
        """The Label Studio project of these settings: the shared server's, or the embedded one's."""
        ls = self.labelstudio
        if ls.url is not None:
            if ls.token is None:
                raise ConfigError("labelstudio.url is set but labelstudio.token is not (TRENDLOOP_LABELSTUDIO__TOKEN)")
            return LabelingProject(ls.url, ls.token, ls.project, ls.timeout)
        server = self.label_studio_server()
        return LabelingProject(server.url, server.credentials().token, ls.project, ls.timeout)

    def local_files(self) -> Path | None:
        """The folder Label Studio reads task images from, when it serves them from the store."""
        return (self.store_dir / "images").resolve() if self.labelstudio.serve_store else None

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').resolve()}"

    def open_registry(self) -> Registry:
        self.home.mkdir(parents=True, exist_ok=True)
        embedded = self.registry.tracking_uri is None
        return Registry(
            tracking_uri=self.tracking_uri,
            registry_uri=self.registry.registry_uri,
            experiment=self.registry.experiment,
            artifact_location=self.registry.artifact_location
            or ((self.home / "mlartifacts").resolve().as_uri() if embedded else None),
            model_name=self.registry.model_name,
            cache_dir=self.home / "models",
        )

    @property
    def feed_dir(self) -> Path:
        """Where ``trendloop simulate`` writes by default."""
        return self.home / "feed"


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
