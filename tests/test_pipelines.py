"""Kubeflow pipelines: every pipeline compiles; each runs end to end on kfp.local against the real services.

The integration tests share one state folder and run in order, as the loop does:
continual training on the labelled history (a step killed midway, then rerun), again
on a labelled day of fresh posts (a challenger), drift monitoring of unlabelled
traffic (tasks in the session's Label Studio), label sync of what annotators did.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from active_learning.annotators import AnnotatorsConfig, annotate
from components.batches import read_batch, write_batch
from components.errors import ConfigError
from components.ingest import check_source, commit_checked, ingest, read_labels
from components.registry import CHALLENGER, CHAMPION
from components.simulator.feed import FeedSpec, simulate
from components.simulator.trends import NewClass
from components.snapshot import Store
from components.sources import read_source
from infra.labelstudio import LocalLabelStudio
from pipelines.components import StepOptions
from pipelines.runner import LocalRun, PipelineError, compile_all, pipeline_arguments, run_local, step_options
from tests.conftest import SMALL_FEED
from trendloop.settings import PipelineSettings, Settings, load_settings, settings_from_pipeline

IMAGE = "registry.example/trendloop:test"
RETRAIN = {"train", "evaluate", "gate", "register", "load", "hold"}
TASKS = {
    "continual_training": {"ingest", "validate", "head-state", "snapshot", "retrain"} | RETRAIN,
    "drift_monitor": {"drift-report", "select", "push"},
    "label_sync": {"pull", "check-labels", "commit", "retrain"} | RETRAIN,
}


# -- compile and plumbing (fast) ----------------------------------------------------------------------------


def _tasks(dag: dict) -> set[str]:
    return set(dag.get("tasks", {}))


def _conditions(dags: list[dict]) -> set[str]:
    """The dsl.If/Else groups KFP adds as tasks of their own."""
    return {t for dag in dags for t in _tasks(dag) if t.startswith("condition-")}


def test_every_pipeline_compiles_to_ir_whose_steps_run_our_image_and_call_our_package(tmp_path: Path):
    written = compile_all(tmp_path, IMAGE)
    assert sorted(p.stem for p in written) == sorted(TASKS)
    for path in written:
        spec = yaml.safe_load(path.read_text())
        dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
        assert set().union(*map(_tasks, dags)) == TASKS[path.stem] | _conditions(dags), path.stem
        executors = spec["deploymentSpec"]["executors"].values()
        for executor in executors:
            container = executor["container"]
            assert container["image"] == IMAGE
            program = "\n".join(container["command"])
            assert "from pipelines import steps" in program
            assert "pip install" not in program  # install_kfp_package=False: the image holds everything
    retrain = yaml.safe_load((tmp_path / "continual_training.yaml").read_text())["components"]["comp-retrain"]
    assert {"train", "evaluate", "gate"} <= _tasks(retrain["dag"])
    assert set(retrain["outputDefinitions"]["parameters"]) == {"Output"}  # the registered version (0: none)


def _task_specs(spec: dict) -> dict[str, dict]:
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    return {name: task for dag in dags for name, task in dag.get("tasks", {}).items()}


def test_steps_that_read_the_world_as_it_is_never_reuse_outputs_and_no_cache_reaches_nested_steps(tmp_path: Path):
    cached = {
        name: {
            t
            for t, task in _task_specs(yaml.safe_load(path.read_text())).items()
            if task.get("cachingOptions", {}).get("enableCache")
        }
        for path in compile_all(tmp_path / "default", IMAGE)
        for name in [path.stem]
    }
    assert {"ingest", "validate", "snapshot", "train", "evaluate", "gate"} <= cached["continual_training"]
    assert not {"head-state", "register", "load"} & cached["continual_training"]
    assert not {"drift-report", "select", "pull"} & (cached["drift_monitor"] | cached["label_sync"])
    for path in compile_all(tmp_path / "no-cache", IMAGE, StepOptions(cache=False)):
        tasks = _task_specs(yaml.safe_load(path.read_text()))
        assert not [t for t, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")]


def test_on_a_cluster_every_step_mounts_the_state_volume_and_reads_secrets_as_environment(tmp_path: Path):
    secrets = {"TRENDLOOP_LABELSTUDIO__TOKEN": "label-studio/token", "TRENDLOOP_REDIS": "feast-redis/url"}
    settings = Settings(home=Path("/data/trendloop")).model_copy(
        update={"pipelines": PipelineSettings(volume="trendloop-state", secrets=secrets)}
    )
    [path] = [p for p in compile_all(tmp_path, IMAGE, step_options(settings)) if p.stem == "drift_monitor"]
    _, platform = yaml.safe_load_all(path.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == 3  # drift report, select, push
    for config in executors.values():
        [mount] = config["pvcMount"]
        assert (mount["mountPath"], mount["constant"]) == ("/data/trendloop", "trendloop-state")
        envs = {s["secretName"]: s["keyToEnv"] for s in config["secretAsEnv"]}
        assert envs == {
            "label-studio": [{"envVar": "TRENDLOOP_LABELSTUDIO__TOKEN", "secretKey": "token"}],
            "feast-redis": [{"envVar": "TRENDLOOP_REDIS", "secretKey": "url"}],
        }
    [local] = [p for p in compile_all(tmp_path / "local", IMAGE) if p.stem == "drift_monitor"]
    assert len(list(yaml.safe_load_all(local.read_text()))) == 1  # the embedded default adds nothing
    with pytest.raises(ConfigError, match="absolute"):
        step_options(settings.model_copy(update={"home": Path("relative/home")}))
    with pytest.raises(ValueError, match="secret-name/key"):
        PipelineSettings(secrets={"TRENDLOOP_REDIS": "no-key"})


def test_an_ingest_split_into_steps_commits_what_one_ingest_does(small_feed: Path, tmp_path: Path):
    until = SMALL_FEED.day_start(2)
    labels = read_labels(small_feed / "oracle" / "labels")
    whole = ingest(small_feed, Store(tmp_path / "whole"), labels=labels, until=until)

    store, batch = Store(tmp_path / "steps"), tmp_path / "batch.parquet"
    write_batch(read_source(small_feed, until=until), None, batch)
    source, outcomes = read_batch(batch)
    assert outcomes is None  # not checked yet
    write_batch(source, check_source(source, store), tmp_path / "checked.parquet")
    source, outcomes = read_batch(tmp_path / "checked.parquet")
    assert (source.kind, source.uri, source.skipped) == ("simulator", whole.source, whole.skipped)
    report = commit_checked(source, outcomes, store, labels=labels)

    assert (report.accepted, report.duplicates, report.rejected) == (whole.accepted, whole.duplicates, whole.rejected)
    assert report.rejected_total > 0  # the small feed has broken uploads: they survive the round trip as rejections
    assert report.snapshot == whole.snapshot  # content-addressed: the same posts, labels and order


def test_pipeline_arguments_are_typed_checked_and_carry_the_settings(tmp_path: Path, monkeypatch):
    settings = Settings(home=tmp_path / "home").model_copy(
        update={"labelstudio": Settings().labelstudio.model_copy(update={"token": "s3cret"})}
    )
    args = pipeline_arguments(settings, "label_sync", ["min_new_labels=5", "min_agreement=0.5"])
    assert (args["min_new_labels"], args["min_agreement"]) == (5, 0.5)
    assert "s3cret" not in args["config"]  # secrets reach steps through the environment, not run specs
    monkeypatch.setenv("TRENDLOOP_HOME", "/somewhere/else")
    monkeypatch.setenv("TRENDLOOP_LABELSTUDIO__TOKEN", "s3cret")
    inside = settings_from_pipeline(str(args["config"]))
    assert inside.home == (tmp_path / "home").resolve()  # the run's settings, not the step's environment
    assert inside.labelstudio.token == "s3cret"
    assert settings.pipeline_secrets() == {"TRENDLOOP_LABELSTUDIO__TOKEN": "s3cret"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "feed").mkdir()
    trained = pipeline_arguments(settings, "continual_training", ["source=feed", "until=2026-01-08"])
    assert trained["source"] == str(tmp_path / "feed") and len(str(trained["source_version"])) == 16
    unseen = pipeline_arguments(settings, "continual_training", ["source=/volume/incoming"])
    assert str(unseen["source_version"]).startswith("unseen-")  # a source this machine cannot see is read again
    with pytest.raises(ConfigError, match="not a number"):
        pipeline_arguments(settings, "label_sync", ["min_new_labels=many"])
    with pytest.raises(ConfigError, match="takes min_new_labels"):
        pipeline_arguments(settings, "label_sync", ["min_new_label=5"])
    with pytest.raises(ConfigError, match="no pipeline"):
        pipeline_arguments(settings, "continual", [])


# -- end to end on kfp.local --------------------------------------------------------------------------------

FEED = FeedSpec(
    seed=11,
    posts_per_day=60,
    users=50,
    corrupt_share=0.05,
    repost_share=0.02,
    trends=[NewClass(name="meme", look="meme", start_day=3, ramp_days=0, share=0.4)],
)
SEED_DAYS = 3  # days 0-2 arrive labelled; day 3 is a labelled batch of fresh posts; day 4 is unlabelled traffic


class Loop:
    def __init__(self, home: Path, feed: Path, settings: Settings):
        self.home, self.feed, self.settings = home, feed, settings
        self.store = Store(settings.store_dir)

    def run(self, name: str, **params: object) -> LocalRun:
        args = pipeline_arguments(self.settings, name, [f"{k}={v}" for k, v in params.items()])
        return run_local(name, args, Path(self.settings.pipeline_root), IMAGE, env=self.settings.pipeline_secrets())

    def day(self, n: int) -> str:
        return FEED.day_start(n).isoformat()


@pytest.fixture(scope="module")
def loop(label_studio: LocalLabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Loop:
    feed = tmp_path_factory.mktemp("pipeline-feed")
    simulate(FEED, feed, range(SEED_DAYS + 2), workers=2)
    home = label_studio.document_root / "pipelines"
    home.mkdir()
    config = home / "trendloop.toml"
    config.write_text(
        f"""
