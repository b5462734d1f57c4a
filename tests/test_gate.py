"""The promotion gate on constructed per-post outcomes: paired intervals checked against statsmodels, the rules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.weightstats import DescrStatsW

from components.errors import ConfigError
from components.model.evaluate import Evaluation, Outcomes, score, stability
from components.model.gate import PromotionGate, Verdict, agresti_min_interval, mcnemar_exact_p

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
OLD = ["cat", "dog"]  # the champion's labels
PERTURBED = ("brightness_minus_10", "brightness_plus_10", "crop_90")


@dataclass
class Duel:
    """Test posts scored by a challenger and the champion, built table by table.

    ``add(label, a, b, c, d)``: a posts both get right, b only the challenger, c only the
    champion, d neither (a wrong answer is ``wrong``).
    """

    label: list[str] = field(default_factory=list)
    ours: list[str] = field(default_factory=list)
    theirs: list[str] = field(default_factory=list)

    def add(self, label: str, a: int = 0, b: int = 0, c: int = 0, d: int = 0, wrong: str = "dog") -> Duel:
        right_ours = [True] * a + [True] * b + [False] * c + [False] * d
        right_theirs = [True] * a + [False] * b + [True] * c + [False] * d
        self.label += [label] * len(right_ours)
        self.ours += [label if r else wrong for r in right_ours]
        self.theirs += [label if r else wrong for r in right_theirs]
        return self

    def evaluations(
        self,
        ours_kept: dict[str, list[bool]] | None = None,
        theirs_kept: dict[str, list[bool]] | None = None,
        newest: str | None = None,
    ) -> tuple[Evaluation, Evaluation]:
        """(challenger, champion); a perturbation not given leaves every label unchanged."""
        n = len(self.label)
        every = {p: [True] * n for p in PERTURBED}
        labels_ours = [*OLD, *sorted(set(self.label) - set(OLD))]  # the challenger learned the new classes
        return (
            scored("m/2", self.label, self.ours, every | (ours_kept or {}), labels_ours, newest),
            scored("m/1", self.label, self.theirs, every | (theirs_kept or {}), OLD, newest),
        )


def scored(
    model: str,
    label: list[str],
    predicted: list[str],
    kept: dict[str, list[bool]],
    labels: list[str],
    newest: str | None = None,
    snapshot: str = "s1",
) -> Evaluation:
    outcomes = Outcomes([f"p{i}" for i in range(len(label))], list(label), list(predicted), kept)
    return Evaluation(
        model=model,
        snapshot=snapshot,
        labels=labels,
        overall=score(label, predicted, np.full(len(label), 0.5), labels),
        newest_slice=newest,
        stability=stability(kept),
        outcomes=outcomes,
    )


def kept(a: int = 0, b: int = 0, c: int = 0, d: int = 0) -> tuple[list[bool], list[bool]]:
    """(challenger, champion) per-post "label unchanged" as a 2x2 table, cells in Duel.add's order."""
    return [True] * (a + b) + [False] * (c + d), [True] * a + [False] * b + [True] * c + [False] * d


def statsmodels_interval(ours: np.ndarray, theirs: np.ndarray, alpha: float) -> tuple[float, float]:
    """The Agresti-Min bounds recomputed from per-post differences with statsmodels' weighted mean.

    The per-post difference (challenger - champion) is +1, -1 or 0; adding 1/2 to each of
    the four 2x2 cells adds four pseudo-posts of weight 1/2 (+1, -1, and 0 twice).
    """
    diffs = np.concatenate([ours.astype(float) - theirs.astype(float), [1.0, -1.0, 0.0, 0.0]])
    weights = np.concatenate([np.ones(len(ours)), np.full(4, 0.5)])
    stats = DescrStatsW(diffs, weights=weights, ddof=0)
    lo, _ = stats.zconfint_mean(alpha=2 * alpha)  # two-sided 1 - 2 alpha: its lower end is the one-sided bound
    # statsmodels' std_mean divides the variance by sum_weights - 1; the Wald interval of Agresti & Min
    # divides by n (here sum_weights = n + 2): the same standard error, rescaled
    w = stats.sum_weights
    se = stats.std_mean * math.sqrt((w - 1) / w)
    assert se == pytest.approx(stats.std / math.sqrt(w))  # ddof=0: std is the Wald one
    half = (stats.mean - lo) * math.sqrt((w - 1) / w)
    assert half == pytest.approx(NormalDist().inv_cdf(1 - alpha) * se)
    return stats.mean - half, stats.mean + half


