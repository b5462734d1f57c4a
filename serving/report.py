"""From the serving logs to the A/B report: one row per user, a timeline, then the statistics.

The unit is the user (the randomisation unit). A user's arm is recomputed from the
experiment's salt and split (intention to treat): a request the challenger could not
take and the champion served still counts for the challenger's users, so a hiccup
on one arm cannot bias the comparison. Exposures are the experiment's predictions;
engagements are click and like events on them, reports are report events. The
CUPED covariate is each user's engagement rate over ``pre_days`` before the start,
from the same logs (users without history get the pooled mean, see abtest).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from components.predlog import PredictionLog
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
) -> dict:
    """The report ``/ab/report.json`` serves and ``trendloop ab decide`` reads."""
    now = now or datetime.now(UTC)
    start, end = experiment.started(), experiment.ended() or now
    is_exp = pc.field("experiment") == experiment.id
    cols = ["request_id", "user_id", "arm", "latency_ms", "time"]
    exposures = predictions.read(start, end, where=is_exp, columns=cols).to_pandas()
    events = feedback.read(start, where=is_exp, columns=["request_id", "event", "user_id", "arm", "time"]).to_pandas()
    events = events[events["request_id"].isin(set(exposures["request_id"]))]  # feedback on this test's exposures
    events = events.drop_duplicates(["request_id", "event"])  # a retried or repeated click counts once

    pre_start = start - timedelta(days=pre_days)
    # outside any test (an earlier phase of a ramped test would carry the challenger's effect into the
    # covariate, and CUPED would subtract part of the lift), and only requests users sent, not the
    # drift checks' batch predictions
    outside = pc.field("experiment").is_null()
    served = pc.field("post_id").is_null() & outside
    pre_exp = predictions.read(pre_start, start, where=served, columns=["user_id"]).to_pandas()
    pre_fb = feedback.read(pre_start, start, where=outside, columns=["user_id", "event"]).to_pandas()

    users = user_table(exposures, events, experiment)
    users["pre_rate"] = users["user_id"].map(pre_rates(pre_exp, pre_fb)).astype(float)
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
    report["generated_at"] = now.isoformat()
    report["timeline"] = timeline(exposures, events, start, min(end, now))
    return report


def current_report(
    traffic: Traffic, experiments: Experiments, predictions: PredictionLog, feedback: FeedbackLog, pre_days: float
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
    return ab_report(predictions, feedback, experiments.get(traffic.experiment), pre_days)
