"""``analyse``: does the challenger beat the champion on live traffic? The A/B test's statistics.

The Serve app assigns each user to an arm by a salted hash, so the user is the unit
of randomisation and every per-user row below is independent. One row per user:
``exposures`` (predictions served), ``engagements`` (clicks + likes), ``reports`` and
``pre_rate`` (the user's engagement rate before the test, the CUPED covariate).

The steps, each a public function that runs alone:

1. ``summarise_arms``: users, counts, ratio-of-sums rates and latency percentiles per arm;
2. ``delta_method_ratio``: the rate sum(engagements)/sum(exposures) and its variance with the
   user as unit, by linearising per user (Deng, Knoblich & Lu 2018);
3. ``cuped``: the linearised metric regressed on ``pre_rate`` with one theta pooled over both
   arms (Deng, Xu, Kohavi & Walker 2013);
4. ``estimate_lift``: absolute and relative lift with a fixed-horizon z interval and, for the
   verdict, an always-valid confidence sequence and p-value from the normal-mixture sequential
   probability ratio test (mSPRT; Johari, Koomen, Pekelis & Walsh 2022);
5. ``sample_ratio_mismatch``: a chi-square test of users per arm against the configured split;
6. ``latency_guardrail`` and ``report_rate_guardrail``;
7. ``DecisionRule.decide``: blocked / insufficient / rollback / promote / continue, with reasons and a
   one-sentence headline for product people.

Why always-valid: analysts read the dashboard every hour. A fixed-horizon test read at 50 looks
rejects a true null far more often than alpha (``tests/test_abtest.py`` measures it); the mixture
test's confidence sequence covers the true lift at every look at once with probability 1 - alpha
(Ville's inequality on the mixture likelihood ratio, a nonnegative martingale under the null).
With the variance estimated from the data the guarantee is asymptotic (Waudby-Smith, Arbour, Sinha,
Kennedy & Ramdas 2021, "Time-uniform central limit theory and asymptotic confidence sequences").

``analyse`` is stateless: it reports the sequence at the current look, not its running
intersection with earlier looks. That is still valid (each look's interval belongs to one
sequence with time-uniform coverage); intersecting stored earlier intervals would only narrow it.

Every vectorised function takes arrays shaped (..., users) and reduces the last axis, so a
simulation can run many experiments at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from components.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

ARMS = ("champion", "challenger")
VERDICTS = ("blocked", "insufficient", "promote", "rollback", "continue")
COLUMNS = ("user_id", "arm", "exposures", "engagements", "reports", "pre_rate")


# --- the rule, declared before the test starts ---------------------------------------------------


@dataclass(frozen=True)
class DecisionRule:
    """When the test may end, and how. Fix it before the first user is assigned."""

    alpha: float = 0.05  # error rate of the always-valid test and sequence (and level of the fixed-horizon CI)
    min_users_per_arm: int = 500  # below this in either arm: "insufficient", whatever the numbers say
    min_lift: float = 0.0  # relative lift the sequence's lower bound must exceed to promote (0.0: any gain)
    # sd of the normal mixture over the relative lift (mSPRT). Put it at the size of lift we hope to see:
    # for alpha 0.05 the sequence is narrowest when the lift's standard error is about tau / 2.8,
    # and it is about 1.55x the fixed-horizon interval there.
    tau: float = 0.05
    srm_alpha: float = 0.001  # a sample-ratio test below this blocks every verdict (a broken assignment)
    max_latency_increase: float = 0.2  # challenger p95 may exceed the champion's by at most this fraction
    max_report_rate_increase: float = 0.002  # reports per exposure the challenger may add, absolute
    report_tau: float = 0.002  # sd of the mixture over the report-rate difference, absolute

    def __post_init__(self) -> None:
        checks = {
            "alpha must lie in (0, 1)": 0 < self.alpha < 1,
            "srm_alpha must lie in (0, 1)": 0 < self.srm_alpha < 1,
            "min_users_per_arm must be at least 2": self.min_users_per_arm >= 2,
            "tau must be positive": self.tau > 0,
            "report_tau must be positive": self.report_tau > 0,
            "max_latency_increase must be at least 0": self.max_latency_increase >= 0,
            "max_report_rate_increase must be at least 0": self.max_report_rate_increase >= 0,
        }
        broken = [message for message, ok in checks.items() if not ok]
        if broken:
            raise ConfigError("decision rule: " + "; ".join(broken))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> DecisionRule:
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"decision rule: unknown settings {sorted(unknown)}")
        return cls(**raw)

    def decide(
        self,
        arms: dict[str, ArmSummary],
        lift: Lift,
        srm: SampleRatio,
        guardrails: list[Guardrail],
    ) -> Decision:
        """The verdict, checked in order: SRM, sample size, guardrails and loss, win, otherwise continue.

        ``lift`` must have been computed with this rule's alpha and tau (``estimate_lift``).
        A guardrail with ``ok`` None (not checked yet, e.g. no latencies) blocks "promote" only.
        """
        champion, challenger = arms["champion"], arms["challenger"]
        reasons = [
            f"sample ratio: {_pct(srm.observed_share)} of users on the challenger, {_pct(srm.expected_share)} "
            f"expected (p = {_num(srm.p_value)}, blocks below {self.srm_alpha:g})",
            f"sample: {champion.users:,} champion and {challenger.users:,} challenger users "
            f"({self.min_users_per_arm:,} each needed)",
            f"lift: {_signed_pct(lift.relative)} engagement per exposure, always-valid {_pct(lift.confidence)} "
            f"interval {_signed_pct(lift.cs_low)} to {_signed_pct(lift.cs_high)} (p = {_num(lift.always_valid_p)}); "
            f"fixed-horizon {_signed_pct(lift.ci_low)} to {_signed_pct(lift.ci_high)} (p = {_num(lift.p_value)})",
            *(f"guardrail {g.name}: {_ok_word(g.ok)}, {g.detail}" for g in guardrails),
        ]
        if not srm.ok:
            headline = (
                f"Results are blocked: {_pct(srm.observed_share)} of users got the challenger but "
                f"{_pct(srm.expected_share)} should have; fix the assignment before reading anything."
            )
            return Decision("blocked", headline, reasons)
        if min(champion.users, challenger.users) < self.min_users_per_arm:
            headline = (
                f"Not enough users yet ({champion.users:,} on the champion, {challenger.users:,} on the challenger; "
                f"{self.min_users_per_arm:,} each needed); keep the test running."
            )
            return Decision("insufficient", headline, reasons)
        breached = [g for g in guardrails if g.ok is False]
        if breached:
            headline = f"The challenger breaks the {breached[0].name} guardrail ({breached[0].detail}); roll it back."
            return Decision("rollback", headline, reasons)
        if lift.cs_high < 0:
            headline = (
                f"The challenger lowers engagement by {_pct(-lift.relative)} (between {_pct(-lift.cs_high)} "
                f"and {_pct(-lift.cs_low)}); roll it back."
            )
            return Decision("rollback", headline, reasons)
        unchecked = [g.name for g in guardrails if g.ok is None]
        if lift.cs_low > self.min_lift and not unchecked:
            headline = (
                f"The challenger raises engagement by {_pct(lift.relative)} (between {_pct(lift.cs_low)} "
                f"and {_pct(lift.cs_high)}); promote it."
            )
            return Decision("promote", headline, reasons)
        if lift.cs_low > self.min_lift:
            reasons.append(f"a win, but not promoted before these guardrails are checked: {', '.join(unchecked)}")
        headline = (
            f"No clear answer yet: engagement changes by {_signed_pct(lift.relative)} (between "
            f"{_signed_pct(lift.cs_low)} and {_signed_pct(lift.cs_high)}); keep the test running."
        )
        return Decision("continue", headline, reasons)


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSummary:
    users: int
    exposures: int
    engagements: int
    reports: int
    engagement_rate: float  # sum(engagements) / sum(exposures); NaN with no users
    report_rate: float  # sum(reports) / sum(exposures)
    latency_p50_ms: float  # NaN with no latencies
    latency_p95_ms: float
    latency_p99_ms: float


@dataclass(frozen=True)
class RatioEstimate:
    """One arm's rate sum(y) / sum(n) with its delta-method variance; arrays shaped (...)."""

    rate: np.ndarray  # (...,)
    variance: np.ndarray  # (...,) Var(rate), the user as unit
    linearised: np.ndarray  # (..., users) per-user influence on the rate; var(linearised) / users = variance
    users: int


