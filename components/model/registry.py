"""The MLflow side: training runs, the ``trendloop-tagger`` registered model, and its aliases.

Aliases only (registry stages are deprecated, mlflow#10336): ``champion`` serves,
``challenger`` is the gated candidate for an A/B test. Only this module moves
them, and every move leaves a trace: the champion's history is a registered-model
tag (what ``rollback`` pops), and each version carries its gate verdict.

A model version's artifact is an MLflow pyfunc folder whose ``data/`` is a saved
tagger (``tagger.json`` + ``weights.pt``, see ``components.model.tagger``): no pickled
code, no torch.export graph, so it loads in well under a second, and
``mlflow.pyfunc.load_model`` works too (it calls ``_load_pyfunc`` below).

All calls go through an explicit ``MlflowClient``: nothing here sets MLflow's
process-global tracking URI, so two registries can live in one process (tests).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from components.errors import TrendloopError

if TYPE_CHECKING:  # torch, pandas and MLflow load where a model or the server is touched
    import pandas as pd

    from components.features.side import SideReader
    from components.model.evaluate import Evaluation
    from components.model.gate import Verdict
    from components.model.predict import Predictor

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "champion_history"  # JSON list of earlier champions' versions, oldest first


PLACED_TAG = "placed_as"  # set once a pipeline has given a new version its alias


class RegistryError(TrendloopError):
    """A version or alias that does not exist, or a move the rules forbid."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    aliases: list[str]
    run_id: str | None
    snapshot: str | None
    labels: list[str]
    gate: str | None  # passed, failed, or None when never gated
    created_at: datetime
    metrics: dict[str, float]


