"""A/B statistics: every estimate against an independent computation on the same data.

scipy for the sample-ratio test, statsmodels for the z-test and the CUPED regression, a bootstrap
for the delta method, and seeded numpy simulations (many experiments at once, arrays shaped
(experiments, users)) for the always-valid guarantee under hourly peeking.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from components.errors import ConfigError
from serving.abtest import (
    VERDICTS,
    DecisionRule,
    always_valid_p,
    analyse,
    confidence_sequence,
    cuped,
    delta_method_ratio,
    estimate_lift,
    fixed_horizon,
    lift_moments,
    sample_ratio_mismatch,
)

pytestmark = pytest.mark.unit

ALPHA = 0.05
ARM_KEYS = {
    "users",
    "exposures",
    "engagements",
    "reports",
    "engagement_rate",
    "report_rate",
    "latency_p50_ms",
    "latency_p95_ms",
    "latency_p99_ms",
}
LIFT_KEYS = {
    "absolute",
    "relative",
    "ci_low",
    "ci_high",
    "ci_method",
    "p_value",
    "cs_low",
    "cs_high",
    "always_valid_p",
    "confidence",
    "cuped",
    "variance_reduction",
}


def make_users(
    rng: np.random.Generator,
    n_champion: int,
    n_challenger: int,
    rate: float = 0.05,
    lift: float = 0.0,
    report_rate: float = 0.001,
    report_increase: float = 0.0,
) -> pd.DataFrame:
    """Users with heterogeneous propensities p ~ Beta(mean ``rate``, 20 prior users) and 1 + Poisson(9) exposures.

    The challenger's propensities are scaled by 1 + ``lift``, so the true relative lift of the ratio of
    sums is ``lift`` exactly (p is independent of exposures). ``pre_rate``: 20 pre-period exposures.
    """
    arm = np.array(["champion"] * n_champion + ["challenger"] * n_challenger)
    n = arm.size
    p = rng.beta(20 * rate, 20 * (1 - rate), n)  # (users,)
    exposures = 1 + rng.poisson(9, n)
    on_challenger = arm == "challenger"
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "arm": arm,
            "exposures": exposures,
            "engagements": rng.binomial(exposures, np.minimum(1, p * np.where(on_challenger, 1 + lift, 1))),
            "reports": rng.binomial(exposures, report_rate + on_challenger * report_increase),
            "pre_rate": rng.binomial(20, p) / 20,
        }
    )


def same_latencies(rng: np.random.Generator, challenger_scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"champion": rng.gamma(4, 25, 5_000), "challenger": challenger_scale * rng.gamma(4, 25, 5_000)}


# --- sample ratio ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("champion", "challenger", "split"), [(5000, 5000, 0.5), (5210, 4790, 0.5), (900, 100, 0.1)])
def test_srm_p_value_equals_scipy_chisquare(champion: int, challenger: int, split: float) -> None:
    total = champion + challenger
    expected = stats.chisquare([champion, challenger], f_exp=[total * (1 - split), total * split]).pvalue
    srm = sample_ratio_mismatch(champion, challenger, split, alpha=0.001)
    assert srm.p_value == pytest.approx(expected, rel=1e-12)
    assert srm.observed_share == challenger / total
    assert srm.ok == (expected >= 0.001)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 100_000), st.integers(1, 100_000), st.floats(0.01, 0.99))
def test_srm_matches_scipy_for_any_counts(champion: int, challenger: int, split: float) -> None:
    total = champion + challenger
    expected = stats.chisquare([champion, challenger], f_exp=[total * (1 - split), total * split]).pvalue
    assert sample_ratio_mismatch(champion, challenger, split, 0.001).p_value == pytest.approx(expected, abs=1e-12)


def test_srm_with_a_split_of_zero_is_exact() -> None:
    assert sample_ratio_mismatch(700, 0, 0.0, 0.001).p_value == 1.0
    assert not sample_ratio_mismatch(700, 3, 0.0, 0.001).ok
    with pytest.raises(ConfigError):
        sample_ratio_mismatch(1, 1, 1.5, 0.001)


# --- delta method ---------------------------------------------------------------------------------


def test_unit_exposures_reduce_to_statsmodels_two_sample_z_test() -> None:
    """With one exposure per user the ratio of sums is a mean, and the lift test is Welch's z-test."""
    rng = np.random.default_rng(1)
    y0, y1 = rng.poisson(0.30, 3000), rng.poisson(0.33, 2500)  # engagements per user
    champion, challenger = delta_method_ratio(y0, np.ones_like(y0)), delta_method_ratio(y1, np.ones_like(y1))
    lift = estimate_lift(champion, challenger, alpha=ALPHA, tau=0.05)

    compare = CompareMeans(DescrStatsW(y1), DescrStatsW(y0))
    z, p = compare.ztest_ind(usevar="unequal")
    assert lift.absolute == pytest.approx(y1.mean() - y0.mean(), rel=1e-12)
    assert lift.absolute_se == pytest.approx(compare.std_meandiff_separatevar, rel=1e-10)
    assert lift.absolute / lift.absolute_se == pytest.approx(z, rel=1e-10)
    assert lift.p_value == pytest.approx(p, rel=1e-9)

    # the same through analyse, which has no covariate here
    users = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(y0.size + y1.size)],
            "arm": ["champion"] * y0.size + ["challenger"] * y1.size,
            "exposures": 1,
            "engagements": np.r_[y0, y1],
            "reports": 0,
        }
    )
    report = analyse(users, same_latencies(rng), split=2500 / 5500)
    assert not report.lift.cuped
    assert report.lift.p_value == pytest.approx(p, rel=1e-9)
    assert report.lift.relative == pytest.approx(y1.mean() / y0.mean() - 1, rel=1e-12)