@dataclass(frozen=True)
class CupedFit:
    champion: RatioEstimate  # adjusted
    challenger: RatioEstimate  # adjusted
    theta: float  # slope of the linearised metric on the covariate, pooled within arms; 0.0 when not applied
    applied: bool
    variance_reduction: float  # 1 - Var(adjusted difference) / Var(unadjusted difference); NaN when not applied


@dataclass(frozen=True)
class Lift:
    """Challenger over champion. ``ci_*`` and ``cs_*`` bound the RELATIVE lift."""

    absolute: float  # challenger rate - champion rate (CUPED-adjusted rates when ``cuped``)
    absolute_se: float
    relative: float  # challenger rate / champion rate - 1
    relative_se: float  # delta method
    ci_low: float  # fixed-horizon 1 - alpha interval: valid at ONE pre-planned look only
    ci_high: float
    p_value: float  # fixed-horizon two-sided z-test of absolute == 0
    cs_low: float  # always-valid 1 - alpha confidence sequence (mSPRT): valid at every look
    cs_high: float
    always_valid_p: float  # mSPRT p-value for relative == 0; <= alpha exactly when 0 is outside the sequence
    confidence: float  # 1 - alpha
    cuped: bool
    variance_reduction: float  # NaN without CUPED

    def to_dict(self) -> dict:
        keys = ("absolute", "relative", "ci_low", "ci_high", "p_value", "cs_low", "cs_high", "always_valid_p")
        out = {k: getattr(self, k) for k in keys}
        out["ci_method"] = "fixed"
        out |= {"confidence": self.confidence, "cuped": self.cuped, "variance_reduction": self.variance_reduction}
        return out


