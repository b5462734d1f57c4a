"""Simulated annotators: they answer from the simulator's ground truth, through Label Studio's API.

Each is a Label Studio user. For every task with fewer annotations than
``per_task`` they pick the true label when the interface offers it; a post of a
class the interface does not offer yet gets "other / new trend" with the class
typed as its name, the way a person names a trend they see for the first time.
With probability ``error_rate`` an answer is a wrong label drawn uniformly. Nothing
here writes a label anywhere but into Label Studio.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from active_learning.consensus import OTHER

if TYPE_CHECKING:
    from active_learning.labelstudio import LabelingProject


class AnnotatorsConfig(BaseModel):
    """The simulated annotators of the demo and the tests."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(default=3, ge=1)  # people in the pool
    per_task: int = Field(default=1, ge=1)  # annotations each task gets (at most count)
    error_rate: float = Field(default=0.05, ge=0, le=1)  # chance an answer is a wrong label
    seed: int = 0
    workers: int = Field(default=4, ge=1)  # annotations submitted at once


@dataclass(frozen=True)
class AnnotateReport:
    tasks: int  # tasks annotated
    annotations: int
    wrong: int  # answers that differ from the truth on purpose
    named: int  # answers naming a new trend
    unknown: int  # tasks whose post the ground truth does not know (left alone)


def annotate(project: LabelingProject, truth: dict[str, str], config: AnnotatorsConfig) -> AnnotateReport:
    """Bring every task of the project up to ``per_task`` annotations."""
    from active_learning.labelstudio import annotations_of  # noqa: PLC0415 - the settings import this module

    per_task = min(config.per_task, config.count)
    people = project.annotator_ids([f"annotator-{i + 1}" for i in range(config.count)])
    offered = project.labels()
    jobs, tasks, wrong, named, unknown = [], 0, 0, 0, 0
    for task in project.tasks_below(per_task):
        true = truth.get(task.data.get("post_id"))
        if true is None:
            unknown += 1
            continue
        made = annotations_of(task)
        done_by = {a.get("completed_by") for a in made}
        free = [uid for uid in people.values() if uid not in done_by]
        rng = np.random.default_rng([config.seed, task.id])
        need = min(per_task - len(made), len(free))
        for uid in rng.choice(free, size=need, replace=False) if need > 0 else []:
            answer = true
            if rng.random() < config.error_rate and len(offered) > 1:
                answer = str(rng.choice([label for label in offered if label != true]))
                wrong += 1
            choice, trend = (answer, None) if answer in offered else (OTHER, answer)
            named += trend is not None
            jobs.append((task.id, choice, trend, int(uid)))
        tasks += need > 0
    with ThreadPoolExecutor(config.workers) as pool:
        list(pool.map(lambda job: project.annotate(*job), jobs))
    return AnnotateReport(tasks, len(jobs), wrong, named, unknown)