def test_delta_method_variance_matches_a_bootstrap_over_users() -> None:
    """Unequal exposures, heavy users engaging less: the delta-method Var(rate) is the bootstrap's."""
    rng = np.random.default_rng(2)
    users = 2000
    exposures = 1 + rng.poisson(rng.gamma(1.0, 10.0, users))  # (users,) very unequal
    p = rng.beta(1, 19, users) * np.where(exposures > 15, 0.6, 1.2)
    engagements = rng.binomial(exposures, p)
    estimate = delta_method_ratio(engagements, exposures)

    draws = rng.integers(0, users, (4000, users))  # (bootstrap, users) resampled users
    boot = engagements[draws].sum(axis=1) / exposures[draws].sum(axis=1)
    assert float(estimate.rate) == engagements.sum() / exposures.sum()
    assert float(estimate.variance) == pytest.approx(boot.var(ddof=1), rel=0.08)  # bootstrap MC error ~2.2%
    # counting exposures as independent trials understates it (users differ in propensity)
    naive = estimate.rate * (1 - estimate.rate) / exposures.sum()
    assert estimate.variance > 1.5 * naive


def test_delta_method_runs_many_experiments_at_once() -> None:
    rng = np.random.default_rng(3)
    y, n = rng.poisson(2, (5, 300)), 1 + rng.poisson(20, (5, 300))  # (experiments, users)
    batch = delta_method_ratio(y, n)
    for k in range(5):
        one = delta_method_ratio(y[k], n[k])
        assert batch.rate[k] == pytest.approx(float(one.rate), rel=1e-14)
        assert batch.variance[k] == pytest.approx(float(one.variance), rel=1e-12)


# --- CUPED ----------------------------------------------------------------------------------------