@pytest.mark.parametrize(
    ("a", "b", "c", "d", "alpha"),
    [(180, 12, 9, 9, 0.05), (0, 7, 0, 1, 0.05), (40, 3, 11, 6, 0.05), (500, 30, 46, 424, 0.025), (5, 2, 2, 1, 0.1)],
)
def test_the_interval_equals_statsmodels_weighted_mean_of_paired_differences(
    a: int, b: int, c: int, d: int, alpha: float
) -> None:
    ours, theirs = (np.asarray(x) for x in kept(a, b, c, d))
    lower, upper = agresti_min_interval(b, c, a + b + c + d, alpha)
    assert (lower, upper) == pytest.approx(statsmodels_interval(ours, theirs, alpha), abs=1e-12)


def test_the_interval_is_cut_at_minus_one_and_one() -> None:
    # every post discordant against the challenger: the Wald lower end would pass -1
    b_, c_, n_ = 0.5, 3.5, 5.0
    z = NormalDist().inv_cdf(0.95)
    uncut = (b_ - c_) / n_ - z * math.sqrt((b_ + c_) - (b_ - c_) ** 2 / n_) / n_
    assert uncut == pytest.approx(-1.088, abs=1e-3)
    assert agresti_min_interval(0, 3, 3, 0.05)[0] == -1.0


@pytest.mark.parametrize(("b", "c"), [(7, 0), (2, 0), (12, 9), (3, 11), (0, 0), (30, 46), (410, 380)])
def test_mcnemar_exact_p_equals_statsmodels(b: int, c: int) -> None:
    expected = mcnemar([[50, b], [c, 20]], exact=True).pvalue
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-12)


def test_the_gate_reports_the_intervals_statsmodels_computes_from_the_posts() -> None:
    rng = np.random.default_rng(0)
    a, b, c, d = (int(k) for k in rng.multinomial(300, [0.82, 0.08, 0.07, 0.03]))  # old classes, ~0.9 accurate
    duel = Duel().add("cat", a, b, c, d)
    duel.add("meme", b=17, d=3, wrong="cat")  # the newest trend: the champion cannot name it
    ours_kept, theirs_kept = (rng.random(320) < 0.93).tolist(), (rng.random(320) < 0.95).tolist()
    challenger, champion = duel.evaluations({"crop_90": ours_kept}, {"crop_90": theirs_kept}, "class:meme")
    verdict = PromotionGate().decide(challenger, champion)
    right = np.asarray(duel.ours) == np.asarray(duel.label), np.asarray(duel.theirs) == np.asarray(duel.label)
    old, meme = np.arange(320) < 300, np.arange(320) >= 300
    old_classes, trend, behaviour = (c.evidence[0] for c in verdict.checks)
    assert (old_classes.posts, trend.posts, behaviour.posts) == (300, 20, 300)  # behaviour: the champion's classes
    assert (old_classes.lower, old_classes.upper) == pytest.approx(
        statsmodels_interval(right[0][old], right[1][old], 0.05), abs=1e-12
    )
    assert (trend.lower, trend.upper) == pytest.approx(
        statsmodels_interval(right[0][meme], right[1][meme], 0.05), abs=1e-12
    )
    assert trend.p_value == pytest.approx(mcnemar([[0, 17], [0, 3]], exact=True).pvalue, rel=1e-12)
    assert behaviour.measure == "top-1 unchanged under crop_90"  # the only perturbation that differs is the worst
    assert (behaviour.lower, behaviour.upper) == pytest.approx(
        statsmodels_interval(np.asarray(ours_kept)[old], np.asarray(theirs_kept)[old], 0.05), abs=1e-12
    )
    assert [e.measure for e in verdict.checks[2].evidence] == [
        "top-1 unchanged under crop_90",
        "top-1 unchanged under brightness_minus_10",  # equal bounds: in name order
        "top-1 unchanged under brightness_plus_10",
    ]


