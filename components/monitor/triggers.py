"""When to retrain: small policy objects over one ``TriggerContext``.

KFP has no event triggers (kfp#651): a pipeline step, a cron job or the CLI builds
the context and asks the policy. Each trigger says whether it fires and why; a retrain
is due when any trigger fires and there are at least ``min_new_labels`` labels the
newest version has not trained on (retraining on what it saw already changes nothing).
With no champion at all, the labels alone make the first model due, whichever triggers
are switched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from components.monitor.drift import DriftVerdict


@dataclass(frozen=True)
class TriggerContext:
    """What the triggers look at, gathered once per decision."""

    now: datetime
    drift: DriftVerdict | None  # the latest drift check, if one ran
    new_labels: int  # labelled posts the newest registered version has not trained on (all, with none)
    champion_since: datetime | None  # when the champion was registered; None: there is none
    feedback_accuracy: float | None  # the champion's accuracy on posts labelled after it predicted them
    feedback_posts: int  # how many such posts
    champion_accuracy: float | None  # its test accuracy when it was gated


@dataclass(frozen=True)
class Decision:
    trigger: str
    fire: bool
    reason: str


class Trigger(Protocol):
    name: str

    def should_retrain(self, context: TriggerContext) -> Decision: ...


@dataclass(frozen=True)
class DriftTrigger:
    """Fire when a drift check flagged at least ``min_signals`` signals."""

    min_signals: int = 1
    name: str = "drift"

    def should_retrain(self, context: TriggerContext) -> Decision:
        if context.drift is None:
            return Decision(self.name, False, "no drift check since the newest version")
        drifted = context.drift.drifted_signals
        fire = len(drifted) >= self.min_signals
        what = ", ".join(drifted) if drifted else "no signal"
        return Decision(self.name, fire, f"{what} drifted (fires at {self.min_signals})")


@dataclass(frozen=True)
class NewLabelsTrigger:
    """Fire once ``min_labels`` posts were labelled that the newest version has not trained on."""

    min_labels: int = 500
    name: str = "new_labels"

    def should_retrain(self, context: TriggerContext) -> Decision:
        fire = context.new_labels >= self.min_labels
        return Decision(self.name, fire, f"{context.new_labels} new labels (fires at {self.min_labels})")


@dataclass(frozen=True)
class ScheduleTrigger:
    """Fire when the champion is older than ``every`` (with none, ``RetrainPolicy.decide`` says so)."""

    every: timedelta = timedelta(days=7)
    name: str = "schedule"

    def should_retrain(self, context: TriggerContext) -> Decision:
        if context.champion_since is None:
            return Decision(self.name, False, "there is no champion to age")
        age = context.now - context.champion_since
        fire = age >= self.every
        return Decision(self.name, fire, f"champion is {_days(age)} old (fires at {_days(self.every)})")


@dataclass(frozen=True)
class PerformanceTrigger:
    """Fire when accuracy on fresh feedback falls ``max_drop`` below the champion's test accuracy.

    Needs ``min_feedback`` labelled predictions: on fewer, a drop is noise.
    """

    max_drop: float = 0.05
    min_feedback: int = 100
    name: str = "performance"

    def should_retrain(self, context: TriggerContext) -> Decision:
        if context.feedback_accuracy is None or context.feedback_posts < self.min_feedback:
            return Decision(
                self.name, False, f"{context.feedback_posts} labelled predictions (needs {self.min_feedback})"
            )
        if context.champion_accuracy is None:
            return Decision(self.name, False, "the champion has no gated test accuracy to compare with")
        drop = context.champion_accuracy - context.feedback_accuracy
        return Decision(
            self.name,
            drop >= self.max_drop,
            f"accuracy {context.feedback_accuracy:.3f} on {context.feedback_posts} labelled predictions, "
            f"test {context.champion_accuracy:.3f} (fires at a {self.max_drop:.3f} drop)",
        )


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86_400:.1f} days"


LABELS = "labels"  # the floor every retrain needs, reported beside the triggers
FIRST = "first_model"  # no champion yet: the floor is all the first model needs


class RetrainPolicy(BaseModel):
    """Which triggers run, with their settings; a value of 0 switches a trigger off."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min_new_labels: int = Field(default=20, ge=1)  # labels the newest version lacks that any retrain needs
    drift_signals: int = Field(default=1, ge=0)  # drifted signals that fire a retrain
    new_labels: int = Field(default=500, ge=0)  # new labels that fire a retrain
    every_days: float = Field(default=7.0, ge=0)  # champion age that fires a retrain
    max_accuracy_drop: float = Field(default=0.05, ge=0, le=1)  # drop on feedback that fires a retrain
    min_feedback: int = Field(default=100, ge=1)  # labelled predictions the drop needs

    def triggers(self) -> list[Trigger]:
        found: list[Trigger] = []
        if self.drift_signals:
            found.append(DriftTrigger(self.drift_signals))
        if self.new_labels:
            found.append(NewLabelsTrigger(self.new_labels))
        if self.every_days:
            found.append(ScheduleTrigger(timedelta(days=self.every_days)))
        if self.max_accuracy_drop:
            found.append(PerformanceTrigger(self.max_accuracy_drop, self.min_feedback))
        return found

    def decide(self, context: TriggerContext) -> list[Decision]:
        """The floor (enough new labels) first, then each trigger's say."""
        floor = Decision(
            LABELS,
            context.new_labels >= self.min_new_labels,
            f"{context.new_labels} labels the newest version has not seen (a retrain needs {self.min_new_labels})",
        )
        first = [Decision(FIRST, True, "there is no champion yet")] if context.champion_since is None else []
        return [floor, *first, *(t.should_retrain(context) for t in self.triggers())]

    @staticmethod
    def due(decisions: list[Decision]) -> bool:
        """A retrain is due when the floor holds and any trigger fires."""
        floor = [d.fire for d in decisions if d.trigger == LABELS]
        return all(floor) and any(d.fire for d in decisions if d.trigger != LABELS)