def test_cuped_equals_ols_with_arm_and_centred_covariate() -> None:
    """Deng et al. 2013: CUPED's difference is the arm coefficient of y ~ arm + (x - mean x)."""
    rng = np.random.default_rng(4)
    n0, n1 = 4000, 3600
    x = rng.gamma(2.0, 0.5, n0 + n1)  # pre-period metric
    arm = np.r_[np.zeros(n0), np.ones(n1)]
    y = rng.poisson(0.4 + 0.8 * x + 0.05 * arm)  # exposures all 1: the ratio is a mean
    ones = np.ones(n0 + n1)
    fit = cuped(delta_method_ratio(y[:n0], ones[:n0]), delta_method_ratio(y[n0:], ones[n0:]), x[:n0], x[n0:])

    ols = sm.OLS(y, np.column_stack([ones, arm, x - x.mean()])).fit(cov_type="HC1")
    absolute, variance, _, _ = lift_moments(
        fit.champion.rate, fit.champion.variance, fit.challenger.rate, fit.challenger.variance
    )
    assert fit.applied
    assert float(absolute) == pytest.approx(ols.params[1], rel=1e-9)
    assert fit.theta == pytest.approx(ols.params[2], rel=1e-9)
    assert float(variance) == pytest.approx(ols.bse[1] ** 2, rel=0.02)  # theta's own error ignored
    # rho^2 = Var(0.8 x) / Var(y) = 0.32 / (0.32 + E[mean]) with x ~ Gamma(2, 0.5)
    assert fit.variance_reduction == pytest.approx(0.32 / (0.32 + 0.4 + 0.8 + 0.05 * n1 / (n0 + n1)), abs=0.03)


def test_cuped_reduces_variance_by_rho_squared() -> None:
    """Propensity p drives both periods: rho = Var(p) / (Var(p) + E[p(1-p)] / 20), 20 exposures each."""
    rng = np.random.default_rng(5)
    a, b, trials, users = 4 / 3, 12.0, 20, 20_000
    p = rng.beta(a, b, 2 * users)
    mean, var_p = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    rho = var_p / (var_p + (mean * (1 - mean) - var_p) / trials)  # ~0.6
    y, pre = rng.binomial(trials, p), rng.binomial(trials, p) / trials
    n = np.full(2 * users, trials)
    fit = cuped(
        delta_method_ratio(y[:users], n[:users]), delta_method_ratio(y[users:], n[users:]), pre[:users], pre[users:]
    )
    assert rho == pytest.approx(0.6, abs=0.01)
    assert fit.variance_reduction == pytest.approx(rho**2, abs=0.03)


def test_cuped_falls_back_without_a_usable_covariate() -> None:
    rng = np.random.default_rng(6)
    users = make_users(rng, 800, 800)
    engaged = {arm: users[users["arm"] == arm] for arm in ("champion", "challenger")}
    est = {a: delta_method_ratio(u["engagements"], u["exposures"]) for a, u in engaged.items()}
    constant = cuped(est["champion"], est["challenger"], np.full(800, 0.1), np.full(800, 0.1))
    assert not constant.applied
    assert constant.champion is est["champion"]

    for pre in (np.nan, 0.2):  # absent, constant
        report = analyse(users.assign(pre_rate=pre), same_latencies(rng), 0.5)
        assert not report.lift.cuped
        assert report.to_dict()["lift"]["variance_reduction"] is None
        assert any("CUPED not applied" in r for r in report.decision.reasons)


def test_missing_pre_rate_is_imputed_with_the_pooled_mean() -> None:
    rng = np.random.default_rng(7)
    users = make_users(rng, 3000, 3000)
    holes = users.assign(pre_rate=users["pre_rate"].where(rng.random(len(users)) > 0.2))
    report = analyse(holes, same_latencies(rng), 0.5)
    filled = analyse(holes.assign(pre_rate=holes["pre_rate"].fillna(holes["pre_rate"].mean())), {}, 0.5)
    assert report.lift.cuped
    assert report.lift.absolute == pytest.approx(filled.lift.absolute, rel=1e-12)
    assert any("imputed the pooled mean" in r for r in report.decision.reasons)


# --- always-valid inference ----------------------------------------------------------------------


def simulate_looks(rng: np.random.Generator, experiments: int, looks: int, per_look: int, rate: float, lift: float):
    """Peek after every ``per_look`` users per arm; per look yield (relative, Var(relative), fixed p of absolute).

    Each yielded array is shaped (experiments,).
    """
    users = looks * per_look
    arms = []
    for scale in (1.0, 1 + lift):
        p = rng.beta(20 * rate, 20 * (1 - rate), (experiments, users)) * scale  # (experiments, users)
        exposures = 1 + rng.poisson(4, (experiments, users))
        arms.append((rng.binomial(exposures, p), exposures))
    (y0, n0), (y1, n1) = arms
    for look in range(1, looks + 1):
        k = look * per_look
        champion, challenger = delta_method_ratio(y0[:, :k], n0[:, :k]), delta_method_ratio(y1[:, :k], n1[:, :k])
        absolute, absolute_var, relative, relative_var = lift_moments(
            champion.rate, champion.variance, challenger.rate, challenger.variance
        )
        yield relative, relative_var, fixed_horizon(absolute, absolute_var, ALPHA)[2]