def code_version() -> str:
    """The git commit this code runs from, with ``-dirty`` when it has uncommitted changes."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


class Registry:
    """One tracking server and model registry, and the name the tagger is registered under."""

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None = None,
        experiment: str = "trendloop",
        artifact_location: str | None = None,
        model_name: str = "trendloop-tagger",
        cache_dir: Path | None = None,
        side_reader: SideReader | None = None,
    ):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient  # noqa: PLC0415  (importing mlflow takes seconds; pay it only here)

        self.tracking_uri, self.registry_uri = tracking_uri, registry_uri or tracking_uri
        self.experiment, self.artifact_location, self.model_name = experiment, artifact_location, model_name
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "trendloop-models"
        self.side_reader = side_reader  # where a fusion tagger's predictors read their side inputs
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    # -- runs ------------------------------------------------------------------------------

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)

    def start_run(self, name: str, params: dict[str, object], tags: dict[str, str]) -> str:
        from mlflow.entities import Param  # noqa: PLC0415

        run = self.client.create_run(self.experiment_id(), run_name=name, tags=tags)
        self.client.log_batch(
            run.info.run_id, params=[Param(k, _param(v)) for k, v in sorted(params.items())], synchronous=True
        )
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric  # noqa: PLC0415

        now = int(datetime.now(UTC).timestamp() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, float(v), now, step or 0) for k, v in metrics.items()], synchronous=True
        )

    def log_json(self, run_id: str, name: str, payload: object) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(payload, indent=2, default=str))
            self.client.log_artifact(run_id, str(path))

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def run_exists(self, run_id: str | None) -> bool:
        return self._run(run_id) is not None

    def _run(self, run_id: str | None):
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        if not run_id:
            return None
        try:
            return self.client.get_run(run_id)
        except MlflowException:
            return None

    # -- model versions --------------------------------------------------------------------

    def register(
        self, run_id: str, tagger_dir: Path, snapshot: str, description: str = "", verdict: Verdict | None = None
    ) -> int:
        """Log the saved tagger in ``tagger_dir`` as the run's ``model`` and register a new version.

        ``verdict``, the gate's, is carried onto the version (``promote`` reads it).
        """
        import mlflow.pyfunc  # noqa: PLC0415
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        from components.model.tagger import load_tagger  # noqa: PLC0415

        tagger = load_tagger(tagger_dir)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                str(folder),
                loader_module="components.model.registry",
                data_path=str(tagger_dir),
                pip_requirements=_requirements(),
                metadata={"labels": list(tagger.labels), "arch": tagger.spec.arch, "snapshot": snapshot},
            )
            self.client.log_artifacts(run_id, str(folder), "model")
        try:
            self.client.get_registered_model(self.model_name)
        except MlflowException:
            self.client.create_registered_model(
                self.model_name, description="Content tags for posted images (trendloop)."
            )
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        created = self.client.create_model_version(
            self.model_name,
            source=f"{artifact_uri}/model",
            run_id=run_id,
            description=description,
            tags={"snapshot": snapshot, "labels": json.dumps(list(tagger.labels)), "arch": tagger.spec.arch}
            | (_gate_tags(verdict) if verdict is not None else {}),
        )
        return int(created.version)

    def versions(self) -> list[VersionInfo]:
        """Every version of the model, newest first."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return []
        aliases: dict[int, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(int(version), []).append(alias)
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        out = []
        for mv in found:
            run = self._run(mv.run_id)
            out.append(
                VersionInfo(
                    version=int(mv.version),
                    aliases=sorted(aliases.get(int(mv.version), [])),
                    run_id=mv.run_id,
                    snapshot=mv.tags.get("snapshot"),
                    labels=json.loads(mv.tags.get("labels", "[]")),
                    gate=mv.tags.get("gate"),
                    created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
                    metrics=run.data.metrics if run else {},
                )
            )
        return sorted(out, key=lambda v: -v.version)

    def version_of(self, ref: str | int) -> int:
        """A version number from ``3``, ``"3"``, ``"champion"`` or ``"challenger"``."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        text = str(ref)
        if text.isdigit():
            try:
                self.client.get_model_version(self.model_name, text)
            except MlflowException:
                raise RegistryError(f"{self.model_name} has no version {text}") from None
            return int(text)
        try:
            return int(self.client.get_model_version_by_alias(self.model_name, text).version)
        except MlflowException:
            raise RegistryError(f"{self.model_name} has no @{text} yet") from None

    def placed(self, version: int) -> str | None:
        """The alias a pipeline gave ``version`` when it registered it (``champion``/``challenger``), if any."""
        return self.client.get_model_version(self.model_name, str(version)).tags.get(PLACED_TAG)

    def mark_placed(self, version: int, alias: str) -> None:
        self.client.set_model_version_tag(self.model_name, str(version), PLACED_TAG, alias)

    def version_of_run(self, run_id: str) -> int | None:
        """The version a training run registered, if it registered one."""
        found = self.client.search_model_versions(f"name = '{self.model_name}' and run_id = '{run_id}'")
        return min((int(v.version) for v in found), default=None)

    def alias(self, name: str) -> int | None:
        try:
            return self.version_of(name)
        except RegistryError:
            return None

    def snapshot_of(self, version: int) -> str:
        """The snapshot a version was trained on."""
        return self.client.get_model_version(self.model_name, str(version)).tags["snapshot"]

    def record_verdict(self, run_id: str, verdict: Verdict, evaluation: Evaluation) -> None:
        """Keep the gate's decision on the training run (tags), with the evaluation it read (artifacts, metrics).

        A refused candidate never becomes a version: its run is where the verdict stays.
        Recording the same verdict again rewrites the same files.
        """
        for key, value in _gate_tags(verdict).items():
            self.client.set_tag(run_id, key, value)
        self.log_json(run_id, f"gate-{verdict.snapshot}.json", verdict.to_dict())
        self.log_json(run_id, f"evaluation-{evaluation.snapshot}.json", evaluation.to_dict())
        self.log_metrics(run_id, evaluation.flat())

    def verdict_of(self, version: int) -> Verdict | None:
        """The gate's verdict that let ``version`` in (from its training run); None when it has none."""
        import mlflow.artifacts  # noqa: PLC0415
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        from components.model.gate import Verdict  # noqa: PLC0415

        mv = self.client.get_model_version(self.model_name, str(version))
        snapshot = mv.tags.get("gate_snapshot") or mv.tags.get("snapshot")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id,
                    artifact_path=f"gate-{snapshot}.json",
                    dst_path=tmp,
                    tracking_uri=self.tracking_uri,
                )
            except (MlflowException, OSError):
                return None
            return Verdict.from_dict(json.loads(Path(path).read_text()))

    def set_challenger(self, version: int) -> None:
        self.version_of(version)
        self.client.set_registered_model_alias(self.model_name, CHALLENGER, str(version))

    def clear_challenger(self, reason: str | None = None) -> int | None:
        """Take the challenger alias away; returns the version it named. A ``reason`` (it lost its
        A/B test, say) stays on that version as a tag."""
        version = self.alias(CHALLENGER)
        if version is not None:
            self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
            if reason is not None:
                self.client.set_model_version_tag(self.model_name, str(version), "challenger_removed", reason)
        return version

    def promote(self, version: int, force: bool = False) -> int | None:
        """Make ``version`` the champion; returns the champion it replaced.

        A version whose gate failed, or that was never gated, is refused unless ``force``.
        """
        self.version_of(version)
        gate = self.client.get_model_version(self.model_name, str(version)).tags.get("gate")
        if gate != "passed" and not force:
            state = "failed its gate" if gate == "failed" else "has not been through the gate"
            raise RegistryError(
                f"version {version} {state}: retrain through the gate (`trendloop train`) or promote with --force"
            )
        current = self.alias(CHAMPION)
        if current == version:
            return current
        if current is not None:
            history = [*self._history(), current]
            self.client.set_registered_model_tag(self.model_name, HISTORY_TAG, json.dumps(history))
        self.client.set_registered_model_alias(self.model_name, CHAMPION, str(version))
        if self.alias(CHALLENGER) == version:
            self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
        return current

    def rollback(self) -> tuple[int, int]:
        """Give the champion alias back to the previous champion; returns (from, to)."""
        current = self.alias(CHAMPION)
        history = self._history()
        if current is None or not history:
            raise RegistryError("there is no earlier champion to roll back to")
        previous = history.pop()
        self.client.set_registered_model_alias(self.model_name, CHAMPION, str(previous))
        self.client.set_registered_model_tag(self.model_name, HISTORY_TAG, json.dumps(history))
        now = datetime.now(UTC).isoformat()
        self.client.set_model_version_tag(self.model_name, str(current), "rolled_back_at", now)
        return current, previous

    def _history(self) -> list[int]:
        tags = self.client.get_registered_model(self.model_name).tags
        return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]

    # -- loading ---------------------------------------------------------------------------

    def model_dir(self, ref: str | int) -> Path:
        """The saved tagger of a version (downloaded once; versions never change)."""
        import mlflow.artifacts  # noqa: PLC0415

        version = self.version_of(ref)
        target = self.cache_dir / self.model_name / str(version)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
            # resolve through our client: a models:/ URI would consult MLflow's global registry URI
            source = self.client.get_model_version_download_uri(self.model_name, str(version))
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=self.tracking_uri)
            if target.exists():  # another process finished first: same immutable content
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.rename(target)
        return _data_dir(target)

    def load_predictor(self, ref: str | int = CHAMPION, device: str = "cpu") -> Predictor:
        """``champion``, ``challenger`` or a version number -> a ready predictor (reading side inputs, if any)."""
        from components.model.predict import Predictor  # noqa: PLC0415

        return Predictor.from_folder(self.model_dir(ref), device, self.side_reader)