home = "{home}"
[train]
epochs = 6
patience = 6
[gate]  # any model passes: these tests are about the pipelines, tests/test_evaluate.py about the gate
old_class_margin = 1.0
newest_slice_gain = -1.0
min_stability = 0.0
[features]
on_ingest = false
[labelstudio]
url = "{label_studio.url}"
token = "{label_studio.credentials().token}"
project = "pipelines"
image_url = "/data/local-files/?d=pipelines/store/{{image}}"
[drift]
false_alarm_rate = 0.2
[active_learning]
batch_size = 24
"""
    )
    return Loop(home, feed, load_settings(config))


def _kill_training_after_first_epoch(runs: Path, stop: threading.Event) -> None:
    """Kill the train step's processes as soon as its first epoch checkpoint exists: a preempted node."""
    while not stop.is_set():
        if any(runs.glob("*/checkpoint.pt")):
            for proc in psutil.Process().children(recursive=True):
                try:
                    cmd = proc.cmdline()
                except psutil.Error:
                    continue
                if "--function_to_execute" in cmd and cmd[cmd.index("--function_to_execute") + 1] == "train":
                    proc.kill()
            return
        time.sleep(0.02)


def test_a_step_killed_midway_leaves_nothing_half_written_and_the_rerun_reuses_finished_steps(loop: Loop):
    labels = str(loop.feed / "oracle" / "labels")
    stop = threading.Event()
    killer = threading.Thread(target=_kill_training_after_first_epoch, args=(loop.settings.runs_dir, stop))
    killer.start()
    try:
        with pytest.raises(PipelineError, match="failed at step train"):
            loop.run("continual_training", source=loop.feed, until=loop.day(SEED_DAYS), labels=labels)
    finally:
        stop.set()
        killer.join()

    head = loop.store.head()
    assert head is not None and loop.store.verify(head) == []  # the snapshot step's commit is whole
    assert head.labelled > 100
    assert len(list((loop.store.root / "ingests").glob("*.json"))) == 1
    registry = loop.settings.open_registry()
    assert registry.versions() == [] and registry.alias(CHAMPION) is None  # nothing registered
    [run_state] = list(loop.settings.runs_dir.glob("*/run.json"))
    killed_run = json.loads(run_state.read_text())["run_id"]

    again = loop.run("continual_training", source=loop.feed, until=loop.day(SEED_DAYS), labels=labels)

    assert {"ingest", "validate"} <= set(again.cached)  # finished steps whose inputs did not change are reused
    assert "ingest" not in again.tasks and "validate" not in again.tasks and "train" in again.tasks
    # the snapshot step's input, HEAD, moved when it committed: it ran again and found nothing new
    reports = [json.loads(p.read_text()) for p in (loop.store.root / "ingests").glob("*.json")]
    assert sorted(r["accepted"] for r in reports) == [0, head.posts] and loop.store.head().id == head.id
    assert again.output == 1
    assert registry.alias(CHAMPION) == 1  # the first model to pass is the champion
    version = registry.client.get_model_version(registry.model_name, "1")
    assert version.run_id == killed_run  # training resumed the interrupted run rather than starting over
    run = registry.client.get_run(killed_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags["snapshot"] == head.id == version.tags["snapshot"]
    assert run.data.tags["kfp_run_name"] == again.run_name  # lineage: the KFP run that finished it


def test_continual_training_on_fresh_labelled_posts_registers_a_challenger(loop: Loop):
    before = loop.store.head()
    run = loop.run(
        "continual_training",
        source=loop.feed,
        since=loop.day(SEED_DAYS),
        until=loop.day(SEED_DAYS + 1),
        labels=loop.feed / "oracle" / "labels",
    )
    registry = loop.settings.open_registry()
    assert run.output == 2 == registry.alias(CHALLENGER)
    assert registry.alias(CHAMPION) == 1
    head = loop.store.head()
    assert head.parent == before.id and head.posts > before.posts
    mlflow_run = registry.client.get_run(registry.client.get_model_version(registry.model_name, "2").run_id)
    assert mlflow_run.data.tags["mode"] == "fine-tune" and mlflow_run.data.tags["base_version"] == "1"
    assert mlflow_run.data.tags["snapshot"] == head.id
    assert "meme" in json.loads(registry.client.get_model_version(registry.model_name, "2").tags["labels"])
    scored = json.loads((run.folder / "evaluate" / "evaluation").read_text())
    assert scored["champion"]["model"] == "trendloop-tagger/1"  # the champion scored beside it, on one test split
    assert scored["champion"]["snapshot"] == scored["candidate"]["snapshot"] == head.id
    report = (run.folder / "evaluate" / "report").read_text()
    assert "<html" in report.lower() and f"{scored['champion']['overall']['accuracy']:.3f}" in report


def test_drift_monitor_on_drifted_traffic_creates_label_studio_tasks(loop: Loop):
    fresh = ingest(loop.feed, loop.store, since=FEED.day_start(SEED_DAYS + 1))  # unlabelled traffic arrives
    assert fresh.accepted > 40
    run = loop.run("drift_monitor", since=loop.day(SEED_DAYS + 1))
    assert run.output is True
    batch = pq.read_table(run.folder / "select" / "batch").to_pandas()
    assert 0 < len(batch) <= 24
    project = loop.settings.labeling_project()
    tasks = {t.data["post_id"]: t for t in project.tasks_below(10**6)}
    assert set(batch.post_id) == set(tasks)  # every selected post is a task, once
    for task in tasks.values():  # pre-annotated with the champion's guess
        [prediction] = task.predictions
        prediction = prediction if isinstance(prediction, dict) else prediction.model_dump()
        assert prediction["model_version"] == "1"
    assert (run.folder / "drift-report" / "report").read_text().lower().count("<html") == 1


def test_label_sync_turns_annotations_into_a_snapshot_and_retrains(loop: Loop):
    project = loop.settings.labeling_project()
    done = annotate(project, read_labels(loop.feed / "oracle" / "labels"), AnnotatorsConfig(error_rate=0.0))
    assert done.annotations > 0
    before = loop.store.head()

    run = loop.run("label_sync", min_new_labels=5)

    head = loop.store.head()
    assert run.output >= 5 and head.parent == before.id
    labelled = head.manifest().to_pandas().set_index("post_id")
    committed = labelled[labelled.label_source == "annotators"]
    assert len(committed) == run.output
    truth = read_labels(loop.feed / "oracle" / "labels")
    assert all(committed.label[p] == truth[p] for p in committed.index)
    registry = loop.settings.open_registry()
    assert "register" in run.tasks and registry.alias(CHALLENGER) == 3
    assert registry.snapshot_of(3) == head.id

    nothing_new = loop.run("label_sync", min_new_labels=5)
    assert nothing_new.output == 0 and "train" not in nothing_new.tasks  # the condition held training back
    assert loop.store.head().id == head.id
