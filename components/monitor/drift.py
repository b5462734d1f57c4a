"""``detect_drift``: has the traffic the champion sees moved away from what it was trained on?

Six signals, each a two-sample test of a reference window (the champion's
held-out training posts, embedded by the champion) against a current window of
traffic (the prediction log):

- ``embedding``: Evidently's domain-classifier method on the image embeddings
  (see ``DriftConfig.embedding_method`` for why it is the default);
- ``novelty``: how many posts lie far from every reference post (kNN distance),
  the signal a new class gives first;
- ``predictions``: the predicted-label distribution (prior shift);
- ``confidence``: the top-1 confidence distribution (posts the model finds hard);
- ``hashtags``: how many posts carry hashtags rare or unseen in the reference (a new
  trend brings its own words before anyone labels it);
- ``captions``: the caption text (Evidently's text drift, a classifier on TF-IDF).

Each test runs at ``false_alarm_rate / 6``, so by Bonferroni's inequality a check
of two windows from one distribution flags drift with probability at most
``false_alarm_rate``. Thresholds are statistical, not tuned to a scenario: p-values
for the tests that give one, and for the classifier AUCs the quantile of a held-out
AUC under no drift, which is the Mann-Whitney statistic's null distribution
(Hanley & McNeil, Radiology 143(1), 1982).

Evidently computes in memory (evidently#1396): windows are sampled to
``max_reference``/``max_current`` posts, and the HTML report to ``report_posts``.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from components.errors import DriftError, QuietWindow

if TYPE_CHECKING:
    import pandas as pd

SIGNALS = ("embedding", "novelty", "predictions", "confidence", "hashtags", "captions")
NOVELTY_TAIL = 0.95  # the novelty test counts posts beyond this quantile of the pooled scores


class DriftConfig(BaseModel):
    """How drift is tested. Every threshold follows from ``false_alarm_rate``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    false_alarm_rate: float = Field(default=0.05, gt=0, lt=1)  # chance a no-drift check flags drift (upper bound)
    # Evidently's embedding method. "model" (a domain classifier's held-out ROC AUC) is the
    # default: its score has a known null distribution, so its threshold follows from the
    # false-alarm rate instead of a tuned constant; it finds a shift in any direction, a small
    # new cluster included; it runs on 50k embeddings in well under a second. "distance"
    # (distance between means) dilutes a minority cluster, "mmd" is quadratic in the window,
    # "ratio" tests each dimension alone. Those three use Evidently's fixed default thresholds.
    embedding_method: Literal["model", "distance", "mmd", "ratio"] = "model"
    neighbours: int = Field(default=10, ge=1)  # k of the kNN novelty score
    min_posts: int = Field(default=30, ge=10)  # fewer posts in either window: no check
    max_reference: int = Field(default=5_000, ge=100)  # reference posts used (sampled above this)
    max_current: int = Field(default=20_000, ge=100)  # current posts used (sampled above this)
    report_posts: int = Field(default=1_000, ge=100)  # posts per window drawn into the HTML report
    outliers: int = Field(default=20, ge=0)  # posts most unlike the reference listed in the verdict
    seed: int = 0  # for the samples

    @property
    def test_level(self) -> float:
        """The level of each signal's test (Bonferroni over the six signals)."""
        return self.false_alarm_rate / len(SIGNALS)


