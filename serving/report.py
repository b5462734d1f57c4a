"""From the serving logs to the A/B report: one row per user, a timeline, then the statistics.

The unit is the user (the randomisation unit). A user's arm is recomputed from the
experiment's salt and split (intention to treat): a request the challenger could not
take and the champion served still counts for the challenger's users, so a hiccup
on one arm cannot bias the comparison. Exposures are the experiment's predictions;
engagements are click and like events on them, reports are report events.

The CUPED covariate is a per-user number fixed before the test started, chosen by
configuration (``[serving] cuped_covariate``):

- ``serving_log`` (``LoggedEngagement``): each user's engagement rate with served
  tags over ``pre_days`` before the start, from the same logs: the outcome's own
  metric, but only users served before the test have one;
- a feature reference such as ``user_profile_fv:engagement_rate_28d``
  (``StoredFeature``): read from the feature store point in time at the start, so
  every user with a posting history has one, served before or not.

Users without a value get the pooled mean (see abtest).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from components.data.predlog import PredictionLog, served
from components.errors import ConfigError
from components.features.store import Features, split_ref
from serving.abtest import DecisionRule, analyse
from serving.eventlog import ENGAGEMENTS, FeedbackLog
from serving.experiment import ARMS, Experiment, Experiments, assign_arm
from serving.router import Traffic

BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400)  # timeline bucket widths, seconds: the first giving <= 48


def user_table(exposures: pd.DataFrame, feedback: pd.DataFrame, experiment: Experiment) -> pd.DataFrame:
    """(user_id, arm, exposures, engagements, reports) from prediction rows and feedback rows."""
    if exposures.empty:
        return pd.DataFrame(columns=["user_id", "arm", "exposures", "engagements", "reports"])
    users = exposures.groupby("user_id").size().rename("exposures").to_frame()
    events = _event_counts(feedback)
    users = users.join(events, how="left").fillna(0).astype(int).reset_index()
    users["arm"] = [assign_arm(u, experiment.salt, experiment.split) for u in users["user_id"]]
    return users[["user_id", "arm", "exposures", "engagements", "reports"]]


def _event_counts(feedback: pd.DataFrame) -> pd.DataFrame:
    if feedback.empty:
        return pd.DataFrame(columns=["engagements", "reports"], index=pd.Index([], name="user_id"))
    engaged = feedback["event"].isin(ENGAGEMENTS)
    reported = feedback["event"] == "report"
    return pd.DataFrame(
        {
            "engagements": engaged.groupby(feedback["user_id"]).sum(),
            "reports": reported.groupby(feedback["user_id"]).sum(),
        }
    )


def pre_rates(exposures: pd.DataFrame, feedback: pd.DataFrame) -> pd.Series:
    """Each user's engagement rate (engagements / exposures) in the pre-period logs."""
    if exposures.empty:
        return pd.Series(dtype=float, name="pre_rate")
    counts = exposures.groupby("user_id").size()
    engaged = _event_counts(feedback)["engagements"].reindex(counts.index).fillna(0)
    return (engaged / counts).rename("pre_rate")


class Covariate(Protocol):
    """A pre-test number per user for CUPED."""

    name: str  # what the report says was used

    def __call__(self, users: list[str], start: datetime) -> pd.Series:  # user_id -> value (NaN: unknown)
        ...


@dataclass(frozen=True)
class LoggedEngagement:
    """Engagement rate with served tags over ``pre_days`` before the start, from the serving logs."""

    predictions: PredictionLog
    feedback: FeedbackLog
    pre_days: float = 14.0

    @property
    def name(self) -> str:
        return f"serving logs: engagement rate in the {self.pre_days:g} days before the test"

    def __call__(self, users: list[str], start: datetime) -> pd.Series:
        pre_start = start - timedelta(days=self.pre_days)
        # outside any test (an earlier phase of a ramped test would carry the challenger's effect into the
        # covariate, and CUPED would subtract part of the lift), and only requests users sent, not the
        # drift checks' batch predictions
        outside = pc.field("experiment").is_null()
        pre_exp = self.predictions.read(pre_start, start, where=served() & outside, columns=["user_id"]).to_pandas()
        pre_fb = self.feedback.read(pre_start, start, where=outside, columns=["user_id", "event"]).to_pandas()
        return pd.Series(users, dtype=object).map(pre_rates(pre_exp, pre_fb)).astype(float).set_axis(users)


@dataclass
class StoredFeature:
    """A numeric user feature from the feature store as it stood when the test started (a point-in-time read).

    Values are kept per (start, user): a report refreshed every few seconds reads only
    users it has not seen, and the covariate of a user never changes during a test.
    """

    features: Features | Callable[[], Features]  # a store, or how to open one (on first use)
    ref: str = "user_profile_fv:engagement_rate_28d"
    _known: dict[tuple[datetime, str], float] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"feature store: {self.ref} at the test's start"

    def __call__(self, users: list[str], start: datetime) -> pd.Series:
        new = [u for u in dict.fromkeys(users) if (start, u) not in self._known]
        if new:
            if callable(self.features):
                self.features = self.features()
            view = self.features.view(split_ref(self.ref)[0])
            if view.join_keys != ["user_id"]:
                raise ConfigError(f"cuped_covariate {self.ref} is not a user feature (its keys: {view.join_keys})")
            rows = pd.DataFrame({"user_id": new, "event_timestamp": pd.Timestamp(start).tz_convert(UTC)})
            column = self.features.historical(rows, [self.ref])[split_ref(self.ref)[1]]
            if column.map(lambda v: isinstance(v, list | tuple | np.ndarray | str)).any():
                raise ConfigError(f"cuped_covariate {self.ref} is not a number per user")
            values = pd.to_numeric(column, errors="coerce").to_numpy(float)
            self._known.update({(start, u): float(v) for u, v in zip(new, values, strict=True)})
        return pd.Series([self._known[(start, u)] for u in users], index=users, dtype=float)


