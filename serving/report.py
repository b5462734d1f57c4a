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
from serving.experiment import ARMS, Experiment, assign_arm

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
    rows = []
    exp_bucket = _bucket(exposures["time"], start, width, n) if not exposures.empty else pd.Series(dtype=int)
    fb_bucket = _bucket(feedback["time"], start, width, n) if not feedback.empty else pd.Series(dtype=int)
    for b in range(n):
        at = (start + timedelta(seconds=b * width)).isoformat()
        for arm in ARMS:
            e = exposures[(exp_bucket == b) & (exposures["arm"] == arm)] if not exposures.empty else exposures
            f = feedback[(fb_bucket == b) & (feedback["arm"] == arm)] if not feedback.empty else feedback
            rows.append(
                {
                    "start": at,
                    "arm": arm,
                    "users": int(e["user_id"].nunique()) if len(e) else 0,
                    "exposures": len(e),
                    "engagements": int(f["event"].isin(ENGAGEMENTS).sum()) if len(f) else 0,
                    "reports": int((f["event"] == "report").sum()) if len(f) else 0,
                }
            )
    return rows


def _bucket(times: pd.Series, start: datetime, width: int, n: int) -> pd.Series:
    seconds = (pd.to_datetime(times, utc=True) - pd.Timestamp(start)).dt.total_seconds()
    return (seconds // width).clip(0, n - 1).astype(int)


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
