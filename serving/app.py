"""The Ray Serve application: a router (FastAPI ingress) in front of one model deployment per arm.

Thin wrappers only: ``TaggerArm`` runs a ``serving.tagging.ArmModel`` with dynamic
batching, ``Ingress`` runs a ``serving.router.Router`` behind ``serving.api``. Both
take their live knobs through ``reconfigure(user_config)``: the arm its model
version and batching, the router its split, salt and experiment. A change there
reaches running replicas without restarting them (serving.deploy writes it).

``build(args)`` is the application builder a Serve config names
(``import_path: serving.app:build``): locally and on a KubeRay cluster alike.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import torch
from ray import serve
from ray.serve.handle import DeploymentHandle

from components.data.predlog import PredictionLog
from components.data.pseudonyms import Pseudonyms
from components.data.validate import ImageLimits
from components.errors import ConfigError
from components.features.side import SideReader
from components.features.store import Features
from components.model.predict import Predictor
from components.model.registry import Registry
from serving.access import TokenFile
from serving.api import build_api
from serving.eventlog import EventWriter, FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION, Experiments
from serving.limits import rate_limiter
from serving.report import covariate_from, current_report
from serving.router import RequestBook, Router, Traffic
from serving.tagging import ArmModel, PostContext, pick_device


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class TaggerArm:
    def __init__(
        self,
        models: dict,
        num_gpus: float = 0.0,
        threads: int = 1,
        top_k: int = 3,
        limits: dict | None = None,
        features: dict | None = None,
    ):
        torch.set_num_threads(threads)
        device = pick_device(num_gpus)
        load, alias_of = version_loader(models, device)
        self.model = ArmModel(load, top_k, ImageLimits(**(limits or {})), side_reader(features, device), alias_of)

    async def reconfigure(self, config: dict) -> None:
        largest = int(config.get("max_batch_size", 32))
        self.predict.set_max_batch_size(largest)
        self.predict.set_batch_wait_timeout_s(float(config.get("batch_wait_ms", 5.0)) / 1000)
        # loading and warming happen off the event loop: batches keep running on the old version meanwhile
        await asyncio.to_thread(self.model.use, config.get("version"), largest)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def predict(self, uploads: list[bytes], contexts: list[dict]) -> list:
        posts = [PostContext(**c) for c in contexts]
        return await asyncio.to_thread(self.model.predict, uploads, posts)

    async def version(self) -> int | None:
        return self.model.version if self.model.ready else None


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
@serve.ingress()
class Ingress:
    def __init__(
        self,
        champion: DeploymentHandle,
        challenger: DeploymentHandle,
        logs: dict,
        max_upload_bytes: int = 10 * 2**20,
        flush_every_s: float = 1.0,
        pre_days: float = 14.0,
        cuped_covariate: str = "serving_log",
        features: dict | None = None,
        arm_timeout_s: float = 10.0,
        retry_after_s: int = 5,
        rate_per_user_s: float = 0.0,
        burst: int = 1,
        report_token_file: str | None = None,
        privacy: dict | None = None,
    ):
        if not privacy:
            raise ConfigError("the serving app needs args.privacy.key_file: where its pseudonym key is")
        predictions, feedback = PredictionLog(Path(logs["predictions"])), FeedbackLog(Path(logs["feedback"]))
        self.experiments = Experiments(Path(logs["experiments"]))
        self.pre_days = pre_days
        self.covariate = covariate_from(
            cuped_covariate, predictions, feedback, pre_days, lambda: open_features(features)
        )
        writer = f"serve-{os.getpid()}"
        # the app listens beyond 127.0.0.1: the report surfaces need the token in this file (read here, never passed)
        self.report_token = TokenFile(Path(report_token_file)).read if report_token_file else None
        self.handles = {CHAMPION: champion, CHALLENGER: challenger}
        self.router = Router(
            arms={arm: asker(handle) for arm, handle in self.handles.items()},
            predictions=EventWriter(predictions, writer, flush_every_s),
            feedback=EventWriter(feedback, writer, flush_every_s),
            book=RequestBook(predictions),
            max_upload_bytes=max_upload_bytes,
            arm_timeout_s=arm_timeout_s,
            retry_after_s=retry_after_s,
            limiter=rate_limiter(rate_per_user_s, burst),
            pseudonyms=Pseudonyms.from_file(Path(privacy["key_file"])),  # the key stays in its file
        )

    def __serve_build_asgi_app__(self):
        probes = {arm: handle.version.remote for arm, handle in self.handles.items()}
        return build_api(self.router, probes, self.report, report_token=self.report_token)

    def reconfigure(self, config: dict) -> None:
        self.router.configure(Traffic.from_config(config))

    def report(self) -> dict:
        router = self.router
        log, feedback = router.book.log, router.feedback_log.log
        return current_report(router.traffic, self.experiments, log, feedback, self.pre_days, self.covariate)

    def __del__(self) -> None:
        self.router.close()  # a clean shutdown writes every queued record


def asker(handle: DeploymentHandle) -> Callable:
    """An arm for the router: one request to the deployment, cancelled there when the router stops waiting."""

    async def ask(upload: bytes, context: dict):
        response = handle.predict.remote(upload, context)
        try:
            return await response
        except asyncio.CancelledError:  # the router's arm timeout: the replica need not finish it
            response.cancel()
            raise

    return ask


def version_loader(models: dict, device: str) -> tuple[Callable[[int], Predictor], Callable[[str], int | None] | None]:
    """Where versions come from, and what resolves an alias: ``{"registry": {...Registry arguments}}`` (MLflow), or
    ``{"folders": path}`` (``<path>/<version>/`` holds a saved tagger: a baked-in image, a benchmark; no aliases)."""
    if "folders" in models:
        root = Path(models["folders"])
        return (lambda version: Predictor.from_folder(root / str(version), device)), None
    registry = Registry(**{**models["registry"], "cache_dir": Path(models["registry"]["cache_dir"])})
    return (lambda version: registry.load_predictor(version, device)), registry.alias


def open_features(features: dict | None) -> Features:
    """The feature store of ``{"data_dir": ..., "config": ...}`` (read only: nothing is applied)."""
    if not features:
        raise ConfigError("no feature store is configured for this app (args.features)")
    return Features.open(Path(features["data_dir"]), features["config"])


def side_reader(features: dict | None, device: str) -> SideReader | None:
    """The online store fusion versions read; opened on first use."""
    if not features:
        return None
    return SideReader(lambda: open_features(features), device)


def build(args: dict) -> serve.Application:
    """The application from a Serve config's ``args`` (see serving.deploy.serve_config)."""
    arms = {
        arm: TaggerArm.options(name=arm).bind(
            args["models"],
            num_gpus=float(args.get("num_gpus", {}).get(arm, 0.0)),
            threads=int(args.get("threads", 1)),
            top_k=int(args.get("top_k", 3)),
            limits=args.get("limits"),
            features=args.get("features"),
        )
        for arm in (CHAMPION, CHALLENGER)
    }
    return Ingress.options(name="router").bind(
        arms[CHAMPION],
        arms[CHALLENGER],
        args["logs"],
        max_upload_bytes=int(args.get("max_upload_bytes", 10 * 2**20)),
        flush_every_s=float(args.get("flush_every_s", 1.0)),
        pre_days=float(args.get("pre_days", 14.0)),
        cuped_covariate=str(args.get("cuped_covariate", "serving_log")),
        features=args.get("features"),
        arm_timeout_s=float(args.get("arm_timeout_s", 10.0)),
        retry_after_s=int(args.get("retry_after_s", 5)),
        rate_per_user_s=float(args.get("rate_per_user_s", 0.0)),
        burst=int(args.get("burst", 1)),
        report_token_file=args.get("report_token_file"),
        privacy=args.get("privacy"),
    )