@dataclass(frozen=True)
class SampleRatio:
    p_value: float  # chi-square goodness of fit of users per arm against the split; NaN with no users
    expected_share: float  # of users on the challenger
    observed_share: float
    ok: bool  # p_value >= srm_alpha (or nothing to test yet)


@dataclass(frozen=True)
class Guardrail:
    name: str
    ok: bool | None  # None: not checked yet (no data)
    value: float  # what was measured, in the limit's units
    limit: float
    detail: str


@dataclass(frozen=True)
class Decision:
    verdict: str  # one of VERDICTS
    headline: str  # one sentence for product people
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ABReport:
    arms: dict[str, ArmSummary]
    lift: Lift
    srm: SampleRatio
    guardrails: list[Guardrail]
    decision: Decision
    rule: DecisionRule

    def to_dict(self) -> dict:
        """The dashboard's JSON: plain Python types, NaN as None."""
        return _json_safe(
            {
                "arms": {arm: asdict(summary) for arm, summary in self.arms.items()},
                "lift": self.lift.to_dict(),
                "srm": asdict(self.srm),
                "guardrails": [asdict(g) for g in self.guardrails],
                "decision": asdict(self.decision),
                "rule": self.rule.to_dict(),
            }
        )


# --- the pipeline ---------------------------------------------------------------------------------