@dataclass(frozen=True)
class Window:
    """Posts as the champion saw them. ``posts`` rows align with ``embeddings`` rows.

    ``posts`` columns: post_id, created_at, predicted, confidence, hashtags (list of
    str), caption.
    """

    posts: pd.DataFrame
    embeddings: np.ndarray  # (N, D) the champion's penultimate layer

    def __post_init__(self) -> None:
        if len(self.posts) != len(self.embeddings):
            raise DriftError(f"window has {len(self.posts)} posts but {len(self.embeddings)} embeddings")

    def __len__(self) -> int:
        return len(self.posts)

    def take(self, rows: np.ndarray) -> Window:
        return Window(self.posts.iloc[rows].reset_index(drop=True), self.embeddings[rows])

    def sample(self, n: int, seed: int) -> Window:
        """At most ``n`` posts, drawn uniformly without replacement (the window itself if smaller)."""
        if len(self) <= n:
            return self
        return self.take(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def unit_embeddings(self) -> np.ndarray:
        """Embeddings scaled to unit length: distances become cosine distances, which suit
        ReLU features whose overall magnitude varies with contrast more than with content."""
        norms = np.linalg.norm(self.embeddings, axis=1, keepdims=True)
        return (self.embeddings / np.maximum(norms, 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Signal:
    name: str
    method: str  # the test, named
    score: float  # p-value or AUC or distance, as the method gives it
    threshold: float
    drifted: bool
    higher_is_drift: bool  # AUCs and distances: above the threshold; p-values: below it
    detail: str = ""


@dataclass(frozen=True)
class Outlier:
    post_id: str
    novelty: float  # mean distance to the k nearest reference posts (cosine geometry)
    predicted: str
    confidence: float


@dataclass(frozen=True)
class DriftVerdict:
    drifted: bool
    signals: list[Signal]
    reference_posts: int
    current_posts: int
    false_alarm_rate: float
    outliers: list[Outlier] = field(default_factory=list)  # the posts most unlike the reference, most first

    @property
    def drifted_signals(self) -> list[str]:
        return [s.name for s in self.signals if s.drifted]

    def signal(self, name: str) -> Signal:
        return next(s for s in self.signals if s.name == name)

    def to_dict(self) -> dict:
        return asdict(self) | {"drifted_signals": self.drifted_signals}

    @classmethod
    def from_dict(cls, data: dict) -> DriftVerdict:
        return cls(
            drifted=data["drifted"],
            signals=[Signal(**s) for s in data["signals"]],
            reference_posts=data["reference_posts"],
            current_posts=data["current_posts"],
            false_alarm_rate=data["false_alarm_rate"],
            outliers=[Outlier(**o) for o in data["outliers"]],
        )


class Novelty:
    """How far a post lies from the reference: the mean distance to its k nearest reference posts.

    Distances are Euclidean between unit-length embeddings (cosine geometry).
    """

    def __init__(self, reference: np.ndarray, k: int):
        from sklearn.neighbors import NearestNeighbors  # noqa: PLC0415

        self.index = NearestNeighbors(n_neighbors=min(k, len(reference))).fit(reference)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        return self.index.kneighbors(embeddings)[0].mean(1)  # (N,)


def auc_threshold(n_reference: int, n_current: int, level: float) -> float:
    """The (1 - level) quantile of a held-out domain classifier's ROC AUC when nothing drifted.

    Evidently's classifier methods score on a random half of both windows; with no
    drift the held-out scores are independent of the window labels, so the AUC is
    the Mann-Whitney U / (n0 n1) of random scores: mean 1/2, variance
    (n0 + n1 + 1) / (12 n0 n1) (Hanley & McNeil 1982), here in its normal approximation.
    """
    n0, n1 = max(n_reference // 2, 1), max(n_current // 2, 1)
    return 0.5 + NormalDist().inv_cdf(1 - level) * math.sqrt((n0 + n1 + 1) / (12 * n0 * n1))


def detect_drift(
    reference: Window,
    current: Window,
    config: DriftConfig | None = None,
    report: Path | None = None,
    index: Window | None = None,
) -> tuple[DriftVerdict, np.ndarray, np.ndarray]:
    """Test ``current`` against ``reference`` on every signal; optionally write Evidently's HTML report.

    Returns the verdict and the novelty scores of the (sampled) reference and current
    windows, which trend discovery reuses. ``index`` (the champion's training posts) is
    what novelty and hashtag rarity are measured against; without it half the reference
    serves, and those reference posts score NaN. Windows above the configured sizes are
    sampled first; the verdict counts the posts actually tested.
    """
    config = config or DriftConfig()
    for name, window in (("reference", reference), ("current", current)):
        if len(window) < config.min_posts:
            error = QuietWindow if name == "current" else DriftError  # a small reference is a setup problem
            raise error(f"the {name} window holds {len(window)} posts; a drift check needs {config.min_posts}")
    reference = reference.sample(config.max_reference, config.seed)
    current = current.sample(config.max_current, config.seed + 1)
    level = config.test_level
    ref_unit, cur_unit = reference.unit_embeddings(), current.unit_embeddings()
    # The two tail tests score posts against an index and compare reference posts with the
    # traffic: both scored alike, so Fisher's test is exact. The index is the champion's
    # training posts when given (unseen by the test, like both windows); otherwise half
    # the reference, the other half being compared. (Scoring the reference against itself
    # is not exact: its rarest hashtags are rare partly by chance, and the traffic regresses
    # to their true share, a false alarm in one check out of seven.)
    ref_novelty, ref_rarity = np.full(len(reference), np.nan), np.full(len(reference), np.nan)
    if index is None:
        order = np.random.default_rng(config.seed + 3).permutation(len(reference))
        index, held = reference.take(order[: len(order) // 2]), order[len(order) // 2 :]
    else:
        index, held = index.sample(config.max_reference, config.seed + 3), np.arange(len(reference))
    novelty = Novelty(index.unit_embeddings(), config.neighbours)
    ref_novelty[held], cur_novelty = novelty.score(ref_unit[held]), novelty.score(cur_unit)
    ref_rarity[held] = hashtag_rarity(index.posts.hashtags, reference.posts.hashtags.iloc[held])
    cur_rarity = hashtag_rarity(index.posts.hashtags, current.posts.hashtags)

    signals = [_embedding_signal(ref_unit, cur_unit, config)]
    ref_table, cur_table = _table(reference, ref_novelty, ref_rarity), _table(current, cur_novelty, cur_rarity)
    snapshot = _evidently_run(ref_table, cur_table, level)
    signals += _tabular_signals(snapshot, ref_table, cur_table, level)
    if report is not None:
        if len(reference) + len(current) > 2 * config.report_posts:  # keep the HTML light enough to open
            rs = np.random.default_rng(config.seed + 2)
            small_ref = ref_table.sample(min(len(ref_table), config.report_posts), random_state=rs)
            small_cur = cur_table.sample(min(len(cur_table), config.report_posts), random_state=rs)
            snapshot = _evidently_run(small_ref, small_cur, level)
        report.parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report))

    order = np.argsort(-cur_novelty)[: config.outliers]
    outliers = [
        Outlier(
            str(current.posts.post_id.iat[i]),
            float(cur_novelty[i]),
            str(current.posts.predicted.iat[i]),
            float(current.posts.confidence.iat[i]),
        )
        for i in order
    ]
    verdict = DriftVerdict(
        drifted=any(s.drifted for s in signals),
        signals=signals,
        reference_posts=len(reference),
        current_posts=len(current),
        false_alarm_rate=config.false_alarm_rate,
        outliers=outliers,
    )
    return verdict, ref_novelty, cur_novelty


def _embedding_signal(ref: np.ndarray, cur: np.ndarray, config: DriftConfig) -> Signal:
    import pandas as pd  # noqa: PLC0415 - heavy imports sit where they are used (settings import this module)
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as methods  # noqa: PLC0415

    method = config.embedding_method
    if method == "model":
        threshold = auc_threshold(len(ref), len(cur), config.test_level)
        drift = methods.model(threshold=threshold)
        name = "Evidently model (domain classifier ROC AUC)"
    else:
        drift = getattr(methods, method)()
        threshold = drift.threshold
        name = f"Evidently {method}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SGD's convergence chatter on a few hundred rows
        score, drifted, _ = drift(pd.DataFrame(cur), pd.DataFrame(ref))
    return Signal("embedding", name, float(score), float(threshold), bool(drifted), True)  # every method: above


def hashtag_rarity(index: pd.Series, posts: pd.Series) -> np.ndarray:
    """Each post's rarest hashtag, scored by its surprise under ``index`` (hashtag lists):
    -log share of index posts carrying it, add-half smoothed; 0 for a post without hashtags."""
    counts: dict[str, int] = {}
    for tags in index:
        for tag in set(tags):
            counts[tag] = counts.get(tag, 0) + 1
    n = len(index)
    return np.array(
        [max((-math.log((counts.get(t, 0) + 0.5) / (n + 1)) for t in set(tags)), default=0.0) for tags in posts]
    )


def _table(window: Window, novelty: np.ndarray, rarity: np.ndarray) -> pd.DataFrame:
    """The columns Evidently tests, one row per post."""
    import pandas as pd  # noqa: PLC0415

    posts = window.posts
    return pd.DataFrame(
        {
            "predicted": posts.predicted.astype(str).to_numpy(),
            "confidence": posts.confidence.astype(float).to_numpy(),
            "novelty": novelty.astype(float),
            "hashtags": rarity.astype(float),
            "captions": posts.caption.fillna("").astype(str).to_numpy(),
        }
    )


def _evidently_run(reference: pd.DataFrame, current: pd.DataFrame, level: float):
    """One Evidently report over the tabular signals; its thresholds follow from ``level``."""
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415
    from evidently.presets import DataDriftPreset  # noqa: PLC0415

    _register_stattests()
    text = ["captions"] if _comparable_text(reference.captions, current.captions) else []
    definition = DataDefinition(
        numerical_columns=["novelty", "confidence", "hashtags"], categorical_columns=["predicted"], text_columns=text
    )
    auc = auc_threshold(len(reference), len(current), level)
    preset = DataDriftPreset(
        columns=["novelty", "predicted", "confidence", "hashtags", *text],
        per_column_method={
            "novelty": "novelty_tail",
            "predicted": "chi2_homogeneity",
            "confidence": "ks",
            "hashtags": "novelty_tail",
            "captions": "abs_text_content_drift",
        },
        per_column_threshold={"novelty": level, "predicted": level, "confidence": level, "hashtags": level}
        | {"captions": auc},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Report([preset], include_tests=False).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )


def _comparable_text(reference: pd.Series, current: pd.Series) -> bool:
    """Whether Evidently's text classifier has words to work with: its TF-IDF drops English
    stop words and words in over half the posts, and fails when nothing is left."""
    import pandas as pd  # noqa: PLC0415
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415

    try:
        TfidfVectorizer(max_df=0.5, stop_words="english").fit(pd.concat([reference, current]))
    except ValueError:
        return False
    return True


def _tabular_signals(snapshot, reference: pd.DataFrame, current: pd.DataFrame, level: float) -> list[Signal]:
    values = {}
    for metric in snapshot.dict()["metrics"]:
        column = metric["config"].get("column")
        if column is not None:
            values[column] = float(metric["value"])
    auc = auc_threshold(len(reference), len(current), level)
    tails = {}
    for column in ("novelty", "hashtags"):
        held = reference[column].dropna().to_numpy()  # the half of the reference scored against the other
        a, b = _tail_counts(held, current[column].to_numpy())
        tails[column] = (a / len(current), b / len(held))
    signals = []
    for name, method, higher, threshold, detail in (
        (
            "novelty",
            "kNN novelty tail, Fisher exact test",
            False,
            level,
            _tail_detail(*tails["novelty"]),
        ),
        ("predictions", "chi-square test of homogeneity", False, level, _shares(reference, current)),
        (
            "confidence",
            "Kolmogorov-Smirnov",
            False,
            level,
            f"mean {current.confidence.mean():.3f} (reference {reference.confidence.mean():.3f})",
        ),
        (
            "hashtags",
            "hashtag rarity tail, Fisher exact test",
            False,
            level,
            _tail_detail(*tails["hashtags"]),
        ),
        ("captions", "Evidently text content drift (classifier ROC AUC)", True, auc, ""),
    ):
        column = "predicted" if name == "predictions" else name
        if column not in values:  # captions without words Evidently can compare: nothing to test
            signals.append(Signal(name, method, float("nan"), threshold, False, higher, "no comparable words"))
            continue
        score = values[column]
        drifted = score > threshold if higher else score < threshold
        signals.append(Signal(name, method, score, threshold, bool(drifted), higher, detail))
    return signals


def _tail_detail(current: float, reference: float) -> str:
    return f"{current:.1%} of current posts in the pooled top {1 - NOVELTY_TAIL:.0%} ({reference:.1%} of reference)"


def _shares(reference: pd.DataFrame, current: pd.DataFrame) -> str:
    """The predicted labels whose share moved most, e.g. 'fitness 12% -> 31%'."""
    ref = reference.predicted.value_counts(normalize=True)
    cur = current.predicted.value_counts(normalize=True)
    moved = (cur.sub(ref, fill_value=0)).abs().sort_values(ascending=False).index[:3]
    return ", ".join(f"{k} {ref.get(k, 0):.0%} -> {cur.get(k, 0):.0%}" for k in moved)


@functools.cache
def _register_stattests() -> None:
    """Add our two tests to Evidently's registry, so the report shows them by name."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest  # noqa: PLC0415
    from evidently.legacy.core import ColumnType  # noqa: PLC0415

    register_stattest(
        StatTest(
            name="chi2_homogeneity",
            display_name="chi-square test of homogeneity p_value",
            allowed_feature_types=[ColumnType.Categorical],
        ),
        default_impl=_chi2_homogeneity,
    )
    register_stattest(
        StatTest(
            name="novelty_tail",
            display_name="novelty tail Fisher exact p_value",
            allowed_feature_types=[ColumnType.Numerical],
        ),
        default_impl=_novelty_tail,
    )


def _chi2_homogeneity(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
    """Pearson's chi-square test that two samples share one categorical distribution.

    Evidently's own "chisquare" is a goodness-of-fit test that takes the reference
    shares as exact; with a reference of a few hundred posts that inflates false
    alarms. This test treats both windows as samples (a 2 x K contingency table).
    """
    import pandas as pd  # noqa: PLC0415
    from scipy import stats  # noqa: PLC0415

    table = pd.concat([reference.value_counts(), current.value_counts()], axis=1).fillna(0).to_numpy().T
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0, False  # one category in both windows: nothing can differ
    p = float(stats.chi2_contingency(table, correction=False).pvalue)
    return p, p < threshold


def _novelty_tail(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
    """Are more current posts far from the reference than reference posts are?

    Both windows' novelty scores are pooled and cut at their 95th percentile; with no
    drift the count of current posts above the cut is hypergeometric given the margins,
    which Fisher's exact test (one-sided) checks. A new class shows here first: its
    posts sit in the tail while the bulk of the traffic is unchanged.
    """
    from scipy import stats  # noqa: PLC0415

    a, b = _tail_counts(reference.to_numpy(), current.to_numpy())
    p = float(stats.fisher_exact([[a, len(current) - a], [b, len(reference) - b]], alternative="greater").pvalue)
    return p, p < threshold


def _tail_counts(reference: np.ndarray, current: np.ndarray) -> tuple[int, int]:
    """Current and reference posts at or above the pooled 95th percentile.

    "At or above" keeps at least 5% of the posts in the tail when scores tie (every
    unseen hashtag scores the same); the cut depends on the pooled scores only, which
    keeps Fisher's test exact.
    """
    cut = np.quantile(np.r_[reference, current], NOVELTY_TAIL)
    return int((current >= cut).sum()), int((reference >= cut).sum())