def _gate_tags(verdict: Verdict) -> dict[str, str]:
    return {
        "gate": "passed" if verdict.passed else "failed",
        "gate_reasons": "\n".join(verdict.reasons),
        "gate_champion": verdict.champion or "none",
        "gate_snapshot": verdict.snapshot,
    }


def _data_dir(model_folder: Path) -> Path:
    """The saved tagger inside a downloaded pyfunc folder (MLflow copies it under ``data/``)."""
    found = sorted(model_folder.rglob("tagger.json"))
    if not found:
        raise RegistryError(f"{model_folder} holds no saved tagger")
    return found[0].parent


def _param(value: object) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:6000]


def _requirements() -> list[str]:
    from importlib.metadata import version  # noqa: PLC0415

    return [f"{name}=={version(name)}" for name in ("trendloop", "torch", "torchvision", "pandas", "pillow")]


# -- MLflow pyfunc flavour ---------------------------------------------------------------------


class PyfuncTagger:
    """What ``mlflow.pyfunc.load_model`` returns: predict(DataFrame with an ``image`` bytes column)."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import pandas as pd  # noqa: PLC0415

        found = self.predictor.predict(list(model_input["image"]))
        return pd.DataFrame({"label": found.predicted, "confidence": found.confidence})


def _load_pyfunc(data_path: str) -> PyfuncTagger:
    from components.model.predict import Predictor  # noqa: PLC0415

    return PyfuncTagger(Predictor.from_folder(_data_dir(Path(data_path))))