def analyse(
    users: pd.DataFrame,
    latencies: dict[str, np.ndarray],
    split: float,
    rule: DecisionRule | None = None,
) -> ABReport:
    """The whole analysis of one look at the experiment. ``split``: the challenger's configured share."""
    rule = rule or DecisionRule()
    users = check_users(users)
    arms = summarise_arms(users, latencies)
    by_arm = {arm: users[users["arm"] == arm] for arm in ARMS}
    engagement = {
        arm: delta_method_ratio(u["engagements"].to_numpy(), u["exposures"].to_numpy()) for arm, u in by_arm.items()
    }
    reports = {arm: delta_method_ratio(u["reports"].to_numpy(), u["exposures"].to_numpy()) for arm, u in by_arm.items()}

    notes = []
    pre = users["pre_rate"].astype(float)
    missing = int(pre.isna().sum())
    if missing and missing < len(pre):
        notes.append(
            f"pre_rate missing for {missing:,} of {len(pre):,} users: imputed the pooled mean {pre.mean():.4g}"
        )
    covariate = {arm: pre[users["arm"] == arm].fillna(pre.mean()).to_numpy() for arm in ARMS}
    fit = cuped(engagement["champion"], engagement["challenger"], covariate["champion"], covariate["challenger"])
    if not fit.applied:
        notes.append("CUPED not applied: pre_rate is absent or constant, or an arm has fewer than 2 users")

    lift = estimate_lift(fit.champion, fit.challenger, rule.alpha, rule.tau, fit.applied, fit.variance_reduction)
    srm = sample_ratio_mismatch(arms["champion"].users, arms["challenger"].users, split, rule.srm_alpha)
    guardrails = [
        latency_guardrail(latencies, rule.max_latency_increase),
        report_rate_guardrail(
            reports["champion"], reports["challenger"], rule.max_report_rate_increase, rule.report_tau, rule.alpha
        ),
    ]
    decision = rule.decide(arms, lift, srm, guardrails)
    decision = Decision(decision.verdict, decision.headline, decision.reasons + notes)
    return ABReport(arms, lift, srm, guardrails, decision, rule)


def check_users(users: pd.DataFrame) -> pd.DataFrame:
    """The users table with its columns checked; ``pre_rate`` is added as NaN when absent."""
    users = users.copy()
    if "pre_rate" not in users:
        users["pre_rate"] = np.nan
    absent = [c for c in COLUMNS if c not in users]
    if absent:
        raise ConfigError(f"users table lacks columns {absent}")
    unknown = sorted(set(users["arm"]) - set(ARMS))
    if unknown:
        raise ConfigError(f"users table has unknown arms {unknown}; expected {list(ARMS)}")
    if users["user_id"].duplicated().any():
        raise ConfigError("users table has a user twice: one row per user (the randomisation unit)")
    if (users["exposures"] < 1).any():
        raise ConfigError("every user in the test was served at least one prediction (exposures >= 1)")
    if (users[["engagements", "reports"]] < 0).any().any():
        raise ConfigError("engagements and reports are counts (>= 0)")
    return users


def summarise_arms(users: pd.DataFrame, latencies: dict[str, np.ndarray]) -> dict[str, ArmSummary]:
    """Per arm: counts, ratio-of-sums rates (what product people mean by a rate) and latency percentiles."""
    out = {}
    for arm in ARMS:
        u = users[users["arm"] == arm]
        exposures = int(u["exposures"].sum())
        engagements, reports = int(u["engagements"].sum()), int(u["reports"].sum())
        lat = np.asarray(latencies.get(arm, []), dtype=float)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99]) if lat.size else (math.nan,) * 3
        out[arm] = ArmSummary(
            users=len(u),
            exposures=exposures,
            engagements=engagements,
            reports=reports,
            engagement_rate=engagements / exposures if exposures else math.nan,
            report_rate=reports / exposures if exposures else math.nan,
            latency_p50_ms=float(p50),
            latency_p95_ms=float(p95),
            latency_p99_ms=float(p99),
        )
    return out


# --- statistics -----------------------------------------------------------------------------------