def test_a_challenger_as_good_as_the_champion_passes_old_classes_and_stability() -> None:
    # 1000 old-class posts, both 0.9 accurate, 50 mistakes each that the other does not make
    minus, plus = kept(a=900, b=40, c=40, d=20), kept(a=950, b=20, c=20, d=10)
    duel = Duel().add("cat", a=850, b=50, c=50, d=50)
    challenger, champion = duel.evaluations(
        {"brightness_minus_10": minus[0], "brightness_plus_10": plus[0]},
        {"brightness_minus_10": minus[1], "brightness_plus_10": plus[1]},
    )
    verdict = PromotionGate().decide(challenger, champion)
    # se = sqrt(101 - 0) / 1002 = 0.01003, times z(0.95) = 1.645: -0.0165
    assert verdict.reasons[0] == (
        "pass old classes: accuracy 0.900 vs champion 0.900, difference +0.000, 95% lower bound -0.016 "
        "(paired, 1000 posts, 50 vs 50 discordant); must stay above -0.050"
    )
    # brightness_minus_10: se = sqrt(81) / 1002, bound -0.0148 (the worst); brightness_plus_10: -0.0105
    assert verdict.reasons[2] == (
        "pass stability: worst brightness_minus_10: top-1 unchanged 0.940 vs champion 0.940, difference +0.000, "
        "95% lower bound -0.015 (paired, 1000 posts, 40 vs 40 discordant); must stay above -0.050"
    )
    assert verdict.checks[2].evidence[0].lower == pytest.approx(-1.6448536 * 9 / 1002, abs=1e-7)
    # no new class in the test set: the trend check asks only that overall accuracy is no worse
    assert verdict.reasons[1].startswith("pass newest trend: no new class in the test set, so all posts: accuracy")
    assert verdict.passed


def test_a_challenger_clearly_worse_on_old_classes_fails_and_says_so() -> None:
    duel = Duel().add("cat", a=780, b=20, c=120, d=80).add("meme", b=36, d=4, wrong="cat")
    verdict = PromotionGate().decide(*duel.evaluations(newest="class:meme"))
    assert [c.name for c in verdict.checks if not c.passed] == ["old classes"]  # it did learn the new class
    # (20.5 - 120.5) / 1002 = -0.0998, se = sqrt(141 - 100^2 / 1002) / 1002 = 0.01142: -0.0998 - 1.645 se
    assert verdict.reasons[0] == (
        "FAIL old classes: accuracy 0.800 vs champion 0.900, difference -0.100, 95% lower bound -0.119 "
        "(paired, 1000 posts, 20 vs 120 discordant); must stay above -0.050: it does worse"
    )


def test_a_small_old_class_sample_fails_for_want_of_evidence_not_for_being_worse() -> None:
    # the same accuracy, 20 posts: the interval is too wide to rule out a loss of 0.05
    challenger, champion = Duel().add("cat", a=14, b=3, c=3).evaluations()
    check = PromotionGate().decide(challenger, champion).checks[0]
    assert not check.passed
    assert check.evidence[0].lower == pytest.approx(-1.6448536 * math.sqrt(7) / 22, abs=1e-7)
    assert check.reason.endswith("must stay above -0.050: too few posts to show it is no worse")


def test_a_challenger_that_learned_the_new_class_passes_the_trend_one_that_did_not_fails() -> None:
    learned = Duel().add("cat", a=190, b=5, c=5).add("meme", b=36, d=4, wrong="cat")
    verdict = PromotionGate().decide(*learned.evaluations(newest="class:meme"))
    assert verdict.passed
    # (36.5 - 0.5) / 42 = 0.857, se = sqrt(37 - 36^2 / 42) / 42 = 0.0590: 0.857 - 1.645 se
    assert verdict.reasons[1] == (
        "pass newest trend: class:meme (newest trend): accuracy 0.900 vs champion 0.000, difference +0.900, "
        "95% lower bound +0.760 (paired, 40 posts, 36 vs 0 discordant, McNemar exact p=0.000); must exceed +0.000"
    )
    # both wrong on all 40: (0.5 - 0.5) / 42 = 0, se = sqrt(1) / 42
    missed = Duel().add("cat", a=190, b=5, c=5).add("meme", d=40, wrong="cat")
    verdict = PromotionGate().decide(*missed.evaluations(newest="class:meme"))
    assert [c.name for c in verdict.checks if not c.passed] == ["newest trend"]
    assert verdict.reasons[1] == (
        "FAIL newest trend: class:meme (newest trend): accuracy 0.000 vs champion 0.000, difference +0.000, "
        "95% lower bound -0.039 (paired, 40 posts, 0 vs 0 discordant, McNemar exact p=1.000); must exceed +0.000: "
        "it does no better"
    )


