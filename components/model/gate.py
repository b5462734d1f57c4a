"""The promotion gate: may a challenger replace the champion? A small policy that decides on paired evidence.

Both models are scored on the same test posts, so each check compares them post by
post (a 2x2 table of challenger right/wrong by champion right/wrong) and asks an
interval, not a point estimate, to clear its bound. The three checks, in the order a
reviewer would ask them:

1. forgetting (non-inferiority): on posts of the classes the champion knew, the lower
   bound of the accuracy difference (challenger - champion) is at least ``-old_class_margin``;
2. the trend (superiority): on the newest class the labels carry that the champion
   lacks, the lower bound of the difference exceeds ``newest_slice_gain``; with no such
   class in the test set, non-inferiority on overall accuracy (margin ``old_class_margin``):
   whether the challenger is better is then the live A/B test's question;
3. behaviour (non-inferiority): per perturbation (a mild brightness or crop change), on
   posts of the champion's classes, the lower bound of the difference in the share of
   top-1 labels that survive it is at least ``-stability_margin``. The first model, with no
   champion to compare with, only has to clear a sanity floor (``min_stability``) on its
   point estimate.

Intervals: Agresti & Min, "Simple improved confidence intervals for comparing matched
proportions", Statistics in Medicine 24(5), 2005 (the adjusted Wald interval: add 1/2 to
each cell of the 2x2 table). The trend check also reports McNemar's exact test (the
two-sided binomial test on the discordant pairs; McNemar, Psychometrika 12, 1947).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from components.errors import ConfigError
from components.model.evaluate import CLASS_SLICE, Evaluation, Outcomes


def agresti_min_interval(b: int, c: int, n: int, alpha: float) -> tuple[float, float]:
    """Bounds of p1 - p2 for matched proportions, each one-sided at level ``1 - alpha``.

    ``n`` pairs, ``b`` of them right (or 1) under the first only, ``c`` under the second
    only. Agresti & Min (2005): add 1/2 to each of the four cells (so 2 to n), then take
    the Wald interval of (b - c) / n with se = sqrt((b + c) - (b - c)^2 / n) / n on the
    adjusted counts. Together the bounds are the two-sided ``1 - 2 alpha`` interval. The
    interval can pass -1 or 1 on lopsided tables; it is cut there (a difference cannot).
    """
    b_, c_, n_ = b + 0.5, c + 0.5, n + 2.0
    estimate = (b_ - c_) / n_
    se = math.sqrt((b_ + c_) - (b_ - c_) ** 2 / n_) / n_
    z = NormalDist().inv_cdf(1 - alpha)
    return max(-1.0, estimate - z * se), min(1.0, estimate + z * se)


def mcnemar_exact_p(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value: the binomial test of b successes in b + c trials at 1/2.

    p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2); 1 when no pair is discordant.
    """
    m = b + c
    return min(1.0, 2 * sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2**m)


@dataclass(frozen=True)
class Evidence:
    """One paired comparison of challenger and champion on the same posts: the numbers behind a check."""

    measure: str  # what was compared, e.g. "accuracy on class:meme", "top-1 unchanged under crop_90"
    posts: int  # n: the posts both models were scored on
    challenger: float  # the challenger's rate on those posts
    champion: float  # the champion's rate on them
    difference: float  # challenger - champion, as observed
    alpha: float  # the one-sided error rate of the bounds
    lower: float  # Agresti-Min one-sided (1 - alpha) lower bound of the difference
    upper: float  # its upper counterpart: [lower, upper] is the two-sided 1 - 2 alpha interval
    challenger_only: int  # discordant posts: the challenger right (label kept), the champion not
    champion_only: int  # discordant posts the other way round
    bound: float  # what ``lower`` is held to: at least it (non-inferiority) or above it (superiority)
    p_value: float | None = None  # McNemar's exact two-sided p-value, where the check reports it


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    reason: str  # one readable line, numbers included
    evidence: list[Evidence] = field(default_factory=list)  # the comparisons behind it, the quoted one first


@dataclass(frozen=True)
class Verdict:
    passed: bool
    checks: list[Check]
    challenger: str
    champion: str | None
    snapshot: str

    @property
    def reasons(self) -> list[str]:
        return [f"{'pass' if c.passed else 'FAIL'} {c.name}: {c.reason}" for c in self.checks]

    def to_dict(self) -> dict:
        return asdict(self) | {"reasons": self.reasons}

    @classmethod
    def from_dict(cls, raw: dict) -> Verdict:
        checks = [
            Check(c["name"], c["passed"], c["reason"], [Evidence(**e) for e in c.get("evidence", [])])
            for c in raw["checks"]
        ]
        return cls(raw["passed"], checks, raw["challenger"], raw["champion"], raw["snapshot"])