def covariate_from(
    choice: str, predictions: PredictionLog, feedback: FeedbackLog, pre_days: float, features: Callable[[], Features]
) -> Covariate:
    """``serving_log`` or a ``view:feature`` reference -> the covariate it names."""
    if choice == "serving_log":
        return LoggedEngagement(predictions, feedback, pre_days)
    if ":" not in choice:
        raise ConfigError(f"cuped_covariate is serving_log or a view:feature reference, not {choice!r}")
    split_ref(choice)  # a malformed reference fails here, not at the first report
    return StoredFeature(features, choice)


def timeline(exposures: pd.DataFrame, feedback: pd.DataFrame, start: datetime, end: datetime) -> list[dict]:
    """Per time bucket and arm: users, exposures, engagements, reports (buckets of equal width)."""
    span = max((end - start).total_seconds(), 1.0)
    width = next((w for w in BUCKETS if span / w <= 48), BUCKETS[-1])
    n = int(np.ceil(span / width))
    grid = pd.MultiIndex.from_product([range(n), ARMS], names=["bucket", "arm"])
    seen = exposures.assign(bucket=_bucket(exposures["time"], start, width, n)).groupby(["bucket", "arm"])
    events = feedback.assign(
        bucket=_bucket(feedback["time"], start, width, n),
        engaged=feedback["event"].isin(ENGAGEMENTS),
        reported=feedback["event"] == "report",
    ).groupby(["bucket", "arm"])
    table = pd.DataFrame(
        {
            "users": seen["user_id"].nunique(),
            "exposures": seen.size(),
            "engagements": events["engaged"].sum(),
            "reports": events["reported"].sum(),
        }
    )
    table = table.reindex(grid).fillna(0).astype(int).reset_index()  # (n * arms) rows, empty buckets as 0
    table.insert(0, "start", [(start + timedelta(seconds=int(b) * width)).isoformat() for b in table["bucket"]])
    return table.drop(columns="bucket").to_dict("records")


def _bucket(times: pd.Series, start: datetime, width: int, n: int) -> pd.Series:
    seconds = (pd.to_datetime(times, utc=True) - pd.Timestamp(start)).dt.total_seconds()
    return (seconds // width).clip(0, n - 1).astype(int) if len(times) else pd.Series(dtype=int, index=times.index)


def ab_report(
    predictions: PredictionLog,
    feedback: FeedbackLog,
    experiment: Experiment,
    pre_days: float = 14.0,
    now: datetime | None = None,
    covariate: Covariate | None = None,
) -> dict:
    """The report ``/ab/report.json`` serves and ``trendloop ab decide`` reads.

    ``covariate`` is CUPED's pre-test number per user; by default the serving logs'
    engagement rate over ``pre_days``.
    """
    now = now or datetime.now(UTC)
    start, end = experiment.started(), experiment.ended() or now
    is_exp = pc.field("experiment") == experiment.id
    cols = ["request_id", "user_id", "arm", "latency_ms", "time"]
    exposures = predictions.read(start, end, where=is_exp, columns=cols).to_pandas()
    events = feedback.read(start, where=is_exp, columns=["request_id", "event", "user_id", "arm", "time"]).to_pandas()
    events = events[events["request_id"].isin(set(exposures["request_id"]))]  # feedback on this test's exposures
    events = events.drop_duplicates(["request_id", "event"])  # a retried or repeated click counts once

    covariate = covariate or LoggedEngagement(predictions, feedback, pre_days)
    users = user_table(exposures, events, experiment)
    ids = users["user_id"].astype(str).tolist()
    users["pre_rate"] = covariate(ids, start).reindex(ids).to_numpy(float) if ids else np.zeros(0)
    latencies = {arm: exposures.loc[exposures["arm"] == arm, "latency_ms"].to_numpy(float) for arm in ARMS}
    rule = DecisionRule.from_dict(experiment.rule)
    report = analyse(users, latencies, experiment.split, rule).to_dict()
    report["experiment"] = {
        "id": experiment.id,
        "started_at": experiment.started_at,
        "ended_at": experiment.ended_at,
        "outcome": experiment.outcome,
        "champion_version": experiment.champion_version,
        "challenger_version": experiment.challenger_version,
        "split": experiment.split,
    }
    report["covariate"] = covariate.name
    report["generated_at"] = now.isoformat()
    report["timeline"] = timeline(exposures, events, start, min(end, now))
    return report


def current_report(
    traffic: Traffic,
    experiments: Experiments,
    predictions: PredictionLog,
    feedback: FeedbackLog,
    pre_days: float,
    covariate: Covariate | None = None,
) -> dict:
    """What ``/ab/report.json`` shows for the router's live knobs: the running test, or that none runs."""
    if traffic.experiment is None:
        return {
            "experiment": {"id": None, "champion_version": traffic.champion_version, "challenger_version": None},
            "decision": {
                "verdict": "none",
                "headline": "No A/B test is running: every user sees the champion.",
                "reasons": [],
            },
        }
    return ab_report(predictions, feedback, experiments.get(traffic.experiment), pre_days, covariate=covariate)