@pytest.mark.parametrize(
    ("right", "posts", "passed", "reason"),
    [
        # (7.5 - 0.5) / 10 = 0.700, se = sqrt(8 - 49 / 10) / 10 = 0.176: bound +0.410; p = 2 / 2^7
        (7, 8, True, "7 vs 0 discordant, McNemar exact p=0.016); must exceed +0.000"),
        # (2.5 - 0.5) / 4 = 0.500, se = sqrt(3 - 4 / 4) / 4 = 0.354: bound -0.082; p = 2 / 2^2
        (
            2,
            2,
            False,
            "2 vs 0 discordant, McNemar exact p=0.500); must exceed +0.000: too few posts to show it is better",
        ),
    ],
)
def test_few_new_class_posts_pass_on_a_clear_win_and_fail_without_enough_evidence(
    right: int, posts: int, passed: bool, reason: str
) -> None:
    duel = Duel().add("cat", a=190, b=5, c=5).add("meme", b=right, d=posts - right, wrong="cat")
    check = PromotionGate().decide(*duel.evaluations(newest="class:meme")).checks[1]
    assert check.passed is passed
    assert check.evidence[0].lower == pytest.approx({8: 0.4104, 2: -0.0816}[posts], abs=1e-4)
    assert check.reason.endswith(f"(paired, {posts} posts, {reason}")


def test_the_newest_trend_is_the_newest_labelled_class_never_a_style_slice() -> None:
    two_new = Duel().add("cat", a=100).add("meme", b=10, wrong="cat").add("retro", d=10, wrong="cat")
    check = PromotionGate().decide(*two_new.evaluations(newest="class:retro")).checks[1]
    assert (check.evidence[0].measure, check.evidence[0].posts, check.passed) == ("accuracy on class:retro", 10, False)
    with pytest.raises(ConfigError, match=r"classes the champion lacks \(meme, retro\) but .* newest trend is style"):
        PromotionGate().decide(*two_new.evaluations(newest="style:noir"))
    # a style slice named newest, no new class in the labels: the check falls back to all posts
    no_new = Duel().add("cat", a=100, b=2, c=2)
    check = PromotionGate().decide(*no_new.evaluations(newest="style:noir")).checks[1]
    assert (check.evidence[0].measure, check.evidence[0].posts) == ("accuracy on all posts", 104)


def test_stability_is_judged_against_the_champion_not_an_absolute_cut() -> None:
    # the run that refused two good candidates: 0.887 and 0.899 unchanged while the champion kept 0.903
    for share in (887, 899):
        ours, theirs = kept(a=share - 20, b=20, c=903 - share + 20, d=1000 - 903 - 20)
        duel = Duel().add("cat", a=850, b=50, c=50, d=50)
        verdict = PromotionGate().decide(*duel.evaluations({"crop_90": ours}, {"crop_90": theirs}))
        assert verdict.passed, verdict.reasons
        assert verdict.checks[2].evidence[0].challenger == pytest.approx(share / 1000)
    # losing 0.1 of its stable labels against the champion fails
    ours, theirs = kept(a=780, b=20, c=120, d=80)
    verdict = PromotionGate().decide(*Duel().add("cat", a=1000).evaluations({"crop_90": ours}, {"crop_90": theirs}))
    assert [c.name for c in verdict.checks if not c.passed] == ["stability"]
    assert verdict.reasons[2] == (
        "FAIL stability: worst crop_90: top-1 unchanged 0.800 vs champion 0.900, difference -0.100, "
        "95% lower bound -0.119 (paired, 1000 posts, 20 vs 120 discordant); must stay above -0.050: it does worse"
    )