@dataclass(frozen=True)
class PromotionGate:
    # one-sided error rate of each check (a 95% lower bound), not corrected for three checks: a worse model
    # that slips through costs an A/B test, which decides promotion on live traffic anyway
    alpha: float = 0.05
    # old-class accuracy the challenger may lose, at the lower bound. With 300 old-class posts of which 10%
    # are discordant the bound sits 0.03 below the observed difference, so a challenger as good as the
    # champion passes, while a fine-tune without replay (more than 0.15 lost in tests/test_training.py) fails
    old_class_margin: float = 0.05
    # what the lower bound of its gain on the newest trend must exceed: 0 asks for evidence that it is better
    # at all; the champion cannot name the class, so three posts the challenger gets all right clear 0
    newest_slice_gain: float = 0.0
    # share of top-1 labels surviving a perturbation the challenger may lose against the champion, at the
    # lower bound: the old-class tolerance, since a label that flips under a 10% change is a wrong answer
    stability_margin: float = 0.05
    # the first model only (nothing to compare with): a floor on its point estimate that catches a broken
    # model, not a quality bar; taggers trained here measure about 0.9
    min_stability: float = 0.8

    def __post_init__(self) -> None:
        checks = {
            "alpha must lie in (0, 0.5)": 0 < self.alpha < 0.5,
            "old_class_margin must lie in [-1, 1]": -1 <= self.old_class_margin <= 1,
            "newest_slice_gain must lie in [-1, 1]": -1 <= self.newest_slice_gain <= 1,
            "stability_margin must lie in [-1, 1]": -1 <= self.stability_margin <= 1,
            "min_stability must lie in [0, 1]": 0 <= self.min_stability <= 1,
        }
        broken = [message for message, ok in checks.items() if not ok]
        if broken:
            raise ConfigError("promotion gate: " + "; ".join(broken))

    def decide(self, challenger: Evaluation, champion: Evaluation | None) -> Verdict:
        if champion is None:
            checks = [
                Check("old classes", True, "no champion yet: nothing to forget"),
                Check("newest trend", True, "no champion yet: nothing to beat"),
                self._stability_floor(challenger),
            ]
        else:
            ours, theirs = _paired(challenger, champion)
            checks = [
                self._forgetting(ours, theirs, champion.labels),
                self._trend(ours, theirs, challenger.newest_slice, champion.labels),
                self._stability(ours, theirs, champion.labels),
            ]
        return Verdict(
            passed=all(c.passed for c in checks),
            checks=checks,
            challenger=challenger.model,
            champion=champion.model if champion else None,
            snapshot=challenger.snapshot,
        )

    def _forgetting(self, ours: Outcomes, theirs: Outcomes, known: list[str]) -> Check:
        on = np.isin(np.asarray(ours.label, dtype=object), list(known))
        if not on.any():
            return Check("old classes", True, "no posts of the champion's classes in the test set")
        found = self._compare("accuracy on old classes", ours.correct[on], theirs.correct[on], -self.old_class_margin)
        return _judge("old classes", found, "accuracy ")

    def _trend(self, ours: Outcomes, theirs: Outcomes, newest: str | None, known: list[str]) -> Check:
        """The newest class the labels carry that the champion lacks; overall accuracy without one."""
        new = set(ours.label) - set(known)
        label = newest.removeprefix(CLASS_SLICE) if newest is not None and newest.startswith(CLASS_SLICE) else None
        if not new:
            found = self._compare("accuracy on all posts", ours.correct, theirs.correct, -self.old_class_margin)
            return _judge("newest trend", found, "no new class in the test set, so all posts: accuracy ")
        if label not in new:
            raise ConfigError(
                f"the test set has classes the champion lacks ({', '.join(sorted(new))}) but the evaluation's "
                f"newest trend is {newest}: slice the evaluation against the champion's labels"
            )
        on = np.asarray(ours.label, dtype=object) == label
        found = self._compare(
            f"accuracy on {newest}", ours.correct[on], theirs.correct[on], self.newest_slice_gain, with_p=True
        )
        return _judge("newest trend", found, f"{newest} (newest trend): accuracy ", superiority=True)

    def _stability(self, ours: Outcomes, theirs: Outcomes, known: list[str]) -> Check:
        """Non-inferiority of the share of predictions each perturbation leaves unchanged, on the posts of
        the champion's classes: the robustness it had (on a class it lacks, it is steadily wrong)."""
        if set(ours.unchanged) != set(theirs.unchanged):
            raise ConfigError(
                f"challenger and champion were checked under different perturbations "
                f"({sorted(ours.unchanged)} vs {sorted(theirs.unchanged)}): evaluate both with one version"
            )
        if not ours.unchanged:
            return Check("stability", False, "no behavioural checks were run")
        on = np.isin(np.asarray(ours.label, dtype=object), list(known))
        if not on.any():
            on[:] = True  # no post of the champion's classes in the test set: every post
        found = sorted(
            (
                self._compare(
                    f"top-1 unchanged under {name}",
                    np.asarray(ours.unchanged[name], dtype=bool)[on],
                    np.asarray(theirs.unchanged[name], dtype=bool)[on],
                    -self.stability_margin,
                )
                for name in ours.unchanged
            ),
            key=lambda e: (e.lower, e.measure),
        )
        worst = found[0].measure.removeprefix("top-1 unchanged under ")
        return _judge("stability", found[0], f"worst {worst}: top-1 unchanged ", also=found[1:])

    def _stability_floor(self, challenger: Evaluation) -> Check:
        shares = {k: v for k, v in challenger.stability.items() if k != "min"}
        if not shares:
            return Check("stability", False, "no behavioural checks were run")
        share, name = min((v, k) for k, v in shares.items())
        return Check(
            "stability",
            share >= self.min_stability,
            f"worst {name}: {share:.3f} of {challenger.overall.posts} predictions unchanged; first model, "
            f"no champion to compare with: a sanity floor of {self.min_stability:.3f} on the point estimate",
        )

    def _compare(
        self, measure: str, ours: np.ndarray, theirs: np.ndarray, bound: float, with_p: bool = False
    ) -> Evidence:
        """The paired comparison of two (N,) bool outcomes, challenger's first, on the same posts."""
        n = len(ours)
        b, c = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
        lower, upper = agresti_min_interval(b, c, n, self.alpha)
        rate, rival = float(ours.mean()), float(theirs.mean())
        return Evidence(
            measure=measure,
            posts=n,
            challenger=rate,
            champion=rival,
            difference=rate - rival,
            alpha=self.alpha,
            lower=lower,
            upper=upper,
            challenger_only=b,
            champion_only=c,
            bound=bound,
            p_value=mcnemar_exact_p(b, c) if with_p else None,
        )