def test_aa_always_valid_test_survives_hourly_peeking_and_the_naive_test_does_not() -> None:
    """A/A: 400 experiments, a look after every 100 users per arm, 60 looks each."""
    experiments, tau = 400, DecisionRule().tau
    sequential = np.zeros(experiments, dtype=bool)
    naive = np.zeros(experiments, dtype=bool)
    for relative, relative_var, p_fixed in simulate_looks(np.random.default_rng(8), experiments, 60, 100, 0.05, 0.0):
        p = always_valid_p(relative, relative_var, tau)
        low, high = confidence_sequence(relative, relative_var, tau, ALPHA)
        np.testing.assert_array_equal(p <= ALPHA, (low > 0) | (high < 0))  # the p-value and the sequence agree
        sequential |= p <= ALPHA
        naive |= p_fixed <= ALPHA
    slack = 2 * np.sqrt(ALPHA * (1 - ALPHA) / experiments)
    print(f"A/A rejections at any of 60 looks: always-valid {sequential.mean():.3f}, naive {naive.mean():.3f}")
    assert sequential.mean() <= ALPHA + slack
    assert naive.mean() >= 0.15  # peeking at a fixed-horizon test: several times alpha
    assert naive.mean() >= 3 * max(sequential.mean(), 0.01)


def test_real_lift_is_found_and_covered_at_every_look() -> None:
    """A 10% lift: the sequence covers it at all 40 looks at once in >= 1 - alpha of experiments, and excludes 0."""
    experiments, tau, truth = 200, DecisionRule().tau, 0.10
    covered = np.ones(experiments, dtype=bool)
    for relative, relative_var, _ in simulate_looks(np.random.default_rng(9), experiments, 40, 400, 0.1, truth):
        low, high = confidence_sequence(relative, relative_var, tau, ALPHA)
        covered &= (low <= truth) & (truth <= high)
    slack = 2 * np.sqrt(ALPHA * (1 - ALPHA) / experiments)
    assert covered.mean() >= 1 - ALPHA - slack
    assert (low > 0).mean() >= 0.95  # found by the last look

    rng = np.random.default_rng(10)
    report = analyse(make_users(rng, 10_000, 10_000, rate=0.1, lift=truth), same_latencies(rng), 0.5)
    assert report.decision.verdict == "promote"
    assert report.lift.cs_low <= truth <= report.lift.cs_high
    assert report.lift.cs_low > 0


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-1, 1),
    st.floats(1e-8, 1.0),
    st.floats(0.001, 1.0),
    st.sampled_from([0.01, 0.05, 0.1]),
)
def test_sequence_is_wider_than_the_fixed_interval_and_agrees_with_its_p_value(
    estimate: float, variance: float, tau: float, alpha: float
) -> None:
    low, high = confidence_sequence(estimate, variance, tau, alpha)
    fixed_low, fixed_high, _ = fixed_horizon(estimate, variance, alpha)
    assert low < fixed_low <= estimate <= fixed_high < high
    assert high - estimate == pytest.approx(estimate - low)
    p = always_valid_p(estimate, variance, tau)
    assume(abs(p - alpha) > 1e-9)
    assert (p <= alpha) == (low > 0 or high < 0)


# --- the decision rule ----------------------------------------------------------------------------

HEADLINE_WORDS = {
    "blocked": "Results are blocked",
    "insufficient": "Not enough users yet",
    "promote": "promote it",
    "rollback": "roll it back",
    "continue": "keep the test running",
}


def decided(users: pd.DataFrame, latencies: dict[str, np.ndarray], split: float = 0.5, rule=None):
    report = analyse(users, latencies, split, rule or DecisionRule())
    assert HEADLINE_WORDS[report.decision.verdict] in report.decision.headline
    return report