def delta_method_ratio(y: np.ndarray, n: np.ndarray) -> RatioEstimate:
    """The rate sum(y) / sum(n) and its variance with the user as the unit: the delta method.

    Deng, Knoblich & Lu (2018), "Applying the Delta Method in Metric Analytics", KDD, sections 2-3.
    sum(y) / sum(n) = mean(y) / mean(n); a first-order expansion around the means gives the
    per-user linearisation L_i = (y_i - rate * n_i) / mean(n), mean 0 by construction, and
    Var(rate) = var(L) / users (sample variance, ddof 1). Treating each exposure as independent
    instead would ignore that one user's exposures are correlated and understate the variance.

    y, n: (..., users). NaN rate with no exposures, NaN variance with fewer than 2 users.
    """
    y, n = np.asarray(y, dtype=float), np.asarray(n, dtype=float)
    users = y.shape[-1]
    if users == 0:
        nothing = np.full(y.shape[:-1], np.nan)
        return RatioEstimate(nothing, nothing, y, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = y.sum(axis=-1, keepdims=True) / n.sum(axis=-1, keepdims=True)  # (..., 1)
        linearised = (y - rate * n) / n.mean(axis=-1, keepdims=True)  # (..., users)
        variance = linearised.var(axis=-1, ddof=1) / users if users >= 2 else np.full(rate.shape[:-1], np.nan)
    return RatioEstimate(rate[..., 0], variance, linearised, users)


def cuped(
    champion: RatioEstimate,
    challenger: RatioEstimate,
    x_champion: np.ndarray,
    x_challenger: np.ndarray,
) -> CupedFit:
    """Both arms' rates adjusted by a pre-period covariate x: CUPED.

    Deng, Xu, Kohavi & Walker (2013), "Improving the Sensitivity of Online Controlled Experiments by
    Utilizing Pre-Experiment Data", WSDM, section 3; applied to the linearised ratio metric as in
    Deng, Knoblich & Lu (2018), section 4.
    theta = sum_arms sum_i (L_i - mean L_a)(x_i - mean x_a) / sum_arms sum_i (x_i - mean x_a)^2:
    one theta for both arms (so the adjustment cannot bias the difference), centred within arms (so
    it equals the OLS slope of y ~ arm + x and ignores the treatment effect).
    adjusted rate_a = rate_a - theta * (mean x_a - mean x over both arms)
    adjusted Var(rate_a) = var(L_a - theta * x_a) / users_a, i.e. about (1 - rho^2) of the unadjusted.
    Theta's own estimation error and the shared pooled mean are ignored (order 1/users; the shared
    mean cancels in the difference).

    One experiment: x_*: (users_a,), no NaN (impute first). Falls back to no adjustment when either
    arm has fewer than 2 users, x has NaN, or x does not vary within either arm.
    """
    x0, x1 = np.asarray(x_champion, dtype=float), np.asarray(x_challenger, dtype=float)
    none = CupedFit(champion, challenger, 0.0, False, math.nan)
    if champion.users < 2 or challenger.users < 2 or np.isnan(x0).any() or np.isnan(x1).any():
        return none
    if np.ptp(x0) == 0 and np.ptp(x1) == 0:
        return none
    c0, c1 = x0 - x0.mean(), x1 - x1.mean()  # (users_a,) centred within arms
    sxx = (c0**2).sum() + (c1**2).sum()
    # linearised already has mean 0 in each arm
    theta = float(((champion.linearised * c0).sum() + (challenger.linearised * c1).sum()) / sxx)
    x_mean = np.concatenate([x0, x1]).mean()

    def adjust(est: RatioEstimate, x: np.ndarray, centred: np.ndarray) -> RatioEstimate:
        linearised = est.linearised - theta * centred
        return RatioEstimate(
            est.rate - theta * (x.mean() - x_mean), linearised.var(ddof=1) / est.users, linearised, est.users
        )

    adjusted0, adjusted1 = adjust(champion, x0, c0), adjust(challenger, x1, c1)
    before = champion.variance + challenger.variance
    after = adjusted0.variance + adjusted1.variance
    reduction = float(1 - after / before) if before > 0 else math.nan
    return CupedFit(adjusted0, adjusted1, theta, True, reduction)


def lift_moments(rate0, var0, rate1, var1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(absolute, Var(absolute), relative, Var(relative)) of arm 1 over arm 0; independent arms, elementwise.

    Relative lift r1 / r0 - 1 by the delta method (Deng, Knoblich & Lu 2018, section 3.3):
    Var ~= var1 / r0^2 + r1^2 * var0 / r0^4. NaN when r0 <= 0.
    """
    rate0, var0, rate1, var1 = (np.asarray(a, dtype=float) for a in (rate0, var0, rate1, var1))
    positive = rate0 > 0
    safe0 = np.where(positive, rate0, 1.0)
    relative = np.where(positive, rate1 / safe0 - 1, np.nan)
    relative_var = np.where(positive, var1 / safe0**2 + rate1**2 * var0 / safe0**4, np.nan)
    return rate1 - rate0, var0 + var1, relative, relative_var


def fixed_horizon(estimate, variance, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, p): the two-sided normal (z) interval and p-value for estimate == 0, elementwise.

    Valid at one look fixed in advance; read repeatedly, it rejects a true null far more often than alpha.
    With zero variance: p is 1 for an estimate of exactly 0, else 0.
    """
    from scipy import stats  # noqa: PLC0415 - heavy imports sit where they are used (settings import this module)

    estimate, variance = np.asarray(estimate, dtype=float), np.asarray(variance, dtype=float)
    se = np.sqrt(variance)
    half = stats.norm.ppf(1 - alpha / 2) * se
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(se > 0, 2 * stats.norm.sf(np.abs(estimate) / se), np.where(estimate == 0, 1.0, 0.0))
    p = np.where(np.isnan(se) | np.isnan(estimate), np.nan, p)
    return estimate - half, estimate + half, p


def confidence_sequence(estimate, variance, tau: float, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high): the always-valid 1 - alpha confidence sequence of the normal-mixture SPRT, elementwise.

    Johari, Koomen, Pekelis & Walsh (2022), "Always Valid Inference: Continuous Monitoring of A/B Tests",
    Operations Research 70(3), section 4; Howard, Ramdas, McAuliffe & Sekhon (2021), "Time-uniform,
    nonparametric, nonasymptotic confidence sequences", Annals of Statistics, eq. (14) (normal mixture).
    With the estimate's variance V at this look and a N(theta0, tau^2) mixture over the effect,
    the likelihood ratio is
        Lambda(theta0) = sqrt(V / (V + tau^2)) * exp(tau^2 (estimate - theta0)^2 / (2 V (V + tau^2))),
    and {theta0 : Lambda(theta0) < 1 / alpha} is
        estimate +- sqrt(V (V + tau^2) / tau^2 * (2 log(1 / alpha) + log((V + tau^2) / V))).
    With zero variance the sequence is the point itself.
    """
    estimate, variance = np.asarray(estimate, dtype=float), np.asarray(variance, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(variance > 0, (variance + tau**2) / variance, np.nan)
        half = np.sqrt(variance * (variance + tau**2) / tau**2 * (2 * np.log(1 / alpha) + np.log(ratio)))
    half = np.where(variance == 0, 0.0, half)
    return estimate - half, estimate + half


def always_valid_p(estimate, variance, tau: float, null: float = 0.0) -> np.ndarray:
    """min(1, 1 / Lambda(null)) of the normal-mixture SPRT (see ``confidence_sequence``), elementwise.

    Johari et al. (2022), section 4: P(this ever falls to alpha or below while the null holds) <= alpha,
    so it can be read at every look. p <= alpha exactly when ``null`` lies outside the sequence. (The
    paper's p-value is the running minimum over looks; this is one look's value, never smaller.)
    """
    estimate, variance = np.asarray(estimate, dtype=float), np.asarray(variance, dtype=float)
    gap = estimate - null
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        log_lambda = 0.5 * np.log(variance / (variance + tau**2)) + tau**2 * gap**2 / (
            2 * variance * (variance + tau**2)
        )
        p = np.minimum(1.0, np.exp(-log_lambda))
    p = np.where(variance == 0, np.where(gap == 0, 1.0, 0.0), p)
    return np.where(np.isnan(variance) | np.isnan(estimate), np.nan, p)


def estimate_lift(
    champion: RatioEstimate,
    challenger: RatioEstimate,
    alpha: float,
    tau: float,
    cuped: bool = False,
    variance_reduction: float = math.nan,
) -> Lift:
    """The challenger's lift over the champion for one experiment (1-D estimates).

    The fixed-horizon p-value tests the absolute difference (a two-sample z-test); the interval and
    the confidence sequence bound the relative lift, whose always-valid p-value the verdict uses.
    """
    absolute, absolute_var, relative, relative_var = lift_moments(
        champion.rate, champion.variance, challenger.rate, challenger.variance
    )
    _, _, p_value = fixed_horizon(absolute, absolute_var, alpha)
    ci_low, ci_high, _ = fixed_horizon(relative, relative_var, alpha)
    cs_low, cs_high = confidence_sequence(relative, relative_var, tau, alpha)
    return Lift(
        absolute=float(absolute),
        absolute_se=float(np.sqrt(absolute_var)),
        relative=float(relative),
        relative_se=float(np.sqrt(relative_var)),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        p_value=float(p_value),
        cs_low=float(cs_low),
        cs_high=float(cs_high),
        always_valid_p=float(always_valid_p(relative, relative_var, tau)),
        confidence=1 - alpha,
        cuped=cuped,
        variance_reduction=variance_reduction,
    )


def sample_ratio_mismatch(champion_users: int, challenger_users: int, split: float, alpha: float) -> SampleRatio:
    """Pearson's chi-square goodness of fit (1 df) of users per arm against the configured split.

    A mismatch means the assignment or the logging is broken, and no lift can be trusted (Fabijan et al.
    2019, "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD). With split 0 or 1
    the test is exact: p is 1 when the empty arm is empty, else 0.
    """
    if not 0 <= split <= 1:
        raise ConfigError(f"split is the challenger's share, in [0, 1], not {split}")
    total = champion_users + challenger_users
    if total == 0:
        return SampleRatio(math.nan, split, math.nan, True)
    observed = np.array([champion_users, challenger_users], dtype=float)
    expected = total * np.array([1 - split, split])
    if split in (0.0, 1.0):
        p = 1.0 if observed[expected == 0].sum() == 0 else 0.0
    else:
        from scipy import stats  # noqa: PLC0415

        p = float(stats.chi2.sf(((observed - expected) ** 2 / expected).sum(), df=1))
    return SampleRatio(p, split, challenger_users / total, p >= alpha)


def latency_guardrail(latencies: dict[str, np.ndarray], max_increase: float) -> Guardrail:
    """The challenger's p95 latency over the champion's, as a fraction; breached above ``max_increase``.

    A point comparison of two percentiles over every request (thousands an hour), not a test.
    """
    lat = {arm: np.asarray(latencies.get(arm, []), dtype=float) for arm in ARMS}
    if not all(a.size for a in lat.values()):
        return Guardrail("latency_p95", None, math.nan, max_increase, "no latencies logged for an arm yet")
    p95 = {arm: float(np.percentile(a, 95)) for arm, a in lat.items()}
    increase = p95["challenger"] / p95["champion"] - 1 if p95["champion"] > 0 else math.inf
    detail = (
        f"p95 {p95['challenger']:.0f} ms against {p95['champion']:.0f} ms "
        f"({_signed_pct(increase)}; limit {_signed_pct(max_increase)})"
    )
    return Guardrail("latency_p95", increase <= max_increase, increase, max_increase, detail)


def report_rate_guardrail(
    champion: RatioEstimate, challenger: RatioEstimate, max_increase: float, tau: float, alpha: float
) -> Guardrail:
    """Reports per exposure: breached when the evidence says the challenger adds more than ``max_increase``.

    One-sided and always valid: breached when the lower end of the normal-mixture confidence sequence
    on the difference (see ``confidence_sequence``) lies above the limit. The two-sided sequence at
    alpha bounds each side's error by alpha, so this errs in the safe direction.
    """
    difference, variance, _, _ = lift_moments(champion.rate, champion.variance, challenger.rate, challenger.variance)
    low, _ = confidence_sequence(difference, variance, tau, alpha)
    if np.isnan(low):
        return Guardrail("report_rate", None, float(difference), max_increase, "too few users in an arm to test")
    detail = (
        f"{_rate(float(challenger.rate))} reports per exposure against {_rate(float(champion.rate))}, always-valid "
        f"lower bound on the increase {_rate(float(low))} (limit {_rate(max_increase)})"
    )
    return Guardrail("report_rate", bool(low <= max_increase), float(difference), max_increase, detail)


# --- formatting -----------------------------------------------------------------------------------


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _signed_pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:+.1f}%"


def _rate(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4f}"


def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.3g}"


def _ok_word(ok: bool | None) -> str:
    return {True: "ok", False: "BREACHED", None: "not checked"}[ok]
