"""Kubeflow pipelines: every pipeline compiles; each step reads only its settings and starts light; the
retrain pipelines run end to end on kfp.local against a real MLflow.

The integration tests read one story (the ``story`` fixture), whose runs share one state folder
and follow each other as the loop's do: continual training on the labelled history (a step
killed midway, then rerun), an unlabelled day (no retrain is due), a labelled day with a new
class (a challenger), and a candidate the gate refuses (its run keeps the verdict; nothing is
registered). The fixture keeps what each run found; the tests only read it, in any order. Drift
monitoring of served traffic and label sync run in the main job's end-to-end test
(tests/test_demo.py), against the real serving app and Label Studio.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from personal import PSEUDONYMS

from components.data.batches import read_batch, write_batch
from components.data.ingest import check_source, commit_checked, ingest, read_labels
from components.data.snapshot import Snapshot, Store
from components.data.sources import read_source
from components.errors import ConfigError
from components.model.evaluate import Evaluation, Outcomes, score, stability
from components.model.gate import PromotionGate
from components.model.registry import CHALLENGER, CHAMPION
from components.simulator.feed import FeedSpec, simulate
from components.simulator.trends import NewClass
from pipelines import steps
from pipelines.components import StepOptions, configure
from pipelines.runner import LocalRun, PipelineError, compile_all, pipeline_arguments, run_local, step_options
from pipelines.steps import READS
from tests.conftest import SMALL_FEED, free_port
from trendloop import wiring
from trendloop.cli import main
from trendloop.settings import Settings, load_settings, settings_for_step

IMAGE = "registry.example/trendloop:test"
RETRAIN = {"train", "evaluate", "gate", "register", "load", "hold"}
DUE = {"plan", "retrain", "skip"}
TASKS = {
    "continual_training": {"configure", "ingest", "validate", "head-state", "snapshot"} | DUE | RETRAIN,
    "drift_monitor": {"configure", "drift-report", "select", "push"},
    "label_sync": {"configure", "pull", "check-labels", "commit"} | DUE | RETRAIN,
}


# -- compile and plumbing (fast) ----------------------------------------------------------------------------


def _tasks(dag: dict) -> set[str]:
    return set(dag.get("tasks", {}))


def _conditions(dags: list[dict]) -> set[str]:
    """The dsl.If/Else groups KFP adds as tasks of their own."""
    return {t for dag in dags for t in _tasks(dag) if t.startswith("condition-")}


@pytest.mark.unit
def test_every_pipeline_compiles_to_ir_whose_steps_run_our_image_and_call_our_package(tmp_path: Path):
    written = compile_all(tmp_path, IMAGE)
    assert sorted(p.stem for p in written) == sorted(TASKS)
    for path in written:
        spec = yaml.safe_load(path.read_text())
        dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
        assert set().union(*map(_tasks, dags)) == TASKS[path.stem] | _conditions(dags), path.stem
        assert next(iter(spec["root"]["inputDefinitions"]["parameters"])) == "config"  # one settings parameter
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


@pytest.mark.unit
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
    assert {"configure", "ingest", "validate", "snapshot", "train", "evaluate", "gate"} <= cached["continual_training"]
    assert not {"head-state", "plan", "register", "load"} & cached["continual_training"]
    assert not {"drift-report", "select", "pull", "plan"} & (cached["drift_monitor"] | cached["label_sync"])
    for path in compile_all(tmp_path / "no-cache", IMAGE, StepOptions(cache=False)):
        tasks = _task_specs(yaml.safe_load(path.read_text()))
        assert not [t for t, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")]


@pytest.mark.unit
def test_on_a_cluster_only_the_train_step_asks_for_the_configured_gpus(tmp_path: Path) -> None:
    settings = Settings(home="/data/trendloop", pipelines={"train_gpus": 4, "train_accelerator": "amd.com/gpu"})
    for path in compile_all(tmp_path, IMAGE, step_options(settings)):
        executors = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"]
        asking = {name: e["container"]["resources"] for name, e in executors.items() if "resources" in e["container"]}
        if path.stem == "drift_monitor":  # it never trains
            assert asking == {}
        else:
            accelerator = asking.pop("exec-train")["accelerator"]
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("amd.com/gpu", "4")
            assert asking == {}
    for path in compile_all(tmp_path / "none", IMAGE, step_options(Settings(home=tmp_path))):  # the default: none
        executors = yaml.safe_load(path.read_text())["deploymentSpec"]["executors"]
        assert not [name for name, e in executors.items() if "resources" in e["container"]]


@pytest.mark.unit
def test_each_step_gets_only_the_settings_it_reads_so_an_unrelated_change_keeps_its_cache(tmp_path: Path):
    # configure's outputs are READS, in order: a step's config is the one at its name
    assert [name for name, _ in configure.__annotations__["return"].__annotations__.items()] == list(READS)
    settings = Settings(home=tmp_path / "home")
    before = dict(zip(READS, configure_outputs(settings), strict=True))
    moved = settings.model_copy(update={"serving": settings.serving.model_copy(update={"port": 9123})})
    after = dict(zip(READS, configure_outputs(moved), strict=True))
    assert [step for step in READS if before[step] != after[step]] == ["load"]  # only the step that serves
    retrained = settings.model_copy(update={"train": settings.train.model_copy(update={"epochs": 3})})
    changed = dict(zip(READS, configure_outputs(retrained), strict=True))
    assert [step for step in READS if before[step] != changed[step]] == ["train"]
    policy = settings.model_copy(update={"retrain": settings.retrain.model_copy(update={"min_new_labels": 50})})
    changed = dict(zip(READS, configure_outputs(policy), strict=True))
    assert [step for step in READS if before[step] != changed[step]] == ["plan"]
    train = json.loads(before["train"])
    assert set(train) == {"home", "registry", "features", "train"}
    inside = settings_for_step(before["gate"])
    assert inside.gate == settings.gate
    with pytest.raises(ConfigError, match=r"reads \[serving\], which its config does not carry"):
        _ = inside.serving


def configure_outputs(settings: Settings) -> tuple[str, ...]:
    return steps.configure(settings.for_pipeline())


@pytest.mark.unit
def test_a_step_that_touches_no_model_imports_none_of_the_heavy_libraries(tmp_path: Path):
    """What every step pays before it works: the settings and the steps module (plus kfp's executor)."""
    heavy = ["torch", "mlflow", "feast", "label_studio_sdk", "scipy", "evidently", "pandas", "ray"]
    probe = (
        "import sys, json\n"
        "from pipelines import steps\n"
        f"from pipelines.steps import gate, head_state, skip\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(loaded) == []
    # and the gate step itself, on an evaluation: it decides without loading any of them
    config = Settings(home=tmp_path).for_pipeline()
    gate_config = configure_outputs_from(config)["gate"]
    evaluation = tmp_path / "evaluation.json"
    evaluation.write_text(json.dumps({"candidate": _evaluation("cand", [1, 1, 1, 0]), "champion": None}))
    run = (
        "import sys, json\n"
        "from pipelines import steps\n"
        "class A:\n    def __init__(self, path): self.path, self.metadata = path, {}\n"
        f"passed = steps.gate({gate_config!r}, A({str(evaluation)!r}), A({str(tmp_path / 'verdict.json')!r}))\n"
        f"print(json.dumps([passed, [m for m in {heavy!r} if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, check=True).stdout
    passed, loaded = json.loads(out.strip().splitlines()[-1])
    assert passed is True and loaded == []
    assert json.loads((tmp_path / "verdict.json").read_text())["passed"] is True


@pytest.mark.unit
def test_the_load_step_and_serving_control_load_no_model(tmp_path: Path):
    """Following the registry is REST calls and a registry read: no step pays for torch to ask serving."""
    settings = Settings(home=tmp_path, serving={"ray_ports": {"dashboard": free_port()}})  # no Ray: nothing to follow
    config = configure_outputs_from(settings.for_pipeline())["load"]
    run = (
        "import sys, json\n"
        "from pipelines import steps\n"
        f"said = steps.load({config!r}, 3)\n"
        "import serving.control\n"
        "print(json.dumps([said, [m for m in ('torch', 'torchvision', 'mlflow', 'feast') if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True, check=True).stdout
    said, loaded = json.loads(out.strip().splitlines()[-1])
    assert said.startswith("serving is not running: version 3 waits in the registry")
    assert loaded == []


def configure_outputs_from(config: str) -> dict[str, str]:
    return dict(zip(READS, steps.configure(config), strict=True))


def _evaluation(model: str, correct: list[int]) -> dict:
    """A minimal evaluation of a first model on four posts (the gate only needs its outcomes)."""
    labels = ["cat", "dog"]
    truth = ["cat", "dog", "cat", "dog"]
    predicted = [t if ok else ("dog" if t == "cat" else "cat") for t, ok in zip(truth, correct, strict=True)]
    metrics = score(truth, predicted, np.full(4, 0.9), labels)
    outcomes = Outcomes(
        post_id=[f"p{i}" for i in range(4)], label=truth, predicted=predicted,
        unchanged={"brightness_minus_10": [True] * 4, "brightness_plus_10": [True] * 4, "crop_90": [True] * 4},
    )  # fmt: skip
    return Evaluation(model, "snap", labels, metrics, {}, None, stability(outcomes.unchanged), outcomes).to_dict()


@pytest.mark.unit
def test_an_ingest_split_into_steps_commits_what_one_ingest_does(small_feed: Path, tmp_path: Path):
    until = SMALL_FEED.day_start(2)
    labels = read_labels(small_feed / "oracle" / "labels")
    whole = ingest(small_feed, Store(tmp_path / "whole"), PSEUDONYMS, labels=labels, until=until)

    store, batch = Store(tmp_path / "steps"), tmp_path / "batch.parquet"
    write_batch(read_source(small_feed, PSEUDONYMS, until=until), None, batch)
    source, outcomes = read_batch(batch)
    assert outcomes is None  # not checked yet
    write_batch(source, check_source(source, store), tmp_path / "checked.parquet")
    source, outcomes = read_batch(tmp_path / "checked.parquet")
    assert (source.kind, source.uri, source.skipped) == ("simulator", whole.source, whole.skipped)
    report = commit_checked(source, outcomes, store, labels=labels)

    assert (report.accepted, report.duplicates, report.rejected) == (whole.accepted, whole.duplicates, whole.rejected)
    assert report.rejected_total > 0  # the small feed has broken uploads: they survive the round trip as rejections
    assert report.snapshot == whole.snapshot  # content-addressed: the same posts, labels and order


@pytest.mark.unit
def test_pipeline_arguments_are_checked_and_carry_the_settings(tmp_path: Path, monkeypatch):
    settings = Settings(home=tmp_path / "home").model_copy(
        update={"labelstudio": Settings().labelstudio.model_copy(update={"token": "s3cret"})}
    )
    args = pipeline_arguments(settings, "label_sync", ["mode=scratch"])
    assert args["mode"] == "scratch"
    assert "s3cret" not in args["config"]  # secrets reach steps through the environment, not run specs
    monkeypatch.setenv("TRENDLOOP_HOME", "/somewhere/else")
    monkeypatch.setenv("TRENDLOOP_LABELSTUDIO__TOKEN", "s3cret")
    pull = configure_outputs_from(str(args["config"]))["pull"]
    inside = settings_for_step(pull)
    assert inside.home == (tmp_path / "home").resolve()  # the run's settings, not the step's environment
    assert inside.labelstudio.token == "s3cret"
    assert settings.pipeline_secrets() == {"TRENDLOOP_LABELSTUDIO__TOKEN": "s3cret"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "feed").mkdir()
    trained = pipeline_arguments(settings, "continual_training", ["source=feed", "until=2026-01-08"])
    assert trained["source"] == str(tmp_path / "feed") and len(str(trained["source_version"])) == 16
    unseen = pipeline_arguments(settings, "continual_training", ["source=/volume/incoming"])
    assert str(unseen["source_version"]).startswith("unseen-")  # a source this machine cannot see is read again
    with pytest.raises(ConfigError, match="takes mode"):
        pipeline_arguments(settings, "label_sync", ["min_new_labels=5"])  # a setting now: [retrain] min_new_labels
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
SEED_DAYS = 3  # days 0-2 arrive labelled; day 3 arrives unlabelled, its labels later; day 4 is for the refusal
CONFIG = """
[train]
epochs = 6
patience = 6
[train.preprocessing]  # small inputs: these tests are about the pipelines, not accuracy
image_size = 32
resize = 36
[gate]  # lenient: these tests are about the pipelines; tests/test_gate.py is about the gate
old_class_margin = 1.0
stability_margin = 1.0
newest_slice_gain = -1.0
min_stability = 0.0
[retrain]
new_labels = 30  # a labelled day (about 55 posts) calls for a retrain
[features]
on_ingest = false
"""


class Loop:
    def __init__(self, feed: Path, settings: Settings):
        self.feed, self.settings = feed, settings
        self.store = Store(settings.store_dir)

    def run(self, name: str, settings: Settings | None = None, **params: object) -> LocalRun:
        settings = settings or self.settings
        args = pipeline_arguments(settings, name, [f"{k}={v}" for k, v in params.items()])
        return run_local(name, args, Path(settings.pipeline_root), IMAGE, env=settings.pipeline_secrets())

    def day(self, n: int) -> str:
        return FEED.day_start(n).isoformat()

    @property
    def labels(self) -> Path:
        return self.feed / "oracle" / "labels"


@dataclass
class Story:
    """The runs, in the order a platform makes them, and what each found before it ran."""

    loop: Loop
    killed: str  # the error of the run whose train step was killed
    after_kill: dict  # what the store, registry and run folder held right after it
    resumed: LocalRun  # the same run again
    seed_head: Snapshot
    unlabelled: LocalRun  # day 3 without labels
    before_labels: Snapshot
    labelled: LocalRun  # day 3 again, with its labels
    refused: LocalRun  # day 4 with labels, under a gate nothing passes


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


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Story:
    feed = tmp_path_factory.mktemp("pipeline-feed")
    simulate(FEED, feed, range(SEED_DAYS + 2), workers=2)
    home = tmp_path_factory.mktemp("pipelines")
    config = home / "trendloop.toml"
    config.write_text(f'home = "{home}"\n' + CONFIG)
    loop = Loop(feed, load_settings(config))
    seed = {"source": loop.feed, "until": loop.day(SEED_DAYS), "labels": loop.labels}

    stop = threading.Event()
    killer = threading.Thread(target=_kill_training_after_first_epoch, args=(loop.settings.runs_dir, stop))
    killer.start()
    try:
        with pytest.raises(PipelineError) as killed:
            loop.run("continual_training", **seed)
    finally:
        stop.set()
        killer.join()
    registry = wiring.open_registry(loop.settings)
    after_kill = {
        "head": loop.store.head(),
        "ingests": len(list((loop.store.root / "ingests").glob("*.json"))),
        "versions": registry.versions(),
        "champion": registry.alias(CHAMPION),
        "runs": [json.loads(p.read_text())["run_id"] for p in loop.settings.runs_dir.glob("*/run.json")],
    }
    resumed = loop.run("continual_training", **seed)
    seed_head = loop.store.head()
    day = {"source": loop.feed, "since": loop.day(SEED_DAYS), "until": loop.day(SEED_DAYS + 1)}
    unlabelled = loop.run("continual_training", **day)
    before_labels = loop.store.head()
    labelled = loop.run("continual_training", **day, labels=loop.labels)
    strict = loop.settings.model_copy(update={"gate": PromotionGate(newest_slice_gain=1.0)})  # nothing beats 1.0
    refused = loop.run(
        "continual_training", settings=strict, source=loop.feed, since=loop.day(SEED_DAYS + 1), labels=loop.labels
    )
    return Story(loop, str(killed.value), after_kill, resumed, seed_head, unlabelled, before_labels, labelled, refused)


@pytest.mark.integration
def test_a_step_killed_midway_leaves_nothing_half_written_and_the_rerun_reuses_finished_steps(story: Story):
    loop, after = story.loop, story.after_kill
    assert "failed at step train" in story.killed
    head = after["head"]
    assert head is not None and loop.store.verify(head) == []  # the snapshot step's commit is whole
    assert head.labelled > 100 and after["ingests"] == 1
    assert after["versions"] == [] and after["champion"] is None  # nothing registered
    [killed_run] = after["runs"]

    again = story.resumed
    assert {"configure", "ingest", "validate"} <= set(again.cached)  # finished steps, same inputs: reused
    assert "ingest" not in again.tasks and "validate" not in again.tasks and "train" in again.tasks
    # the snapshot step's input, HEAD, moved when it committed: it ran again and found nothing new
    assert story.seed_head.id == head.id
    assert again.output == 1
    registry = wiring.open_registry(loop.settings)
    version = registry.client.get_model_version(registry.model_name, "1")
    assert version.run_id == killed_run  # training resumed the interrupted run rather than starting over
    run = registry.client.get_run(killed_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags["snapshot"] == head.id == version.tags["snapshot"]
    assert run.data.tags["kfp_run_name"] == again.run_name  # lineage: the KFP run that finished it
    assert run.data.tags["gate"] == version.tags["gate"] == "passed"  # the verdict on the run and the version
    assert registry.placed(1) == CHAMPION  # the first model to pass is the champion


@pytest.mark.integration
def test_an_unlabelled_day_is_ingested_and_no_retrain_is_due(story: Story):
    run, before = story.unlabelled, story.seed_head
    assert run.output == 0 and "skip" in run.tasks and "train" not in run.tasks
    assert run.outcome() == "no retrain was due"
    head = story.before_labels
    assert head.parent == before.id and head.posts > before.posts and head.labelled == before.labelled
    decision = json.loads((run.folder / "plan" / "decision").read_text())
    assert decision == decision | {"due": False, "new_labels": 0}
    assert decision["reason"] == "no retrain: 0 labels the newest version has not seen (a retrain needs 20)"


@pytest.mark.integration
def test_labels_for_that_day_make_a_retrain_due_and_register_a_challenger(story: Story):
    run, before, loop = story.labelled, story.before_labels, story.loop
    registry = wiring.open_registry(loop.settings)
    assert run.output == 2 and registry.placed(2) == CHALLENGER
    head = loop.store.load(registry.snapshot_of(2))
    assert head.parent == before.id and head.posts == before.posts and head.labelled > before.labelled + 30
    decision = json.loads((run.folder / "plan" / "decision").read_text())
    assert decision["due"] is True and decision["reason"].startswith("retrain due: new_labels fired")
    mlflow_run = registry.client.get_run(registry.client.get_model_version(registry.model_name, "2").run_id)
    assert mlflow_run.data.tags["mode"] == "fine-tune" and mlflow_run.data.tags["base_version"] == "1"
    assert mlflow_run.data.tags["snapshot"] == head.id
    assert "meme" in json.loads(registry.client.get_model_version(registry.model_name, "2").tags["labels"])
    scored = json.loads((run.folder / "evaluate" / "evaluation").read_text())
    assert scored["champion"]["model"] == "trendloop-tagger/1"  # the champion scored beside it, on one test split
    assert scored["champion"]["snapshot"] == scored["candidate"]["snapshot"] == head.id
    assert scored["candidate"]["newest_slice"] == "class:meme"  # the class the labels named, not an oracle's
    report = (run.folder / "evaluate" / "report").read_text()
    assert "<html" in report.lower() and f"{scored['champion']['overall']['accuracy']:.3f}" in report


@pytest.mark.integration
def test_a_refused_candidate_keeps_its_run_and_verdict_and_is_never_registered_or_aliased(story: Story):
    run, loop = story.refused, story.loop
    assert run.output == 0 and "hold" in run.tasks and "register" not in run.tasks
    registry = wiring.open_registry(loop.settings)
    assert [v.version for v in registry.versions()] == [2, 1]
    assert (registry.alias(CHAMPION), registry.alias(CHALLENGER)) == (1, 2)
    [refused] = registry.client.search_runs([registry.experiment_id()], "tags.gate = 'failed'")
    assert refused.data.tags["snapshot"] == loop.store.head().id
    assert "FAIL newest trend" in refused.data.tags["gate_reasons"]
    assert registry.version_of_run(refused.info.run_id) is None


@pytest.mark.integration
def test_the_cli_reaches_the_same_verdicts_and_aliases_as_the_pipelines_on_the_same_inputs(
    story: Story, tmp_path: Path, capsys: pytest.CaptureFixture
):
    """The same feed, days and settings through `trendloop ingest` + `trendloop train` in another home."""
    loop = story.loop
    config = tmp_path / "trendloop.toml"
    # the pipelines' pseudonym key: snapshots hold pseudonyms, so two homes make the same one only under one key
    shared_key = f'\n[privacy]\nkey_file = "{loop.settings.key_file.resolve()}"\n'
    config.write_text(f'home = "{tmp_path / "home"}"\n' + CONFIG + shared_key)
    labels, feed = str(loop.labels), str(loop.feed)

    def cli(*args: str) -> None:
        with pytest.raises(SystemExit) as exit_:
            main(["--config", str(config), *args])
        out = capsys.readouterr()
        assert (exit_.value.code or 0) == 0, out.err

    cli("ingest", feed, "--until", loop.day(SEED_DAYS), "--labels", labels)  # as continual_training does
    cli("train")
    cli("ingest", feed, "--since", loop.day(SEED_DAYS), "--until", loop.day(SEED_DAYS + 1))
    cli("ingest", feed, "--since", loop.day(SEED_DAYS), "--until", loop.day(SEED_DAYS + 1), "--labels", labels)
    cli("train")
    ours = wiring.open_registry(load_settings(config))
    theirs = wiring.open_registry(loop.settings)
    assert Store(load_settings(config).store_dir).head().id == theirs.snapshot_of(2)  # the same inputs
    for version in ("1", "2"):
        mine = ours.client.get_model_version(ours.model_name, version)
        pipeline = theirs.client.get_model_version(theirs.model_name, version)
        assert mine.tags["snapshot"] == pipeline.tags["snapshot"]
        assert mine.tags["gate"] == pipeline.tags["gate"] == "passed"
        assert mine.tags["gate_reasons"] == pipeline.tags["gate_reasons"]
    assert (ours.alias(CHAMPION), ours.alias(CHALLENGER)) == (1, 2)
