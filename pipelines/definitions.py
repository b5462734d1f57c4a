"""The loop's Kubeflow pipelines, built from the components for one image.

- ``continual_training``: ingest -> validate -> snapshot (onto HEAD, which holds the
  labels ``label_sync`` committed) -> retrain; its output is the version it
  registered (0: none passed).
- ``retrain`` (used by the other two): train or fine-tune -> evaluate -> gate ->
  if passed: register (@challenger, or @champion for the first) -> ask serving to load it.
- ``drift_monitor``: drift report on a window of traffic -> if drift: select an
  active-learning batch -> push it to Label Studio.
- ``label_sync``: pull annotations -> quality checks -> labelled snapshot -> if
  enough new labels: retrain.

No ``from __future__ import annotations``: KFP reads the pipelines' signatures at runtime.
Every pipeline takes ``config``: the settings as JSON (``Settings.for_pipeline``), so
the same compiled pipeline runs against whatever stores its run names.
"""

from collections.abc import Callable

from kfp import dsl
from kfp.dsl import Dataset, Input
from kfp.dsl.pipeline_task import PipelineTask

from pipelines.components import Components, StepOptions, build


def retrain_pipeline(c: Components) -> Callable:
    @dsl.pipeline(name="retrain", description="Train or fine-tune, evaluate, gate; register and serve what passes.")
    def retrain(config: str, snapshot: Input[Dataset], mode: str = "auto") -> int:
        trained = c.train(
            config=config,
            snapshot=snapshot,
            mode=mode,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
        scored = c.evaluate(config=config, snapshot=snapshot, model=trained.outputs["model"])
        gated = c.gate(config=config, evaluation=scored.outputs["evaluation"])
        with dsl.If(gated.outputs["Output"] == True, name="passed"):  # noqa: E712 - KFP builds a condition
            registered = c.register(
                config=config,
                model=trained.outputs["model"],
                evaluation=scored.outputs["evaluation"],
                verdict=gated.outputs["verdict"],
            ).set_caching_options(False)  # it moves aliases: always look at the registry as it is now
            c.load(config=config, version=registered.output).set_caching_options(False)
        with dsl.Else(name="refused"):
            held = c.hold(verdict=gated.outputs["verdict"])
        return dsl.OneOf(registered.output, held.output)

    return retrain


def continual_training_pipeline(c: Components) -> Callable:
    retrain = retrain_pipeline(c)

    @dsl.pipeline(
        name="continual-training",
        description="Ingest fresh posts, validate, snapshot with new labels, train, evaluate, gate, register, serve.",
    )
    def continual_training(
        config: str,
        source: str,
        since: str = "",
        until: str = "",
        labels: str = "",
        source_version: str = "",
        mode: str = "auto",
    ) -> int:
        read = c.ingest(config=config, source=source, since=since, until=until, source_version=source_version)
        checked = c.validate(config=config, posts=read.outputs["posts"])
        head = c.head_state(config=config).set_caching_options(False)  # HEAD as it is now
        snap = c.snapshot(config=config, checked=checked.outputs["checked"], labels=labels, head=head.output)
        return _nested(c, retrain(config=config, snapshot=snap.outputs["snapshot"], mode=mode)).output

    return continual_training


def drift_monitor_pipeline(c: Components) -> Callable:
    @dsl.pipeline(
        name="drift-monitor",
        description="Test a window of traffic for drift; on drift, send the most informative posts to Label Studio.",
    )
    def drift_monitor(config: str, since: str = "", until: str = "") -> bool:
        checked = c.drift_report(config=config, since=since, until=until).set_caching_options(False)
        with dsl.If(checked.outputs["Output"] == True, name="drift"):  # noqa: E712 - KFP builds a condition
            picked = c.select(config=config, since=since, until=until).set_caching_options(False)
            c.push(config=config, batch=picked.outputs["batch"])
        return checked.outputs["Output"]

    return drift_monitor


def label_sync_pipeline(c: Components) -> Callable:
    retrain = retrain_pipeline(c)

    @dsl.pipeline(
        name="label-sync",
        description="Pull finished annotations, check them, commit a labelled snapshot; retrain on enough new labels.",
    )
    def label_sync(config: str, min_new_labels: int = 20, min_agreement: float = 0.0, mode: str = "auto") -> int:
        pulled = c.pull(config=config).set_caching_options(False)  # reads Label Studio as it is now
        checked = c.check_labels(config=config, annotations=pulled.outputs["annotations"], min_agreement=min_agreement)
        committed = c.commit(config=config, labels=checked.outputs["labels"])
        with dsl.If(committed.outputs["Output"] >= min_new_labels, name="enough-new-labels"):
            _nested(c, retrain(config=config, snapshot=committed.outputs["snapshot"], mode=mode))
        return committed.outputs["Output"]

    return label_sync


def _nested(c: Components, task: PipelineTask) -> PipelineTask:
    """A pipeline used as a step: a run that may not reuse outputs may not reuse the nested pipeline's either."""
    return task if c.options.cache else task.set_caching_options(False)


BUILDERS = {
    "continual_training": continual_training_pipeline,
    "drift_monitor": drift_monitor_pipeline,
    "label_sync": label_sync_pipeline,
}


def pipelines(image: str, options: StepOptions | None = None) -> dict[str, Callable]:
    """Every pipeline, by name, for the project's image ``image`` (and, on a cluster, its volume and secret)."""
    c = build(image, options)
    return {name: make(c) for name, make in BUILDERS.items()}
