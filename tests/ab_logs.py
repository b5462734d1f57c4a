"""A/B reports the platform computes: simulated serving logs, then ``serving.report`` over them.

The dashboard tests render these, so what they check (and the screenshots they save) is a report
``/ab/report.json`` could actually answer: the verdict follows from the numbers beside it.

Each simulated viewer has an engagement propensity (log-normal: most rarely engage, a few a lot)
that holds before and during the test, so the pre-period logs give CUPED something to remove;
during the test the challenger's users engage ``challenger_rate / champion_rate`` times as much.
Requests spread over ``HOURS`` hours from ``START``; latencies are log-normal around each arm's
median. Deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from components.data.predlog import PREDICTION_SCHEMA, SERVED, PredictionLog
from serving.abtest import DecisionRule
from serving.eventlog import FEEDBACK_SCHEMA, FeedbackLog
from serving.experiment import CHALLENGER, Experiment, Experiments, assign_arm
from serving.report import ab_report, current_report
from serving.router import Traffic

START = datetime(2025, 3, 12, 9, tzinfo=UTC)
HOURS = 24  # the report's timeline: one bucket per hour
NOW = START + timedelta(hours=HOURS)  # when the report is computed
PRE_DAYS = 14.0
# declared before the test: 1,000 users per arm, a +1% lift to promote, p95 latency at most +10%
RULE = DecisionRule(min_users_per_arm=1000, min_lift=0.01, max_latency_increase=0.1, max_report_rate_increase=0.001)


@dataclass(frozen=True)
class Scenario:
    users: int = 4000
    requests_per_user: float = 20.0  # mean, Poisson (at least one)
    champion_rate: float = 0.06  # engagements per exposure, the median viewer
    challenger_rate: float = 0.069
    report_rate: float = 0.002  # reports per exposure, both arms
    champion_latency_ms: float = 40.0  # median
    challenger_latency_ms: float = 42.0
    challenger: bool = True  # False: only the champion serves (split 0)
    lost_challenger_share: float = 0.0  # challenger users whose records never reached the logs (a broken writer)
    ended: bool = False  # stopped an hour before NOW
    seed: int = 7


WIN = Scenario()  # +15% engagement, +5% latency: promote
SLOW = Scenario(challenger_latency_ms=50.0)  # the same win, 25% slower: the latency guardrail rolls it back
BROKEN_SPLIT = Scenario(lost_challenger_share=0.2, ended=True)  # sample-ratio mismatch: blocked
CHAMPION_ONLY = Scenario(challenger=False)


def experiment_of(scenario: Scenario) -> Experiment:
    return Experiment(
        id="exp-20250312T090000-feed-v4",
        champion_version=3,
        challenger_version=4 if scenario.challenger else None,
        split=0.5 if scenario.challenger else 0.0,
        salt="feed-v4",
        rule=RULE.to_dict(),
        started_at=START.isoformat(),
        ended_at=(NOW - timedelta(hours=1)).isoformat() if scenario.ended else None,
        outcome="stopped" if scenario.ended else None,
    )


def write_logs(root: Path, scenario: Scenario) -> tuple[PredictionLog, FeedbackLog, Experiment]:
    """Prediction and feedback records, as the router writes them, for the pre-period and the test."""
    experiment = experiment_of(scenario)
    predictions, feedback = PredictionLog(root / "predictions"), FeedbackLog(root / "feedback")
    rng = np.random.default_rng(scenario.seed)
    users = np.array([f"viewer-{i:05d}" for i in range(scenario.users)])
    propensity = np.exp(rng.normal(0.0, 0.6, scenario.users))  # (U,) median 1
    arms = np.array([assign_arm(u, experiment.salt, experiment.split) for u in users])
    lost = (arms == CHALLENGER) & (rng.random(scenario.users) < scenario.lost_challenger_share)
    pre_start = START - timedelta(days=PRE_DAYS)
    periods = [  # (name, first moment, seconds, in the test)
        ("pre", pre_start, PRE_DAYS * 86400, False),
        ("test", START, HOURS * 3600, True),
    ]
    for name, first, seconds, in_test in periods:
        keep = ~lost if in_test else np.ones(scenario.users, bool)
        counts = np.maximum(rng.poisson(scenario.requests_per_user, scenario.users), 1) * keep  # (U,)
        who = np.repeat(np.arange(scenario.users), counts)  # (R,) one entry per request
        arm = arms[who] if in_test else np.full(len(who), "champion")
        challenger = arm == CHALLENGER
        rate = propensity[who] * np.where(challenger, scenario.challenger_rate, scenario.champion_rate)
        median = np.where(challenger, scenario.challenger_latency_ms, scenario.champion_latency_ms)
        times = [first + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, seconds, len(who)))]
        request_ids = [f"{name}-{i}" for i in range(len(who))]
        experiment_id = experiment.id if in_test else None
        versions = np.where(challenger, 4, 3)
        nothing = [None] * len(who)
        records = {
            "request_id": request_ids,
            "post_id": nothing,
            "user_id": users[who],
            "arm": arm,
            "model_version": versions,
            "predicted": ["pets"] * len(who),
            "confidence": np.full(len(who), 0.8, np.float32),
            "probabilities": nothing,
            "embedding": nothing,
            "latency_ms": (median * np.exp(rng.normal(0.0, 0.35, len(who)))).astype(np.float32),
            "time": times,
            "experiment": [experiment_id] * len(who),
            "source": [SERVED] * len(who),
        }
        predictions.write(pa.table(records, schema=PREDICTION_SCHEMA), name)
        draw = rng.random(len(who))
        reported = np.where(draw > 1 - scenario.report_rate, "report", "")
        events = np.where(draw < np.minimum(rate, 0.95), "click", reported)
        acted = events != ""
        feedback.write(
            pa.table(
                {
                    "request_id": np.array(request_ids)[acted],
                    "event": events[acted],
                    "user_id": users[who][acted],
                    "arm": arm[acted],
                    "model_version": versions[acted],
                    "experiment": [experiment_id] * int(acted.sum()),
                    "time": [t + timedelta(seconds=30) for t, a in zip(times, acted, strict=True) if a],
                },
                schema=FEEDBACK_SCHEMA,
            ),
            name,
        )
    return predictions, feedback, experiment


def computed_report(root: Path, scenario: Scenario) -> dict:
    """What ``/ab/report.json`` answers at ``NOW`` for the scenario's logs."""
    predictions, feedback, experiment = write_logs(root, scenario)
    return ab_report(predictions, feedback, experiment, PRE_DAYS, now=NOW)


def report_with_no_test(root: Path) -> dict:
    """What ``/ab/report.json`` answers while no test runs."""
    logs = PredictionLog(root / "predictions"), FeedbackLog(root / "feedback")
    return current_report(Traffic(champion_version=3), Experiments(root / "experiments"), *logs, PRE_DAYS)
