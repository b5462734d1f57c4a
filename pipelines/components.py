"""The loop's steps as KFP v2 components: each body imports ``pipelines.steps`` and calls one function.

They are lightweight Python components whose ``base_image`` is the project's own
image (``infra/Dockerfile``: the package installed), with ``install_kfp_package=False``.
On a cluster each step runs in that image; under ``kfp.local``'s SubprocessRunner the
very same component runs in the current environment. KFP copies each function's
source into the step's command, so the bodies stay an import and a call.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output
from kfp.dsl.pipeline_task import PipelineTask
from kfp.dsl.python_component import PythonComponent

# No `from __future__ import annotations` here: KFP reads these signatures' types at runtime.


def configure(
    config: str,
) -> NamedTuple(
    "StepConfigs",
    [
        ("ingest", str),
        ("validate", str),
        ("head_state", str),
        ("snapshot", str),
        ("plan", str),
        ("train", str),
        ("evaluate", str),
        ("gate", str),
        ("register", str),
        ("hold", str),
        ("load", str),
        ("drift_report", str),
        ("select", str),
        ("push", str),
        ("pull", str),
        ("check_labels", str),
        ("commit", str),
    ],
):
    # one output per step: the settings sections that step reads (pipelines.steps.READS)
    from pipelines import steps

    return steps.configure(config)


def ingest(config: str, source: str, since: str, until: str, source_version: str, posts: Output[Dataset]) -> int:
    # source_version (a fingerprint of what the source holds) is only part of the cache key
    from pipelines import steps

    return steps.ingest(config, source, since, until, posts)


def validate(config: str, posts: Input[Dataset], checked: Output[Dataset], metrics: Output[Metrics]) -> int:
    from pipelines import steps

    return steps.validate(config, posts, checked, metrics)


def head_state(config: str) -> str:
    from pipelines import steps

    return steps.head_state(config)


def snapshot(config: str, checked: Input[Dataset], labels: str, head: str, snapshot: Output[Dataset]) -> str:
    from pipelines import steps

    return steps.snapshot(config, checked, labels, head, snapshot)


def plan(config: str, snapshot: Input[Dataset], decision: Output[Artifact]) -> bool:
    from pipelines import steps

    return steps.plan(config, snapshot, decision)


def skip(decision: Input[Artifact]) -> int:
    from pipelines import steps

    return steps.skip(decision)


def train(
    config: str,
    snapshot: Input[Dataset],
    mode: str,
    kfp_run_id: str,
    kfp_run_name: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> str:
    from pipelines import steps

    return steps.train(config, snapshot, mode, kfp_run_id, kfp_run_name, model, metrics)


def evaluate(
    config: str,
    snapshot: Input[Dataset],
    model: Input[Model],
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
) -> float:
    from pipelines import steps

    return steps.evaluate(config, snapshot, model, evaluation, metrics, report)


def gate(config: str, evaluation: Input[Artifact], verdict: Output[Artifact]) -> bool:
    from pipelines import steps

    return steps.gate(config, evaluation, verdict)


def register(config: str, model: Input[Model], evaluation: Input[Artifact], verdict: Input[Artifact]) -> int:
    from pipelines import steps

    return steps.register(config, model, evaluation, verdict)


def hold(config: str, model: Input[Model], evaluation: Input[Artifact], verdict: Input[Artifact]) -> int:
    from pipelines import steps

    return steps.hold(config, model, evaluation, verdict)


def load(config: str, version: int) -> str:
    from pipelines import steps

    return steps.load(config, version)


def drift_report(config: str, since: str, until: str, report: Output[HTML], check: Output[Artifact]) -> bool:
    from pipelines import steps

    return steps.drift_report(config, since, until, report, check)


def select(config: str, batch: Output[Dataset]) -> int:
    from pipelines import steps

    return steps.select(config, batch)


def push(config: str, batch: Input[Dataset]) -> int:
    from pipelines import steps

    return steps.push(config, batch)


def pull(config: str, annotations: Output[Dataset], metrics: Output[Metrics]) -> int:
    from pipelines import steps

    return steps.pull(config, annotations, metrics)


def check_labels(config: str, annotations: Input[Dataset], labels: Output[Dataset]) -> int:
    from pipelines import steps

    return steps.check_labels(config, annotations, labels)


def commit(config: str, labels: Input[Dataset], snapshot: Output[Dataset]) -> int:
    from pipelines import steps

    return steps.commit(config, labels, snapshot)


STEPS = (
    configure, ingest, validate, head_state, snapshot, plan, skip, train, evaluate, gate, register, hold, load,
    drift_report, select, push,
    pull, check_labels, commit,
)  # fmt: skip


@dataclass(frozen=True)
class StepOptions:
    """What every step gets beside its arguments: on a cluster, the volume holding ``home`` and the secrets
    turned into environment variables; anywhere, whether its outputs may be reused.

    The defaults (the embedded default's) add nothing to the compiled pipeline.
    """

    volume: str | None = None  # a ReadWriteMany PersistentVolumeClaim
    mount_path: str = "/data/trendloop"  # where it is mounted: the settings' home
    secrets: dict[str, str] = field(default_factory=dict)  # env var -> "secret-name/key"
    cache: bool = True  # False: no step reuses outputs (compiled into every task, nested ones included)
    train_gpus: int = 0  # accelerators the train step's pod asks for (its limit); 0: none
    train_accelerator: str = "nvidia.com/gpu"  # their Kubernetes resource name

    def apply(self, task: PipelineTask, step: str = "") -> PipelineTask:
        if not self.cache:
            task.set_caching_options(False)
        if step == "train" and self.train_gpus:
            task.set_accelerator_type(self.train_accelerator).set_accelerator_limit(self.train_gpus)
        if self.volume is None and not self.secrets:
            return task
        from kfp import kubernetes  # kfp-kubernetes only matters when compiling for a cluster

        if self.volume is not None:
            kubernetes.mount_pvc(task, pvc_name=self.volume, mount_path=self.mount_path)
        by_secret: dict[str, dict[str, str]] = {}
        for env, ref in sorted(self.secrets.items()):
            name, _, key = ref.partition("/")
            by_secret.setdefault(name, {})[key] = env
        for name, key_to_env in by_secret.items():
            kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=key_to_env)
        return task


Step = Callable[..., PipelineTask]


@dataclass(frozen=True)
class Components:
    """Every step as a KFP component running in ``image``, placed on the cluster's volume and secret."""

    image: str
    options: StepOptions
    configure: Step
    ingest: Step
    validate: Step
    head_state: Step
    snapshot: Step
    plan: Step
    skip: Step
    train: Step
    evaluate: Step
    gate: Step
    register: Step
    hold: Step
    load: Step
    drift_report: Step
    select: Step
    push: Step
    pull: Step
    check_labels: Step
    commit: Step


def build(image: str, options: StepOptions | None = None) -> Components:
    """The components for the project's image ``image`` (from configuration: ``[pipelines] image``)."""
    options = options or StepOptions()
    made = {
        f.__name__: _placed(dsl.component(f, base_image=image, install_kfp_package=False), options, f.__name__)
        for f in STEPS
    }
    return Components(image=image, options=options, **made)


def _placed(component: PythonComponent, options: StepOptions, step: str) -> Step:
    def task(**arguments: object) -> PipelineTask:
        return options.apply(component(**arguments), step)

    return task