def _paired(challenger: Evaluation, champion: Evaluation) -> tuple[Outcomes, Outcomes]:
    """Both models' per-post outcomes, the champion's put in the challenger's post order."""
    if champion.snapshot != challenger.snapshot:
        raise ConfigError(
            f"the champion was scored on snapshot {champion.snapshot} and the challenger on "
            f"{challenger.snapshot}: compare on one test set"
        )
    for who in (challenger, champion):
        if who.outcomes is None:
            raise ConfigError(
                f"the evaluation of {who.model} keeps no per-post outcomes (it predates them): evaluate it again"
            )
    ours, theirs = challenger.outcomes, champion.outcomes
    place = {post: i for i, post in enumerate(theirs.post_id)}
    if len(place) != len(theirs.post_id) or len(set(ours.post_id)) != len(ours.post_id):
        raise ConfigError("an evaluation lists a test post twice: posts cannot be paired")
    if set(place) != set(ours.post_id):
        shared = len(set(place) & set(ours.post_id))
        raise ConfigError(
            f"the challenger was scored on {len(ours.post_id)} test posts and the champion on {len(place)}, "
            f"{shared} of them shared: compare on one test set"
        )
    order = [place[post] for post in ours.post_id]
    theirs = Outcomes(
        post_id=list(ours.post_id),
        label=[theirs.label[i] for i in order],
        predicted=[theirs.predicted[i] for i in order],
        unchanged={name: [kept[i] for i in order] for name, kept in theirs.unchanged.items()},
    )
    if theirs.label != ours.label:
        raise ConfigError("challenger and champion were scored against different labels for the same posts")
    return ours, theirs


def _judge(name: str, found: Evidence, what: str, superiority: bool = False, also: Sequence[Evidence] = ()) -> Check:
    """Pass when the lower bound clears ``found.bound``: at least it (non-inferiority) or above it (superiority).

    A failure says whether the challenger looks worse or the posts are too few to tell.
    """
    passed = found.lower > found.bound if superiority else found.lower >= found.bound
    looks_fine = found.difference > found.bound if superiority else found.difference >= found.bound
    rule = f"must exceed {found.bound:+.3f}" if superiority else f"must stay above {found.bound:+.3f}"
    why = ""
    if not passed:
        claim, against = ("it is better", "it does no better") if superiority else ("it is no worse", "it does worse")
        why = f": too few posts to show {claim}" if looks_fine else f": {against}"
    return Check(name, passed, f"{what}{_numbers(found)}; {rule}{why}", [found, *also])


def _numbers(found: Evidence) -> str:
    """``0.912 vs champion 0.905, difference +0.007, 95% lower bound -0.021 (paired, 210 posts, 9 vs 7 discordant)``"""
    p = f", McNemar exact p={found.p_value:.3f}" if found.p_value is not None else ""
    return (
        f"{found.challenger:.3f} vs champion {found.champion:.3f}, difference {found.difference:+.3f}, "
        f"{100 * (1 - found.alpha):g}% lower bound {found.lower:+.3f} "
        f"(paired, {found.posts} posts, {found.challenger_only} vs {found.champion_only} discordant{p})"
    )
