"""The loop's Kubeflow pipelines, built from the components for one image.

- ``continual_training``: ingest -> validate -> snapshot (onto HEAD, which holds the
  labels ``label_sync`` committed) -> plan (the retrain policy) -> if due: retrain; its
  output is the version it registered (0: none was due, or the gate refused it).
- ``retrain`` (used by the other two): train or fine-tune -> evaluate -> gate -> if
  passed: register (@champion for the first, else @challenger) -> ask serving to load it;
  else: hold (the run keeps the verdict, nothing is registered).
- ``drift_monitor``: drift report on a window of served traffic -> if drift: select an
  active-learning batch -> push it to Label Studio.
- ``label_sync``: pull annotations -> label checks -> labelled snapshot -> plan -> if due:
  retrain.

No ``from __future__ import annotations``: KFP reads the pipelines' signatures at runtime.
Every pipeline takes ``config``: the settings as JSON (``Settings.for_pipeline``), so the
same compiled pipeline runs against whatever stores its run names. Its first step,
``configure``, cuts it into each step's own sections, so a step's cache key changes only
when a setting it reads does.
"""

from collections.abc import Callable

from kfp import dsl
from kfp.dsl.pipeline_channel import PipelineChannel
from kfp.dsl.pipeline_task import PipelineTask

from pipelines.components import Components, StepOptions, build


def retrain_pipeline(c: Components) -> Callable:
    @dsl.pipeline(name="retrain", description="Train or fine-tune, evaluate, gate; register and serve what passes.")
    def retrain(
        train_config: str,
        evaluate_config: str,
        gate_config: str,
        register_config: str,
        hold_config: str,
        load_config: str,
        snapshot: dsl.Input[dsl.Dataset],
        mode: str = "auto",
    ) -> int:
        trained = c.train(
            config=train_config,
            snapshot=snapshot,
            mode=mode,
            kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            kfp_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
        )
        scored = c.evaluate(config=evaluate_config, snapshot=snapshot, model=trained.outputs["model"])
        gated = c.gate(config=gate_config, evaluation=scored.outputs["evaluation"])
        judged = {
            "model": trained.outputs["model"],
            "evaluation": scored.outputs["evaluation"],
            "verdict": gated.outputs["verdict"],
        }
        with dsl.If(gated.outputs["Output"] == True, name="passed"):  # noqa: E712 - KFP builds a condition
            # it moves aliases: always look at the registry as it is now
            registered = c.register(config=register_config, **judged).set_caching_options(False)
            c.load(config=load_config, version=registered.output).set_caching_options(False)
        with dsl.Else(name="refused"):
            held = c.hold(config=hold_config, **judged)
        return dsl.OneOf(registered.output, held.output)

    return retrain


def _retrain_if_due(
    c: Components, retrain: Callable, configs: PipelineTask, snapshot: PipelineChannel, mode: str
) -> dsl.OneOf:
    """plan -> if due: retrain, else: skip; the version registered (0: none)."""
    planned = c.plan(config=configs.outputs["plan"], snapshot=snapshot).set_caching_options(False)
    with dsl.If(planned.outputs["Output"] == True, name="retrain-due"):  # noqa: E712
        retrained = _nested(
            c,
            retrain(
                **{f"{step}_config": configs.outputs[step] for step in RETRAIN_STEPS},
                snapshot=snapshot,
                mode=mode,
            ),
        )
    with dsl.Else(name="not-due"):
        skipped = c.skip(decision=planned.outputs["decision"])
    return dsl.OneOf(retrained.output, skipped.output)


RETRAIN_STEPS = ("train", "evaluate", "gate", "register", "hold", "load")


def continual_training_pipeline(c: Components) -> Callable:
    retrain = retrain_pipeline(c)

    @dsl.pipeline(
        name="continual-training",
        description="Ingest fresh posts, validate, snapshot with new labels; when a retrain is due: train, evaluate, "
        "gate, register, serve.",
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
        configs = c.configure(config=config)
        read = c.ingest(
            config=configs.outputs["ingest"], source=source, since=since, until=until, source_version=source_version
        )
        checked = c.validate(config=configs.outputs["validate"], posts=read.outputs["posts"])
        head = c.head_state(config=configs.outputs["head_state"]).set_caching_options(False)  # HEAD as it is now
        snap = c.snapshot(
            config=configs.outputs["snapshot"], checked=checked.outputs["checked"], labels=labels, head=head.output
        )
        return _retrain_if_due(c, retrain, configs, snap.outputs["snapshot"], mode)

    return continual_training


def drift_monitor_pipeline(c: Components) -> Callable:
    @dsl.pipeline(
        name="drift-monitor",
        description="Test a window of served traffic for drift; on drift, send the most informative posts to "
        "Label Studio.",
    )
    def drift_monitor(config: str, since: str = "", until: str = "") -> bool:
        configs = c.configure(config=config)
        checked = c.drift_report(config=configs.outputs["drift_report"], since=since, until=until)
        checked.set_caching_options(False)  # the traffic as it is now
        with dsl.If(checked.outputs["Output"] == True, name="drift"):  # noqa: E712 - KFP builds a condition
            picked = c.select(config=configs.outputs["select"]).set_caching_options(False)
            c.push(config=configs.outputs["push"], batch=picked.outputs["batch"])
        return checked.outputs["Output"]

    return drift_monitor


def label_sync_pipeline(c: Components) -> Callable:
    retrain = retrain_pipeline(c)

    @dsl.pipeline(
        name="label-sync",
        description="Pull finished annotations, check them, commit a labelled snapshot; retrain when one is due.",
    )
    def label_sync(config: str, mode: str = "auto") -> int:
        configs = c.configure(config=config)
        pulled = c.pull(config=configs.outputs["pull"]).set_caching_options(False)  # Label Studio as it is now
        checked = c.check_labels(config=configs.outputs["check_labels"], annotations=pulled.outputs["annotations"])
        committed = c.commit(config=configs.outputs["commit"], labels=checked.outputs["labels"])
        return _retrain_if_due(c, retrain, configs, committed.outputs["snapshot"], mode)

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