def test_clear_win_promotes_with_a_headline_of_its_numbers() -> None:
    rng = np.random.default_rng(11)
    report = decided(make_users(rng, 10_000, 10_000, lift=0.3), same_latencies(rng))
    lift = report.lift
    assert report.decision.verdict == "promote"
    assert 0.2 < lift.relative < 0.4
    assert report.decision.headline == (
        f"The challenger raises engagement by {100 * lift.relative:.1f}% "
        f"(between {100 * lift.cs_low:.1f}% and {100 * lift.cs_high:.1f}%); promote it."
    )


def test_srm_blocks_even_a_huge_win() -> None:
    rng = np.random.default_rng(12)
    report = decided(make_users(rng, 10_000, 9_000, lift=0.5), same_latencies(rng))
    assert report.lift.cs_low > 0.3
    assert report.srm.p_value < 1e-10
    assert report.decision.verdict == "blocked"


def test_below_the_minimum_sample_is_insufficient_whatever_the_lift() -> None:
    rng = np.random.default_rng(13)
    report = decided(make_users(rng, 400, 400, lift=1.0), same_latencies(rng), rule=DecisionRule(min_users_per_arm=500))
    assert report.lift.ci_low > 0.3  # a fixed-horizon reader would call it a win already
    assert report.decision.verdict == "insufficient"


def test_latency_breach_rolls_back_a_win() -> None:
    rng = np.random.default_rng(14)
    report = decided(make_users(rng, 10_000, 10_000, lift=0.3), same_latencies(rng, challenger_scale=1.3))
    latency = report.guardrails[0]
    assert latency.name == "latency_p95"
    assert latency.value == pytest.approx(0.3, abs=0.05)
    assert latency.ok is False
    assert report.decision.verdict == "rollback"
    assert "latency_p95" in report.decision.headline


def test_report_rate_breach_rolls_back_a_win() -> None:
    rng = np.random.default_rng(15)
    users = make_users(rng, 10_000, 10_000, lift=0.3, report_rate=0.001, report_increase=0.009)
    report = decided(users, same_latencies(rng))
    reports = report.guardrails[1]
    assert reports.name == "report_rate"
    assert reports.value == pytest.approx(0.009, abs=0.001)
    assert reports.ok is False
    assert report.decision.verdict == "rollback"


def test_a_report_rate_rise_within_noise_is_not_a_breach() -> None:
    """Point estimate above the limit, evidence not: only the always-valid bound can breach."""
    rng = np.random.default_rng(16)
    users = make_users(rng, 600, 600)
    first = users.groupby("arm").cumcount()  # one report each for the arm's first 12 or 30 users
    users["reports"] = (first < np.where(users["arm"] == "challenger", 30, 12)).astype(int)
    reports = decided(users, same_latencies(rng)).guardrails[1]
    exposures = users.groupby("arm")["exposures"].sum()
    assert reports.value == pytest.approx(30 / exposures["challenger"] - 12 / exposures["champion"], rel=1e-12)
    assert reports.value > 0.002
    assert reports.ok is True


def test_clear_loss_rolls_back() -> None:
    rng = np.random.default_rng(17)
    report = decided(make_users(rng, 10_000, 10_000, lift=-0.25), same_latencies(rng))
    assert report.lift.cs_high < 0
    assert report.decision.verdict == "rollback"
    assert "lowers engagement" in report.decision.headline


def test_no_difference_continues() -> None:
    rng = np.random.default_rng(18)
    report = decided(make_users(rng, 3_000, 3_000), same_latencies(rng))
    assert report.lift.cs_low < 0 < report.lift.cs_high
    assert report.decision.verdict == "continue"


def test_a_win_waits_for_unchecked_guardrails() -> None:
    rng = np.random.default_rng(19)
    report = decided(make_users(rng, 10_000, 10_000, lift=0.3), {})
    assert report.guardrails[0].ok is None
    assert report.decision.verdict == "continue"


def test_rule_round_trips_and_refuses_nonsense() -> None:
    rule = DecisionRule(alpha=0.1, min_lift=0.01, tau=0.1)
    assert DecisionRule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    with pytest.raises(ConfigError, match="alpha"):
        DecisionRule(alpha=1.5)
    with pytest.raises(ConfigError, match="unknown"):
        DecisionRule.from_dict({"alpha": 0.05, "beta": 0.2})