def test_stability_without_posts_of_the_champions_classes_compares_every_post() -> None:
    ours, theirs = kept(a=90, b=5, c=3, d=2)
    duel = Duel().add("meme", a=95, b=5, wrong="cat")  # a test set of the new class alone
    verdict = PromotionGate().decide(*duel.evaluations({"crop_90": ours}, {"crop_90": theirs}, newest="class:meme"))
    evidence = verdict.checks[2].evidence[0]
    assert verdict.checks[2].passed and (evidence.posts, evidence.challenger, evidence.champion) == (100, 0.95, 0.93)


def test_the_first_model_needs_only_the_stability_floor() -> None:
    challenger, _ = Duel().add("cat", a=100).evaluations({"crop_90": [True] * 85 + [False] * 15})
    first = PromotionGate().decide(challenger, None)
    assert first.passed and first.champion is None
    assert first.reasons == [
        "pass old classes: no champion yet: nothing to forget",
        "pass newest trend: no champion yet: nothing to beat",
        "pass stability: worst crop_90: 0.850 of 100 predictions unchanged; first model, no champion to compare "
        "with: a sanity floor of 0.800 on the point estimate",
    ]
    shaky, _ = Duel().add("cat", a=100).evaluations({"crop_90": [True] * 70 + [False] * 30})
    assert [c.name for c in PromotionGate().decide(shaky, None).checks if not c.passed] == ["stability"]


def test_posts_are_paired_by_id_whatever_their_order() -> None:
    duel = Duel().add("cat", a=80, b=5, c=10, d=5).add("meme", b=8, d=2, wrong="cat")
    ours_kept, theirs_kept = kept(a=100, b=2, c=6, d=2)
    challenger, champion = duel.evaluations({"crop_90": ours_kept}, {"crop_90": theirs_kept}, "class:meme")
    order = np.random.default_rng(1).permutation(110)
    o = champion.outcomes
    shuffled = replace(
        champion,
        outcomes=Outcomes(
            [o.post_id[i] for i in order],
            [o.label[i] for i in order],
            [o.predicted[i] for i in order],
            {k: [v[i] for i in order] for k, v in o.unchanged.items()},
        ),
    )
    assert PromotionGate().decide(challenger, shuffled) == PromotionGate().decide(challenger, champion)


def test_the_gate_refuses_to_pair_different_test_sets() -> None:
    challenger, champion = Duel().add("cat", a=10, b=1).evaluations()
    with pytest.raises(ConfigError, match="compare on one test set"):
        PromotionGate().decide(replace(challenger, snapshot="s2"), champion)
    fewer = replace(champion, outcomes=replace(champion.outcomes, post_id=[f"q{i}" for i in range(11)]))
    with pytest.raises(ConfigError, match="11 test posts and the champion on 11, 0 of them shared"):
        PromotionGate().decide(challenger, fewer)
    relabelled = replace(champion, outcomes=replace(champion.outcomes, label=["dog"] * 11))
    with pytest.raises(ConfigError, match="different labels"):
        PromotionGate().decide(challenger, relabelled)
    with pytest.raises(ConfigError, match="keeps no per-post outcomes"):
        PromotionGate().decide(challenger, replace(champion, outcomes=None))


def test_the_verdict_keeps_its_numbers_through_json() -> None:
    duel = Duel().add("cat", a=190, b=5, c=5).add("meme", b=7, d=1, wrong="cat")
    verdict = PromotionGate().decide(*duel.evaluations(newest="class:meme"))
    raw = json.loads(json.dumps(verdict.to_dict()))
    assert raw["reasons"] == verdict.reasons
    assert raw["checks"][1]["evidence"][0]["challenger_only"] == 7
    assert Verdict.from_dict(raw) == verdict


def test_the_gate_settings_build_from_a_dict_and_refuse_nonsense() -> None:
    assert PromotionGate() == PromotionGate(
        alpha=0.05, old_class_margin=0.05, newest_slice_gain=0.0, stability_margin=0.05, min_stability=0.8
    )
    with pytest.raises(ConfigError, match=r"alpha must lie in \(0, 0.5\); min_stability must lie in \[0, 1\]"):
        PromotionGate(alpha=0.5, min_stability=1.01)


def test_the_gate_imports_no_model_or_data_framework() -> None:
    heavy = ("torch", "torchvision", "scipy", "pandas", "mlflow")
    code = f"import sys, components.model.gate; print([m for m in {heavy!r} if m in sys.modules])"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert found.stdout.strip() == "[]"
