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
process-global tracking URI, so two registries can live in one process (tests). A request
the server never answered (refused, cut, timed out, 5xx after MLflow's retries) raises
``RegistryUnreachable``, never "no such version": an MLflow error means the server answered.

Moving an alias takes several requests and the server can go down between any two, so each
move is ordered to be completed by running it again: ``promote`` notes the champion it
replaces on the new one (``promoted_from``), moves @champion (the commit point), extends the
history, then drops @challenger; ``rollback`` marks the champion it leaves, moves @champion,
then shortens the history. ``state`` reads all three in one request and names a move that
stopped half-way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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
PROMOTED_FROM_TAG = "promoted_from"  # on a champion: the version it replaced ("none"), set before the alias moves
ROLLED_BACK_TAG = "rolled_back_at"  # on a champion that was rolled back: when (set before the alias moves)


class RegistryError(TrendloopError):
    """A version or alias that does not exist, or a move the rules forbid."""


class RegistryUnreachable(TrendloopError):
    """The tracking server did not answer (down, refused, cut off, timed out): nothing was decided about a model."""


@dataclass(frozen=True)
class AliasState:
    """The registered model's aliases and champion history, read together (one request)."""

    champion: int | None
    challenger: int | None
    history: list[int] = field(default_factory=list)  # earlier champions, oldest first

    def unfinished(self) -> str | None:
        """What a promotion or rollback that stopped half-way left undone, or None when the state is whole."""
        if self.champion is not None and self.challenger == self.champion:
            return (
                f"@challenger is @champion (version {self.champion}): a promotion stopped half-way; "
                "run `trendloop ab promote` again to finish it"
            )
        if self.champion is not None and self.history and self.history[-1] == self.champion:
            return (
                f"version {self.champion} is @champion and last in its own history: a rollback stopped half-way; "
                "run `trendloop ab rollback` again to finish it"
            )
        return None


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
        retries: int | None = None,
        backoff: int | None = None,
        timeout: int | None = None,
    ):
        """``retries``, ``backoff`` and ``timeout`` bound how long a request to a server that does not answer
        is tried (MLflow's own defaults, 7 retries at backoff 2 and 120 s each, take about 4 minutes to give
        up). MLflow reads them from its ``MLFLOW_HTTP_REQUEST_*`` environment variables at each request, so
        they are set here for the whole process; None leaves MLflow's in force."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        for name, value in (("MAX_RETRIES", retries), ("BACKOFF_FACTOR", backoff), ("TIMEOUT", timeout)):
            if value is not None:
                os.environ[f"MLFLOW_HTTP_REQUEST_{name}"] = str(value)
        from mlflow import MlflowClient  # noqa: PLC0415  (importing mlflow takes seconds; pay it only here)

        self.tracking_uri, self.registry_uri = tracking_uri, registry_uri or tracking_uri
        self.experiment, self.artifact_location, self.model_name = experiment, artifact_location, model_name
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "trendloop-models"
        self.side_reader = side_reader  # where a fusion tagger's predictors read their side inputs
        self.client = _Answered(
            MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri), tracking_uri
        )

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
            return int(self._model_version(int(text)).version)
        try:
            return int(self.client.get_model_version_by_alias(self.model_name, text).version)
        except MlflowException:
            raise RegistryError(f"{self.model_name} has no @{text} yet") from None

    def _model_version(self, version: int):
        """MLflow's record of ``version`` (its tags and aliases); a version that does not exist is an error."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException:
            raise RegistryError(f"{self.model_name} has no version {version}") from None

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
            if reason is not None:  # before the alias goes: a cut between the two leaves the old state
                self.client.set_model_version_tag(self.model_name, str(version), "challenger_removed", reason)
            self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
        return version

    def promote(self, version: int, force: bool = False) -> int | None:
        """Make ``version`` the champion; returns the champion it replaced.

        A version whose gate failed, or that was never gated, is refused unless ``force``. Run again after
        it stopped half-way (the server went down), it finishes the same promotion: every prefix of its
        writes is the old state or one ``state().unfinished()`` names.
        """
        tags = self._model_version(version).tags
        gate = tags.get("gate")
        if gate != "passed" and not force:
            state = "failed its gate" if gate == "failed" else "has not been through the gate"
            raise RegistryError(
                f"version {version} {state}: retrain through the gate (`trendloop train`) or promote with --force"
            )
        current = self.alias(CHAMPION)
        if current == version:  # already champion, perhaps by a promotion that stopped after the alias moved
            noted = tags.get(PROMOTED_FROM_TAG, "none")
            previous = None if noted == "none" else int(noted)
        else:
            previous = current
            self.client.set_model_version_tag(
                self.model_name, str(version), PROMOTED_FROM_TAG, "none" if current is None else str(current)
            )
            self.client.set_registered_model_alias(self.model_name, CHAMPION, str(version))
        history = self._history()
        # the history never ends with the champion it precedes, so an entry equal to `previous` is this move's
        if previous is not None and previous != version and (not history or history[-1] != previous):
            self.client.set_registered_model_tag(self.model_name, HISTORY_TAG, json.dumps([*history, previous]))
        if self.alias(CHALLENGER) == version:
            self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
        return previous

    def rollback(self) -> tuple[int, int]:
        """Give the champion alias back to the previous champion; returns (from, to).

        Run again after it stopped half-way (@champion moved, the history not yet shortened), it finishes
        that rollback rather than going one further back.
        """
        found = self.state()
        current, history = found.champion, list(found.history)
        if current is not None and history and history[-1] == current:  # the alias moved, the history did not
            history.pop()
            self.client.set_registered_model_tag(self.model_name, HISTORY_TAG, json.dumps(history))
            if found.challenger == current:
                self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
            return self._last_rolled_back(), current
        if current is None or not history:
            raise RegistryError("there is no earlier champion to roll back to")
        previous = history.pop()
        now = datetime.now(UTC).isoformat()
        self.client.set_model_version_tag(self.model_name, str(current), ROLLED_BACK_TAG, now)
        self.client.set_registered_model_alias(self.model_name, CHAMPION, str(previous))
        self.client.set_registered_model_tag(self.model_name, HISTORY_TAG, json.dumps(history))
        if found.challenger == previous:  # the version rolled back to was under test: it is the champion now
            self.client.delete_registered_model_alias(self.model_name, CHALLENGER)
        return current, previous

    def state(self) -> AliasState:
        """@champion, @challenger and the champion history, as one read (nothing registered: all empty)."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return AliasState(None, None, [])
        aliases = {name: int(v) for name, v in (model.aliases or {}).items()}
        history = [int(v) for v in json.loads(model.tags.get(HISTORY_TAG, "[]"))]
        return AliasState(aliases.get(CHAMPION), aliases.get(CHALLENGER), history)

    def _history(self) -> list[int]:
        tags = self.client.get_registered_model(self.model_name).tags
        return [int(v) for v in json.loads(tags.get(HISTORY_TAG, "[]"))]

    def _last_rolled_back(self) -> int:
        """The version rolled back most recently (its tag is written before the alias moves)."""
        found = self.client.search_model_versions(f"name = '{self.model_name}'")
        marked = [mv for mv in found if ROLLED_BACK_TAG in mv.tags]
        return int(max(marked, key=lambda mv: mv.tags[ROLLED_BACK_TAG]).version)

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


class _Answered:
    """An ``MlflowClient`` whose requests the server never answered raise ``RegistryUnreachable``.

    MLflow raises the same ``MlflowException`` for "no such alias" (the server answered) and for a
    refused or cut connection (it did not); code that reads the first as "absent" must not read the
    second so, or a promotion cut at the wrong request would act on a registry it never saw.
    """

    def __init__(self, client, uri: str):
        self._client, self._uri = client, uri

    def __getattr__(self, name: str):
        found = getattr(self._client, name)
        return _answered(found, self._uri) if callable(found) else found


def _answered(call: Callable, uri: str) -> Callable:
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    def answered(*args, **kwargs):
        try:
            return call(*args, **kwargs)
        except MlflowException as err:
            why = _unanswered(err)
            if why is None:
                raise
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLflow's default")
            raise RegistryUnreachable(
                f"cannot reach the MLflow tracking server at {uri} ({why}, after {retries} retries): is it running?"
            ) from None

    return answered


def _unanswered(err: BaseException) -> str | None:
    """Why a request got no answer (``refused``, ``timed out``, ...), from the exceptions under ``err``; None:
    the server answered."""
    import requests  # noqa: PLC0415

    seen, link = [], err
    while link is not None and len(seen) < 10:
        seen.append(link)
        link = link.__cause__ or link.__context__
    if not any(isinstance(e, requests.exceptions.RequestException) for e in seen):
        return None
    text = " ".join(str(e) for e in seen)
    if any(isinstance(e, requests.exceptions.Timeout) for e in seen) or "timed out" in text:
        return "timed out"
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if any(isinstance(e, requests.exceptions.RetryError) for e in seen) or "too many" in text:
        return "it kept answering with server errors"
    return "the connection broke"


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