# --- the dashboard's JSON and edge cases ---------------------------------------------------------


def test_report_json_has_exactly_the_dashboard_keys() -> None:
    rng = np.random.default_rng(20)
    data = json.loads(json.dumps(decided(make_users(rng, 2000, 2000), same_latencies(rng)).to_dict(), allow_nan=False))
    assert set(data) == {"arms", "lift", "srm", "guardrails", "decision", "rule"}
    assert set(data["arms"]) == {"champion", "challenger"}
    assert all(set(arm) == ARM_KEYS for arm in data["arms"].values())
    assert set(data["lift"]) == LIFT_KEYS
    assert data["lift"]["ci_method"] == "fixed"
    assert data["lift"]["cuped"] is True
    assert set(data["srm"]) == {"p_value", "expected_share", "observed_share", "ok"}
    assert [g["name"] for g in data["guardrails"]] == ["latency_p95", "report_rate"]
    assert all(set(g) == {"name", "ok", "value", "limit", "detail"} for g in data["guardrails"])
    assert set(data["decision"]) == {"verdict", "headline", "reasons"}
    assert data["rule"] == DecisionRule().to_dict()
    champion = data["arms"]["champion"]
    assert champion["engagement_rate"] == champion["engagements"] / champion["exposures"]


@pytest.mark.parametrize(
    "case", ["empty", "one user", "one arm empty", "no engagement", "one user each", "no challenger latencies"]
)
def test_edge_cases_give_nulls_not_crashes(case: str) -> None:
    rng = np.random.default_rng(21)
    users = make_users(rng, 3, 3)
    users = {
        "empty": users.iloc[:0],
        "one user": users.iloc[:1],
        "one arm empty": users[users["arm"] == "champion"],
        "no engagement": make_users(rng, 800, 800).assign(engagements=0, reports=0),
        "one user each": users.iloc[[0, 3]],
        "no challenger latencies": users,
    }[case]
    latencies = {"champion": np.array([100.0])} if case == "no challenger latencies" else same_latencies(rng)
    with np.errstate(all="raise"):
        data = json.loads(json.dumps(analyse(users, latencies, 0.5).to_dict(), allow_nan=False))
    expected = "continue" if case == "no engagement" else "insufficient"
    assert data["decision"]["verdict"] == expected
    if case == "one arm empty":
        assert data["arms"]["challenger"]["engagement_rate"] is None
        assert data["lift"]["relative"] is None
    if case == "no engagement":
        assert data["lift"]["absolute"] == 0.0
        assert data["lift"]["relative"] is None  # 0 / 0
        assert data["guardrails"][1]["ok"] is True


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["champion", "challenger"]),
            st.integers(1, 30),
            st.integers(0, 30),
            st.integers(0, 2),
            st.one_of(st.none(), st.floats(0, 1)),
        ),
        max_size=30,
    ),
    st.floats(0, 1),
)
def test_any_small_table_gives_valid_json(rows: list, split: float) -> None:
    users = pd.DataFrame(
        [
            {"user_id": f"u{i}", "arm": a, "exposures": n, "engagements": min(e, n), "reports": r, "pre_rate": x}
            for i, (a, n, e, r, x) in enumerate(rows)
        ],
        columns=["user_id", "arm", "exposures", "engagements", "reports", "pre_rate"],
    ).astype({"pre_rate": float})
    data = json.loads(
        json.dumps(analyse(users, {}, split, DecisionRule(min_users_per_arm=2)).to_dict(), allow_nan=False)
    )
    assert data["decision"]["verdict"] in VERDICTS
    assert data["arms"]["champion"]["users"] + data["arms"]["challenger"]["users"] == len(rows)
    assert data["decision"]["verdict"] != "promote"  # the latency guardrail was never checked


def test_unknown_arm_or_duplicate_user_is_refused() -> None:
    users = make_users(np.random.default_rng(22), 3, 3)
    with pytest.raises(ConfigError, match="unknown arms"):
        analyse(users.assign(arm="control"), {}, 0.5)
    with pytest.raises(ConfigError, match="twice"):
        analyse(users.assign(user_id="same"), {}, 0.5)
