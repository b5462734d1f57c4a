"""From annotations to labels: majority vote per post, agreement across annotators, new trend names.

An annotator who picks "other / new trend" and types a name votes for that name
(normalised: ``#Meme Face`` and ``meme-face`` are one vote for ``meme_face``);
one who types nothing votes for "other", which is never a label: a post whose
winner is unnamed waits for an annotator who names it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from active_learning.queue import Annotation, Decision

OTHER = "other / new trend"  # the choice for a post none of the labels fits
MAX_NAME = 40  # longest trend name kept; longer text is a sentence, not a name


def normalise_trend(text: str | None) -> str | None:
    """A typed trend name as a label: lower case, words joined by _, only [a-z0-9_]; None if nothing is left."""
    if not text:
        return None
    name = re.sub(r"[\s\-]+", "_", text.strip().lower().lstrip("#"))
    name = re.sub(r"[^a-z0-9_]", "", name).strip("_")
    return name if 0 < len(name) <= MAX_NAME else None


def vote_of(annotation: Annotation) -> str | None:
    """What an annotation votes for: a label, a trend name, OTHER (unnamed), or None (skipped)."""
    if annotation.cancelled or annotation.choice is None:
        return None
    if annotation.choice == OTHER:
        return annotation.trend or OTHER
    return annotation.choice


def decide(post_id: str, annotations: Iterable[Annotation], known: Iterable[str], min_votes: int = 1) -> Decision:
    """The post's label by strict plurality of its votes, once it has ``min_votes`` of them."""
    votes = Counter(v for v in map(vote_of, annotations) if v is not None)
    total = sum(votes.values())
    if total < min_votes or not votes:
        return Decision(post_id, None, "waiting", total, None, False)
    (winner, top), *rest = votes.most_common()
    share = top / total
    if rest and rest[0][1] == top:
        return Decision(post_id, None, "tied", total, share, False)
    if winner == OTHER:
        return Decision(post_id, None, "unnamed", total, share, False)
    return Decision(post_id, winner, "decided", total, share, winner not in set(known))


def decide_all(annotations: Iterable[Annotation], known: Iterable[str], min_votes: int = 1) -> list[Decision]:
    by_post: dict[str, list[Annotation]] = defaultdict(list)
    for a in annotations:
        by_post[a.post_id].append(a)
    known = tuple(known)
    return [decide(post, group, known, min_votes) for post, group in sorted(by_post.items())]


@dataclass(frozen=True)
class Agreement:
    posts: int  # posts with two votes or more (the ones agreement is measured on)
    pairwise: float | None  # P-bar: chance that two annotators of a post agree
    kappa: float | None  # Fleiss' kappa: pairwise agreement beyond chance


def agreement(annotations: Iterable[Annotation]) -> Agreement:
    """Fleiss' kappa over posts with at least two votes, allowing a varying number of votes per post.

    Fleiss, "Measuring nominal scale agreement among many raters", Psychological
    Bulletin 76(5), 1971: P_i = sum_j n_ij (n_ij - 1) / (n_i (n_i - 1)), P-bar is their
    mean, P_e = sum_j p_j^2 with p_j the pooled share of category j, and
    kappa = (P-bar - P_e) / (1 - P_e).
    """
    by_post: dict[str, Counter] = defaultdict(Counter)
    for a in annotations:
        v = vote_of(a)
        if v is not None:
            by_post[a.post_id][v] += 1
    rated = [c for c in by_post.values() if sum(c.values()) >= 2]
    if not rated:
        return Agreement(0, None, None)
    p_i = [sum(n * (n - 1) for n in c.values()) / (sum(c.values()) * (sum(c.values()) - 1)) for c in rated]
    pooled = sum(rated, Counter())
    total = sum(pooled.values())
    p_bar = sum(p_i) / len(p_i)
    p_e = sum((n / total) ** 2 for n in pooled.values())
    kappa = (p_bar - p_e) / (1 - p_e) if p_e < 1 else None
    return Agreement(len(rated), p_bar, kappa)
